//! # kvstore-core: the contract every kvstore backend meets
//!
//! kvstore gives services one coordination-store API over many backends (etcd v3, Redis,
//! ZooKeeper, in-memory), in the spirit of Go's docker/libkv, with etcd's revisions, leases, watches
//! and fenced locks done right. This crate is the contract and knows no backend:
//!
//! - [`Store`]: what users call, held as `Arc<dyn Store>` (libkv's full surface plus
//!   leases and an event-level watch);
//! - [`backend::Backend`]: the few primitives a backend implements, in the module
//!   [`backend`] with the rest of the implementer's kit; every `Backend` is a `Store`,
//!   and the semantics above the primitives (validation, TTL puts, watch views, lease
//!   keep-alive, locks) are written once here;
//! - [`Key`]/[`Prefix`] ([contract §1](contract#1-keys-values-and-namespaces)),
//!   [`KvPair`] ([§2](contract#2-revisions)), [`Lease`] ([§4](contract#4-leases-and-ttl)),
//!   the [`WatchEvent`] stream ([§5](contract#5-watch)), [`Locker`]
//!   ([§6](contract#6-locks)) and [`Error`] ([§7](contract#7-errors));
//! - [`contract`]: the semantics every backend meets, as a document (the conformance
//!   suite, `kvstore-testsuite`, is that document as tests).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kvstore_core::Error> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use futures::StreamExt;
//! use kvstore_core::{Error, PutOptions, Store};
//!
//! let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
//!
//! let first = store.put("config/mode", Bytes::from("blue"), PutOptions::default()).await?;
//! let mut changes = store.watch("config/mode").await?;
//! assert_eq!(changes.next().await.unwrap()?.unwrap().value, "blue");
//!
//! // Compare-and-swap: only the holder of the current revision may replace it.
//! store.atomic_put("config/mode", Bytes::from("green"), Some(&first), PutOptions::default()).await?;
//! let stale = store.atomic_put("config/mode", Bytes::from("red"), Some(&first), PutOptions::default()).await;
//! assert!(matches!(stale, Err(Error::KeyModified { .. })));
//! assert_eq!(changes.next().await.unwrap()?.unwrap().value, "green");
//! # Ok(()) }
//! ```

pub mod backend;
mod capabilities;
#[doc = include_str!("../../../docs/CONTRACT.md")]
pub mod contract {}
mod election;
mod error;
mod key;
pub mod layer;
mod lease;
mod lifecycle;
mod lock;
mod options;
mod pair;
mod redact;
mod retry;
#[cfg(feature = "serde")]
mod serde_impls;
mod store;
mod store_url;
mod txn;
mod watch;

pub use capabilities::Capabilities;
pub use election::{Election, ElectionOptions, Leadership};
pub use error::{BoxError, Error, Result};
pub use key::{Key, MAX_KEY_LEN, Prefix};
pub use lease::{Lease, LeaseId, LeaseLoss};
pub use lock::{LockGuard, Locker};
pub use options::{DEFAULT_LOCK_TTL, LockOptions, MAX_TTL, PutOptions};
pub use pair::KvPair;
pub use redact::redact_url;
pub use store::Store;
pub use txn::{Compare, CompareOp, CompareTarget, MAX_TXN_OPS, Txn, TxnOp, TxnResponse, TxnResult};
pub use watch::{Snapshot, WatchEvent, WatchFrom};
