//! Layers: wrap any store in behaviour of your choice, `Arc<dyn Store>` in and out (after
//! tower's `Layer`, OpenDAL's layers and object_store's `PrefixStore`/`LimitStore`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use kvstore_core::layer::{LayerExt, ObserveLayer, PrefixLayer, RetryLayer, TimeoutLayer};
//! use kvstore_core::{PutOptions, Store};
//!
//! let memory: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! let store = memory
//!     .clone()
//!     .layer(PrefixLayer::new("tenant-a")?) // keys live below tenant-a/
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))) // each call fails after 5 s
//!     .layer(RetryLayer::default()) // idempotent calls retried on retryable errors
//!     .layer(ObserveLayer); // a tracing span and metrics per call
//!
//! store.put("config/mode", Bytes::from("blue"), PutOptions::default()).await?;
//! assert_eq!(memory.get("tenant-a/config/mode").await?.value, "blue");
//! assert_eq!(store.list("config").await?[0].key, "config/mode");
//! # Ok(()) }
//! ```
//!
//! The outermost layer is the last one added: above, a call is observed once, then
//! retried as a whole, each attempt with its own timeout. A layer that only acts around
//! calls implements [`Intercept`] and gets the whole [`Store`] from [`Intercepted`]; one
//! that rewrites arguments and results ([`PrefixLayer`]) implements [`Store`] itself.

mod observe;
mod prefix;
mod retry;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::capabilities::Capabilities;
use crate::election::{Election, ElectionOptions};
use crate::error::Result;
use crate::lease::{Lease, LeaseId};
use crate::lock::Locker;
use crate::options::{LockOptions, PutOptions};
use crate::pair::KvPair;
use crate::store::Store;
use crate::txn::{Txn, TxnResponse};
use crate::watch::{WatchEvent, WatchFrom};

pub use observe::ObserveLayer;
pub use prefix::{PrefixLayer, PrefixStore};
pub use retry::RetryLayer;
pub use timeout::TimeoutLayer;

/// Something that wraps a store in another (tower's `Layer`, for stores).
pub trait Layer {
    /// `store` with this layer's behaviour around it.
    fn layer(&self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

/// `store.layer(l)`: stacking layers on an `Arc<dyn Store>`.
pub trait LayerExt {
    /// This store wrapped in `layer` (which becomes the outermost).
    fn layer(self, layer: impl Layer) -> Arc<dyn Store>;
}

impl LayerExt for Arc<dyn Store> {
    fn layer(self, layer: impl Layer) -> Arc<dyn Store> {
        layer.layer(self)
    }
}

/// What is being called, as a layer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call<'a> {
    /// The [`Store`] method: `"get"`, `"put"`, `"watch"`, ...
    pub operation: &'static str,
    /// The key or prefix the call is on (`""` when none: leases, transactions, close).
    pub key: &'a str,
    /// Whether running the call twice has the effect of running it once, so a retry
    /// after an ambiguous failure is safe: reads, watch starts, `delete`, `delete_tree`,
    /// lease keep-alive and revoke. Not puts (a second revision), compare-and-swap,
    /// lease grants (a leaked lease), transactions or `close`.
    pub idempotent: bool,
}

/// What a call returned, for layers that report it.
pub trait CallOutput: Send {
    /// The store revision the result carries, when it has one.
    fn revision(&self) -> Option<u64> {
        None
    }
}

impl CallOutput for KvPair {
    fn revision(&self) -> Option<u64> {
        Some(self.revision)
    }
}
impl CallOutput for TxnResponse {
    fn revision(&self) -> Option<u64> {
        Some(self.revision)
    }
}
impl CallOutput for () {}
impl CallOutput for bool {}
impl CallOutput for Duration {}
impl CallOutput for Lease {}
impl CallOutput for Vec<KvPair> {}
impl<T: Send> CallOutput for BoxStream<'static, T> {}

/// One attempt of a call; an [`Intercept`] may run it more than once.
pub type Attempt<'a, T> = dyn Fn() -> BoxFuture<'a, Result<T>> + Send + Sync + 'a;

/// Behaviour around every call of a store; [`Intercepted`] turns it into a [`Store`].
pub trait Intercept: Send + Sync + 'static {
    /// Run `attempt` (zero, one or more times) for `call`, on the store `backend`.
    fn around<'a, T: CallOutput + 'a>(
        &'a self,
        backend: &'static str,
        call: Call<'a>,
        attempt: &'a Attempt<'a, T>,
    ) -> BoxFuture<'a, Result<T>>;
}

