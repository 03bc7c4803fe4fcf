//! The whole conformance suite on the memory store, on tokio's paused clock: TTL, lease
//! and lock tests advance time instantly.

use std::sync::Arc;

use async_trait::async_trait;
use kvstore_core::{Result, Store};
use kvstore_memory::MemoryStore;
use kvstore_testsuite::Harness;

/// One memory store per test; `open` gives handles on it under a namespace.
#[derive(Default)]
struct MemoryHarness {
    store: MemoryStore,
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(self.store.with_namespace(namespace)))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        self.store.compact()
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(start_paused = true)]
    harness = MemoryHarness::default()
}
