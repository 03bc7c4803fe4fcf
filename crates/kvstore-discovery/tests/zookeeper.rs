//! Discovery on a real ZooKeeper started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_testkit::zookeeper::shared_zookeeper;
use kvstore_testsuite::Harness;
use kvstore_zookeeper::{ZooKeeperConfig, ZooKeeperStore};

struct ZooKeeperHarness;

#[async_trait]
impl Harness for ZooKeeperHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = ZooKeeperConfig::new(shared_zookeeper().address());
        config.namespace = namespace.to_owned();
        Ok(Arc::new(ZooKeeperStore::connect(config).await?))
    }

    /// The discovery scenarios never compact; the resync diff is tested on memory.
    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "zookeeper",
        })
    }
}

// Every client's reaper runs every 500 ms, and a watch event takes a moment more.
discovery_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = ZooKeeperHarness,
    slack = Duration::from_secs(2),
}
