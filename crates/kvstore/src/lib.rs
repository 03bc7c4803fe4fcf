//! # kvstore: one coordination-store API over etcd, Redis, ZooKeeper and memory
//!
//! libkv for Rust: key/value with revisions, compare-and-swap, leases and TTLs, lossless
//! watches and fenced locks, with the same semantics on every backend (see
//! [`kvstore_core`] and [the contract](contract)). Pick a backend with a Cargo feature
//! and a URL:
//!
//! | URL | feature | backend |
//! |---|---|---|
//! | `memory://` | `memory` (default) | in-process, on tokio's clock |
//! | `etcd://host:port[,host:port...][/namespace]` | `etcd` | etcd v3 |
//! | `redis://host:port[/db][?namespace=NAME]` | `redis` | Redis (`rediss://` for TLS) |
//! | `zookeeper://host:port[,host:port...][/namespace]` | `zookeeper` | a ZooKeeper ensemble |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kvstore::Result<()> {
//! use bytes::Bytes;
//! use kvstore::{PutOptions, Store};
//!
//! let store = kvstore::open("memory://").await?;
//! store.put("services/api/1", Bytes::from("10.0.0.1:8080"), PutOptions::default()).await?;
//! let instances = store.list("services/api").await?;
//! assert_eq!(instances.len(), 1);
//!
//! let wrong = kvstore::open("consul://localhost:8500").await;
//! assert!(matches!(wrong, Err(kvstore::Error::Config { .. })));
//! # Ok(()) }
//! ```

mod open;

// The user's vocabulary only; what a backend implements lives in
// `kvstore_core::backend`, for backend authors.
pub use kvstore_core::{
    BoxError, Capabilities, Compare, CompareOp, CompareTarget, DEFAULT_LOCK_TTL, Election,
    ElectionOptions, Error, Key, KvPair, Leadership, Lease, LeaseId, LeaseLoss, LockGuard,
    LockOptions, Locker, MAX_KEY_LEN, MAX_TTL, MAX_TXN_OPS, Prefix, PutOptions, Result, Snapshot,
    Store, Txn, TxnOp, TxnResponse, TxnResult, WatchEvent, WatchFrom, redact_url,
};
pub use open::{OpenOptions, Opener, open, open_with, register_scheme};

/// The semantics every backend meets (the contract document).
pub use kvstore_core::contract;
/// Layers that wrap any store: retry, timeout, key prefix, observability
/// ([`kvstore_core::layer`]).
pub use kvstore_core::layer;

/// The etcd v3 backend ([`kvstore_etcd`]).
#[cfg(feature = "etcd")]
pub use kvstore_etcd as etcd;

/// The Redis backend ([`kvstore_redis`]).
#[cfg(feature = "redis")]
pub use kvstore_redis as redis;

/// The ZooKeeper backend ([`kvstore_zookeeper`]).
#[cfg(feature = "zookeeper")]
pub use kvstore_zookeeper as zookeeper;

/// The in-memory backend ([`kvstore_memory`]).
#[cfg(feature = "memory")]
pub use kvstore_memory as memory;
