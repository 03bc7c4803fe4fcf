//! # kvstore-etcd: the etcd v3 backend
//!
//! The whole kvstore contract on etcd, through the `etcd-client` crate:
//!
//! - **Layout**: a key `k` is a plain etcd value at `{namespace}/k` (default namespace
//!   `kvstore`), so `etcdctl get kvstore/k` reads it. Lock waiter keys live beside the
//!   namespace, at `{namespace}\x01locks/…`, outside every user prefix.
//! - **Revisions** are etcd's: `revision` is `mod_revision`, `create_revision` etcd's.
//! - **Compare-and-swap**, create-only and atomic delete are one `Txn` each, comparing
//!   `mod_revision` (or `create_revision == 0`) and reading the key on failure to tell
//!   `KeyNotFound` from `KeyModified`.
//! - **Leases** are etcd leases; TTLs are whole seconds, rounded up (etcd's minimum is
//!   about 1.5 s at default election settings, and etcd raises shorter TTLs to it). The
//!   keep-alive loop is kvstore's own (every TTL/3), so loss is reported, never silent.
//!   Every keep-alive of a store goes over one shared `LeaseKeepAlive` stream, as etcd's
//!   Go client does, however many leases it keeps alive.
//! - **Watches** read a snapshot and watch from the next revision; they resume from the
//!   last delivered revision + 1 after a dropped connection and yield `Resync` when etcd
//!   has compacted the revision they need.
//! - **Values** up to [`DEFAULT_MAX_VALUE_SIZE`] (etcd's 1.5 MiB request limit less room
//!   for the key); larger ones are refused before sending.
//!
//! ```no_run
//! # async fn demo() -> kvstore_core::Result<()> {
//! use bytes::Bytes;
//! use kvstore_core::{PutOptions, Store};
//! use kvstore_etcd::{EtcdConfig, EtcdStore};
//!
//! let store = EtcdStore::connect(EtcdConfig::from_url("etcd://127.0.0.1:2379/myapp")?).await?;
//! store.put("config/mode", Bytes::from("blue"), PutOptions::default()).await?;
//! // etcdctl get myapp/config/mode  ->  blue
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod keepalive;
mod lease;
mod read;
mod store;
#[cfg(feature = "tls")]
mod tls;
mod txn;
mod watch;
mod write;

#[cfg(feature = "tls")]
pub use config::TlsConfig;
pub use config::{
    Credentials, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_NAMESPACE,
    DEFAULT_REQUEST_TIMEOUT, ETCD_MAX_REQUEST_BYTES, EtcdConfig,
};
pub use store::EtcdStore;

/// The backend's name in errors and [`kvstore_core::Store::backend`].
pub const BACKEND: &str = "etcd";
