//! Discovery on a real redis-server started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testsuite::Harness;
use kvstore_testsuite::server::shared_redis;

struct RedisHarness;

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = RedisConfig::new(shared_redis().url());
        config.namespace = namespace.to_owned();
        Ok(Arc::new(RedisStore::connect(config).await?))
    }

    /// The discovery scenarios never compact; the resync diff is tested on memory.
    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "redis",
        })
    }
}

// The reaper runs every 250 ms, and a watch event takes a moment more.
discovery_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = RedisHarness,
    slack = Duration::from_secs(1),
}

/// A consumer whose registry went away gets an error from `watch`, within the store's
/// timeouts, instead of waiting forever (docs/CONTRACT.md §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_instead_of_hanging_when_redis_is_gone() {
    let mut server = kvstore_testsuite::server::RedisServer::start().unwrap();
    let mut config = RedisConfig::new(server.url());
    config.connect_timeout = Duration::from_secs(1);
    config.response_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await.unwrap());
    server.kill();
    let discovery = kvstore_discovery::Discovery::new(store);
    let watched = tokio::time::timeout(kvstore_testsuite::WAIT, discovery.watch("api")).await;
    let error = watched
        .expect("Discovery::watch answers within the store's timeouts")
        .err()
        .expect("the registry is gone");
    assert!(error.is_retryable(), "{error}");
}
