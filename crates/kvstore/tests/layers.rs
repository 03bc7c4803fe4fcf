//! Layers keep the contract: the whole conformance suite runs on the memory store
//! through a stack of every layer kvstore ships, and each layer does what it says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore::layer::{LayerExt, ObserveLayer, PrefixLayer, RetryLayer, TimeoutLayer};
use kvstore::memory::MemoryStore;
use kvstore::{Capabilities, Error, Key, KvPair, LeaseId, Prefix, PutOptions, Result, Store};
use kvstore_core::backend::{Backend, Condition};
use kvstore_testsuite::Harness;

/// Memory stores seen through prefix, timeout, retry and observe layers.
#[derive(Default)]
struct LayeredHarness {
    store: MemoryStore,
}

#[async_trait]
impl Harness for LayeredHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let store: Arc<dyn Store> = Arc::new(self.store.with_namespace(namespace));
        Ok(store
            .layer(PrefixLayer::new("tenant")?)
            .layer(TimeoutLayer::new(Duration::from_secs(60)))
            .layer(RetryLayer::default())
            .layer(ObserveLayer))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        self.store.compact()
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(start_paused = true)]
    harness = LayeredHarness::default()
}

/// A memory store whose reads fail with `Unavailable` a set number of times first, and
/// whose reads can be made to hang.
#[derive(Clone)]
struct Flaky {
    inner: MemoryStore,
    failures_left: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    hang: bool,
}

impl Flaky {
    fn new(failures: usize, hang: bool) -> Flaky {
        Flaky {
            inner: MemoryStore::new(),
            failures_left: Arc::new(AtomicUsize::new(failures)),
            calls: Arc::new(AtomicUsize::new(0)),
            hang,
        }
    }

    async fn attempt(&self, operation: &'static str) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if failing {
            return Err(Error::Unavailable {
                backend: "flaky",
                operation,
                message: "connection reset".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(1024)
    }
    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        self.attempt("get").await?;
        Backend::get(&self.inner, key).await
    }
    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Backend::list(&self.inner, prefix).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        self.attempt("put").await?;
        Backend::put(&self.inner, key, value, condition, lease).await
    }
    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        Backend::delete(&self.inner, key, revision).await
    }
    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        Backend::delete_tree(&self.inner, prefix).await
    }
    async fn close(&self) -> Result<()> {
        Backend::close(&self.inner).await
    }
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_idempotent_reads_through_transient_failures() {
    let flaky = Flaky::new(2, false);
    let store: Arc<dyn Store> = Arc::new(flaky.clone());
    let store = store.layer(RetryLayer::default());
    assert!(!store.exists("a").await.expect("the third attempt succeeds"));
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_layer_gives_up_after_its_attempts() {
    let flaky = Flaky::new(100, false);
    let store: Arc<dyn Store> = Arc::new(flaky.clone());
    let store = store.layer(RetryLayer::new(
        2,
        Duration::from_millis(10),
        Duration::from_millis(100),
    ));
    let error = store.get("a").await.expect_err("every attempt fails");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "one try and two retries"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_layer_never_repeats_a_put() {
    let flaky = Flaky::new(1, false);
    let store: Arc<dyn Store> = Arc::new(flaky.clone());
    let store = store.layer(RetryLayer::default());
    let error = store
        .put("a", Bytes::from("v"), PutOptions::default())
        .await
        .expect_err("a put that failed ambiguously is the caller's to repeat");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_layer_fails_a_hanging_call_with_timeout() {
    let store: Arc<dyn Store> = Arc::new(Flaky::new(0, true));
    let store = store.layer(TimeoutLayer::new(Duration::from_secs(2)));
    let error = store.get("a").await.expect_err("the call hangs");
    assert!(
        matches!(error, Error::Timeout { operation: "get", after } if after == Duration::from_secs(2)),
        "{error}"
    );
}

#[tokio::test]
async fn prefix_layer_keeps_keys_below_its_prefix_and_hides_it() {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let tenant = memory.clone().layer(PrefixLayer::new("tenant-a").unwrap());
    tenant
        .put("svc/1", Bytes::from("x"), PutOptions::default())
        .await
        .unwrap();
    memory
        .put("svc/1", Bytes::from("outside"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(memory.get("tenant-a/svc/1").await.unwrap().value, "x");
    let listed = tenant.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "svc/1");
    assert_eq!(listed[0].value, "x");
    let missing = tenant.get("svc/2").await.expect_err("absent");
    assert!(
        matches!(missing, Error::KeyNotFound { ref key } if key == "svc/2"),
        "{missing}"
    );
    assert!(matches!(
        PrefixLayer::new("bad//prefix/"),
        Err(Error::InvalidKey { .. })
    ));
}
