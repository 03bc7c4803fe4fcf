//! # kvstore-redis: the Redis backend
//!
//! The whole kvstore contract on Redis, through the `redis` crate — without the
//! shortcuts of libkv's and valkeyrie's Redis stores (a clock reading as "revision",
//! keyspace notifications that lose events on every disconnect, unescaped `SCAN MATCH`):
//!
//! - **Every write is one Lua script** (loaded once, called by SHA) that expires due
//!   leases, checks, logs the change to a Redis Stream (`XADD … MAXLEN ~`), then writes
//!   and moves the global revision counter. CAS, create-only, atomic delete and
//!   `delete_tree` are atomic, and one operation has one revision. A script checks
//!   everything that can fail before its first write, so an error never leaves it
//!   half-applied.
//! - **Watches** of a store share one reader of the stream (`XREAD BLOCK` on one
//!   connection, however many watchers); each watcher reads what it missed (before it
//!   subscribed, after it fell behind, after a disconnect) with `XRANGE` from the last
//!   entry it saw, so nothing is lost. The reader decodes each entry once for all its
//!   watchers; a watcher compares the entry's area and key with its own and copies
//!   nothing out of a change to a key it does not watch. Each entry names the revision
//!   before it, so a trimmed gap (even inside one revision with more keys than the
//!   stream keeps) is detected and answered with a `Resync`.
//! - **Prefix reads** (`list`, watch snapshots and resyncs) go in pages of at most 1,000
//!   keys (or 4 MiB), one script call each, so a 100,000-key list never blocks the
//!   server for more than a page. Each page returns the store's revision; when writes
//!   came between two pages, the change log entries in between are applied to the keys
//!   already read, so the result is exactly the range at the last page's revision. When
//!   the log cannot tell (trimmed, rolled back, data lost) the read starts again, and
//!   after a few attempts reads the range in one call.
//! - **Leases** are a sorted set of deadlines on the Redis server's clock (`TIME`); every
//!   script first expires due leases (deleting their keys and logging the deletes; while
//!   none is due that is one `EXISTS` of a key that expires before the earliest deadline
//!   does, and no `TIME`), and a background reaper does
//!   so every [`REAP_INTERVAL`], so watchers see expiry like any delete and reads never
//!   return an expired key. TTLs have millisecond granularity. A grant is one small
//!   standalone script; a TTL put is one round trip, the put script creating the key's
//!   lease at the write's revision (only if the write happens: nobody sees the id
//!   before the put returns).
//!
//! ## Deployments
//!
//! [`RedisConfig::from_url`] takes one server (`redis://`, `rediss://` with the `tls`
//! feature), a Redis Cluster (`redis+cluster://h1:p1,h2:p2`) or a Sentinel-managed
//! primary (`redis+sentinel://s1:p1[,s2:p2]/master[/db]`). On a cluster every key of a
//! store shares the hash tag `{namespace}` (one slot, so scripts and stream reads stay on
//! one node) and namespaces spread over the primaries. Through Sentinel every new
//! connection asks for the current primary, and a connection that fails (or is answered
//! `READONLY` by a demoted primary) is replaced, so the store follows a failover.
//!
//! ## Failure model ([contract §8](kvstore_core::contract#8-backends) "redis, in production")
//!
//! | what happens in production | what the store does |
//! |---|---|
//! | restart without persistence (data lost) | the data's epoch changes: watchers `Resync`; lease ids are random 63-bit numbers, so a holder's keep-alive of a lease the server forgot is `LeaseLost` (its `lost()` fires within a keep-alive interval) and never refreshes another client's lease; revisions start again at the server clock in microseconds, above every earlier one, so fencing tokens never go backwards |
//! | rollback that keeps the epoch (restart from an older RDB/AOF, failover to a lagging replica) | detected when a watcher reconnects: the counter is behind it, or the log entry at its position carries another *tip* (the random id of the call that wrote it); it `Resync`s. Revisions handed out after the rollback point may be handed out again: a fencing token from before a rollback can equal a later one; `wait_replicas` narrows that window |
//! | a write acknowledged by the primary only, then a failover | may be lost (Redis replication is asynchronous). Opt in to `wait_replicas=N` (`WAIT`): a write is acknowledged only once N replicas have it, `Unavailable` otherwise |
//! | a server that goes silent (host crash, blackholed network) | requests fail after the request timeout and their connection is replaced; watch connections read with a response timeout of [`WATCH_BLOCK`] + request timeout (7 s by default) and reconnect; TCP keep-alive and `TCP_USER_TIMEOUT` end dead connections too |
//! | eviction (`maxmemory-policy` other than `noeviction`) | warned about at connect (refused with `require_noeviction=true`); an evicted or foreign revision counter, or one behind the change log, is an error before any write, never a reused revision |
//! | a watcher further behind than the stream keeps | `Resync` to the current state |
//!
//! Not detected: a rollback followed by exactly the same number of writes *and* a
//! trimmed entry at the watcher's position (the tip cannot be compared); values written
//! between a primary's last replication and its failure when `wait_replicas` is 0.
//!
//! The stream is bounded in entries (`history_capacity`, default 100,000) and in bytes of
//! server memory (`history_max_bytes`, default 64 MiB), both approximately: each entry
//! holds its value, so with values of 1 KiB and more the bound in bytes is the one that
//! trims (about 55,000 entries of 1 KiB at the default). A watcher further behind than
//! the stream keeps gets a `Resync`.
//!
//! - **Layout**, all under the hash tag `{namespace}` (one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:kv:k:<key>` | hash | `value`, `revision`, `create_revision`, `lease` |
//! | `{ns}:kv:idx` | sorted set | every key, score 0, for `ZRANGEBYLEX` prefix listing |
//! | `{ns}:rev` | string | the revision counter |
//! | `{ns}:epoch` | string | a random id of this generation of the data |
//! | `{ns}:log` | stream | the changes, id `<revision>-<n>`, with `prev` and `tip` |
//! | `{ns}:leases` | sorted set | lease id → deadline (ms) |
//! | `{ns}:lease-ttl` | hash | lease id → TTL (ms) |
//! | `{ns}:lease-next` | string | exists (expiring just before the earliest deadline, or within 250 ms) only while no lease is due |
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

mod config;
mod connection;
mod error;
mod feed;
mod layout;
mod lease;
mod read;
mod scripts;
mod store;
mod topology;
mod txn;
mod watch;
mod write;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HISTORY_CAPACITY, DEFAULT_HISTORY_MAX_BYTES,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_NAMESPACE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WAIT_TIMEOUT,
    RedisConfig,
};
pub use lease::REAP_INTERVAL;
pub use store::RedisStore;
pub use watch::{WATCH_BLOCK, WATCH_CLIENT_NAME};

/// The backend's name in errors and [`kvstore_core::Store::backend`].
pub const BACKEND: &str = "redis";
