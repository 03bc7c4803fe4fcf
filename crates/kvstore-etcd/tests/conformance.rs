//! The whole conformance suite against a real etcd started by the test support.

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
        // Compaction is store-wide: the raw client does it.
        let mut client = etcd_client::Client::connect([shared_etcd().address()], None)
            .await
            .map_err(|error| kvstore_core::Error::Backend {
                backend: "etcd",
                operation: "compact",
                source: Box::new(error),
            })?;
        let revision = client
            .status()
            .await
            .ok()
            .and_then(|s| s.header().map(|h| h.revision()))
            .unwrap_or(0);
        client
            .compact(revision, None)
            .await
            .map(|_| ())
            .map_err(|e| kvstore_core::Error::Backend {
                backend: "etcd",
                operation: "compact",
                source: Box::new(e),
            })
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = EtcdHarness
}
