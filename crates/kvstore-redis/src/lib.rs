//! # kvstore-redis: the Redis backend
//!
//! The whole kvstore contract on Redis, through the `redis` crate — without the
//! shortcuts of libkv's and valkeyrie's Redis stores (a clock reading as "revision",
//! keyspace notifications that lose events on every disconnect, unescaped `SCAN MATCH`):
//!
//! - **Every operation is one Lua script** (loaded once, called by SHA) that expires due
//!   leases, checks, writes, bumps the global revision counter (`INCR`) and appends the
//!   change to a Redis Stream (`XADD … MAXLEN ~`). CAS, create-only, atomic delete and
//!   `delete_tree` are atomic, and one operation has one revision.
//! - **Watches** read the stream with `XREAD BLOCK` from the last entry they saw, on their
//!   own connection; after a disconnect they resume from there, so nothing is lost. Entry
//!   IDs are `<revision>-<n>` and revisions are consecutive, so a trimmed gap is detected
//!   and answered with a `Resync`; so is a server that lost its data (the store's epoch
//!   changes).
//! - **Leases** are a sorted set of deadlines on the Redis server's clock (`TIME`); every
//!   script first expires due leases (deleting their keys and logging the deletes), and a
//!   background reaper does so every [`REAP_INTERVAL`], so watchers see expiry like any
//!   delete and reads never return an expired key. TTLs have millisecond granularity.
//! - **Layout**, all under the hash tag `{namespace}` (one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:kv:k:<key>` | hash | `value`, `revision`, `create_revision`, `lease` |
//! | `{ns}:kv:idx` | sorted set | every key, score 0, for `ZRANGEBYLEX` prefix listing |
//! | `{ns}:rev` | string | the revision counter |
//! | `{ns}:log` | stream | the changes, id `<revision>-<n>` |
//! | `{ns}:leases` | sorted set | lease id → deadline (ms) |
//! | `{ns}:lease:<id>` | set | the keys attached to a lease |
//! | `{ns}:lock:…` | | lock waiter keys, outside the user keys |
//!
//! so `redis-cli HGET '{kvstore}:kv:k:config/mode' value` reads a value.
//!
//! ```no_run
//! # async fn demo() -> kvstore_core::Result<()> {
//! use bytes::Bytes;
//! use kvstore_core::{PutOptions, Store};
//! use kvstore_redis::{RedisConfig, RedisStore};
//!
//! let store = RedisStore::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0")?).await?;
//! store.put("config/mode", Bytes::from("blue"), PutOptions::default()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod scripts;
mod store;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_NAMESPACE, DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_STREAM_MAX_LEN, RedisConfig,
};
pub use store::{REAP_INTERVAL, RedisStore};
pub use watch::WATCH_CLIENT_NAME;

/// The backend's name in errors and [`kvstore_core::Store::backend`].
pub const BACKEND: &str = "redis";