impl<I> std::fmt::Debug for Intercepted<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted")
            .field("backend", &self.inner.backend())
            .finish_non_exhaustive()
    }
}

/// A store whose every call goes through an [`Intercept`]. `new_lock` and `new_election`
/// (which do no I/O) pass through; the locks and elections they return talk to the inner
/// store directly.
pub struct Intercepted<I> {
    inner: Arc<dyn Store>,
    intercept: I,
}

impl<I: Intercept> Intercepted<I> {
    /// `inner` with `intercept` around every call.
    pub fn new(inner: Arc<dyn Store>, intercept: I) -> Intercepted<I> {
        Intercepted { inner, intercept }
    }

    async fn call<'a, T: CallOutput + 'a>(
        &'a self,
        operation: &'static str,
        key: &'a str,
        idempotent: bool,
        attempt: &'a Attempt<'a, T>,
    ) -> Result<T> {
        let call = Call {
            operation,
            key,
            idempotent,
        };
        self.intercept
            .around(self.inner.backend(), call, attempt)
            .await
    }
}

#[async_trait]
impl<I: Intercept> Store for Intercepted<I> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        self.call("put", key, false, &|| {
            self.inner.put(key, value.clone(), options.clone())
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<KvPair> {
        self.call("get", key, true, &|| self.inner.get(key)).await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.call("exists", key, true, &|| self.inner.exists(key))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.call("delete", key, true, &|| self.inner.delete(key))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        self.call("list", prefix, true, &|| self.inner.list(prefix))
            .await
    }

    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        self.call("delete_tree", prefix, true, &|| {
            self.inner.delete_tree(prefix)
        })
        .await
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair> {
        self.call("atomic_put", key, false, &|| {
            self.inner
                .atomic_put(key, value.clone(), previous, options.clone())
        })
        .await
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.call("atomic_delete", key, false, &|| {
            self.inner.atomic_delete(key, previous)
        })
        .await
    }

    async fn watch(&self, key: &str) -> Result<BoxStream<'static, Result<Option<KvPair>>>> {
        self.call("watch", key, true, &|| self.inner.watch(key))
            .await
    }

    async fn watch_tree(&self, prefix: &str) -> Result<BoxStream<'static, Result<Vec<KvPair>>>> {
        self.call("watch_tree", prefix, true, &|| {
            self.inner.watch_tree(prefix)
        })
        .await
    }

    async fn watch_prefix_events(
        &self,
        prefix: &str,
        from: WatchFrom,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
        self.call("watch_prefix_events", prefix, true, &|| {
            self.inner.watch_prefix_events(prefix, from)
        })
        .await
    }

    fn new_lock(&self, key: &str, options: LockOptions) -> Result<Locker> {
        self.inner.new_lock(key, options)
    }

    fn new_election(&self, name: &str, options: ElectionOptions) -> Result<Election> {
        self.inner.new_election(name, options)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.call("grant_lease", "", false, &|| self.inner.grant_lease(ttl))
            .await
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.call("keep_alive_lease", "", true, &|| {
            self.inner.keep_alive_lease(lease)
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.call("revoke_lease", "", true, &|| self.inner.revoke_lease(lease))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call("txn", "", false, &|| self.inner.txn(txn.clone()))
            .await
    }

    async fn close(&self) -> Result<()> {
        self.call("close", "", false, &|| self.inner.close()).await
    }
}
