//! Live configuration on the in-memory store.

mod scenarios;

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_memory::MemoryStore;
use kvstore_testsuite::Harness;

struct MemoryHarness(MemoryStore);

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(self.0.with_namespace(namespace)))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        self.0.compact()
    }
}

config_tests! {
    #[tokio::test]
    harness = MemoryHarness(MemoryStore::new()),
}
