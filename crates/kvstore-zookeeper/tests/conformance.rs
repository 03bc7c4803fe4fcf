//! The whole conformance suite against a real ZooKeeper started by the test support.

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_testkit::zookeeper::shared_zookeeper;
use kvstore_testsuite::Harness;
use kvstore_zookeeper::{ZooKeeperConfig, ZooKeeperStore};

struct ZooKeeperHarness;

fn config(namespace: &str) -> ZooKeeperConfig {
    let mut config = ZooKeeperConfig::new(shared_zookeeper().address());
    config.namespace = namespace.to_owned();
    config
}

#[async_trait]
impl Harness for ZooKeeperHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(ZooKeeperStore::connect(config(namespace)).await?))
    }

    async fn compact(&self, namespace: &str) -> Result<()> {
        let store = ZooKeeperStore::connect(config(namespace)).await?;
        store.trim_log(0).await?;
        store.close().await
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = ZooKeeperHarness
}
