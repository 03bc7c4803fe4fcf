//! Discovery on a real etcd started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testsuite::Harness;
use kvstore_testsuite::server::shared_etcd;

struct EtcdHarness;

#[async_trait]
impl Harness for EtcdHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = EtcdConfig::new([shared_etcd().address()]);
        config.namespace = namespace.to_owned();
        Ok(Arc::new(EtcdStore::connect(config).await?))
    }

    /// The discovery scenarios never compact; the resync diff is tested on memory.
    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "etcd",
        })
    }
}

// etcd checks lease expiry about every 500 ms, and a watch event takes a moment more.
discovery_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = EtcdHarness,
    slack = Duration::from_secs(2),
}

/// A consumer whose registry went away gets an error from `watch`, within the store's
/// request timeout, instead of waiting forever (docs/CONTRACT.md §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_instead_of_hanging_when_etcd_is_gone() {
    let mut server = kvstore_testsuite::server::EtcdServer::start().unwrap();
    let mut config = EtcdConfig::new([server.address()]);
    config.request_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
    server.kill();
    let discovery = kvstore_discovery::Discovery::new(store);
    let watched = tokio::time::timeout(kvstore_testsuite::WAIT, discovery.watch("api")).await;
    let error = watched
        .expect("Discovery::watch answers within the request timeout")
        .err()
        .expect("the registry is gone");
    assert!(error.is_retryable(), "{error}");
}
