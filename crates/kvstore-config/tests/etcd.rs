//! Live configuration on a real etcd started by the test support.

mod scenarios;

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testkit::server::shared_etcd;
use kvstore_testsuite::Harness;

struct EtcdHarness;

#[async_trait]
impl Harness for EtcdHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = EtcdConfig::new([shared_etcd().address()]);
        config.namespace = namespace.to_owned();
        Ok(Arc::new(EtcdStore::connect(config).await?))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "etcd",
        })
    }
}

config_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = EtcdHarness,
}
