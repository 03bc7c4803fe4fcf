//! Live configuration on a real redis-server started by the test support.

mod scenarios;

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::shared_redis;
use kvstore_testsuite::Harness;

struct RedisHarness;

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = RedisConfig::new(shared_redis().url());
        config.namespace = namespace.to_owned();
        Ok(Arc::new(RedisStore::connect(config).await?))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "redis",
        })
    }
}

config_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = RedisHarness,
}
