//! The whole conformance suite against a real redis-server started by the test support.

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::shared_redis;
use kvstore_testsuite::Harness;

struct RedisHarness;

fn config(namespace: &str) -> RedisConfig {
    let mut config = RedisConfig::new(shared_redis().url());
    // A namespace is a hash tag here: keep it short and free of `/`-nesting surprises.
    config.namespace = namespace.to_owned();
    config
}

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(RedisStore::connect(config(namespace)).await?))
    }

    async fn compact(&self, namespace: &str) -> Result<()> {
        let client = redis::Client::open(shared_redis().url()).expect("a valid URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis answers");
        let store = RedisStore::connect(config(namespace)).await?;
        let _: () = redis::cmd("XTRIM")
            .arg(store.stream_key())
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut connection)
            .await
            .expect("XTRIM succeeds");
        Ok(())
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = RedisHarness
}
