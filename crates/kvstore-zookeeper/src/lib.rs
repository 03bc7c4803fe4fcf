//! # kvstore-zookeeper: the ZooKeeper backend
//!
//! The whole kvstore contract on a ZooKeeper ensemble (3.6 or later; tested on Debian's
//! 3.8), through the pure-Rust async `zookeeper-client`:
//!
//! - **Keys are znodes** under `/{namespace}/kv`, one znode per key whose name is the
//!   key with `%` and `/` percent-encoded (`config/mode` → `config%2Fmode`), holding the
//!   value itself: `zkCli.sh get /kvstore/kv/config%2Fmode` prints it, and a znode
//!   `zkCli.sh create`s there is a key. A key on a lease carries a 13-byte header
//!   (`\0kvs1` and the lease id) before its value.
//! - **Revisions are zxids.** Every operation is one `multi` that ends with a `setData`
//!   of the revision znode; ZooKeeper applies a `multi` atomically under one zxid, which
//!   becomes the operation's revision (`mod_revision` is the key znode's `mzxid`,
//!   `create_revision` its `czxid`). zxids grow strictly across the whole ensemble,
//!   leader changes included, so revisions and fencing tokens never go back. They are
//!   not dense: other namespaces' writes use zxids too.
//! - **CAS** is a version check inside the `multi`: a write reads the key, checks the
//!   condition (absent, or `mzxid` equal to the expected revision) and writes with the
//!   znode version it read; a `multi` refused because someone wrote in between was not
//!   applied at all, and is read and decided again.
//! - **Watches are lossless**: each `multi` also creates a sequential change-log entry
//!   holding every change with its value; watchers read the log from their position,
//!   woken by a child watch on it (see [`WATCH_POLL`]). Nothing is coalesced: every
//!   revision arrives, in order. A watcher behind the trimmed part of the log, or on data
//!   that was deleted and created again, gets a `Resync`.
//! - **Leases are data** with deadlines on the server's clock: a lease znode holds its
//!   TTL and its `mtime` is when it was last kept alive (`setData`); every client of the
//!   namespace runs a reaper (every [`REAP_INTERVAL`]) that deletes expired leases with
//!   their keys in one `multi` with a log entry, so watchers see expiry as deletes.
//!   Sessions and ephemeral nodes are not used: a lease survives its holder's session
//!   moving or ending, as the contract wants. TTLs have millisecond granularity.
//!
//! ## Layout
//!
//! | znode | holds |
//! |---|---|
//! | `/{ns}` | the namespace's root (its `czxid` is part of the data's epoch) |
//! | `/{ns}/kv/<escaped key>` | a key: its value (with a lease header when leased) |
//! | `/{ns}/lock/<escaped key>` | lock waiter keys, outside the user keys |
//! | `/{ns}/rev` | written by every operation; its `mzxid` is the latest revision |
//! | `/{ns}/log` | the change log; its data is the trim mark (newest revision removed) |
//! | `/{ns}/log/e-<sequence>` | one entry per operation: every key it changed, with values |
//! | `/{ns}/leases/<id hex>` | a lease: its TTL in ms; `mtime` = last keep-alive |
//! | `/{ns}/leases/<id>/<area>:<escaped key>` | a key attached to the lease |
//! | `/{ns}/clock` | written to read the server's clock when no recent write did |
//!
//! Namespaces do not nest: `a` and `a/b` are disjoint (`/a/kv/...` and `/a/b/kv/...`),
//! but a namespace must not be placed inside another's areas (`a/kv` is refused by
//! nothing, and would show in `a`'s key listing as keys it cannot decode).
//!
//! ## Limits
//!
//! - **Values** up to 480 KiB by default ([`DEFAULT_MAX_VALUE_SIZE`]): a write's `multi`
//!   carries the value twice (key and log entry) and ZooKeeper bounds a request by its
//!   `jute.maxbuffer`, 1 MiB by default. That is below the contract's 1.5 MiB; raise
//!   [`ZooKeeperConfig::max_value_size`] only with a larger `jute.maxbuffer`.
//! - **One flat directory per namespace**: `list` and watch snapshots list every key of
//!   the namespace (`getChildren` of `/{ns}/kv`) and read the matching ones, so a list of
//!   a small prefix costs a listing of the whole namespace. This client reads listings of
//!   any size, but Java clients refuse responses over `jute.maxbuffer` (≈ 60,000 keys of
//!   10 bytes for `zkCli.sh ls`).
//! - **`delete_tree` and lease expiry of many keys**: one `multi` holds at most
//!   about 512 KiB of paths (a few thousand keys); larger subtrees (or leases with more
//!   keys) are deleted in several `multi`s, each its own revision. Watchers still see
//!   every delete, but over several revisions, and a reader may see the subtree partly
//!   deleted.
//! - **The change log** keeps [`DEFAULT_HISTORY_CAPACITY`] entries (one per operation, each
//!   with its values: up to `history_capacity × (value + key + ~50 B)` bytes of the
//!   ensemble's memory; lower `history_capacity` for large values). Entry names use the log
//!   znode's 32-bit child counter, which also counts trims: after about a billion writes
//!   to one namespace it wraps. Then delete `/{ns}/log` (and its entries) by hand: the
//!   store recreates it and every watcher resyncs.
//!
//! ## Failure model
//!
//! | what happens in production | what the store does |
//! |---|---|
//! | a member of the ensemble dies or is partitioned | the session moves to another member by itself; a read in flight is sent again, a write in flight fails `Unavailable` (it may have been applied: it is never sent twice); watches read on from their position |
//! | the whole ensemble restarts (data kept) | calls fail `Unavailable` or `Timeout` until it is back; the session survives if it is back within the session timeout, otherwise the next call opens a new one; watches resume losslessly from their revision |
//! | the namespace is deleted (`deleteall /kvstore`) | the next write recreates its znodes; watchers see a new epoch and `Resync` |
//! | a watcher further behind than the log keeps | `Resync` to the current state |
//! | a server that goes silent (host crash, blackhole) | the client declares the connection lost after 2/5 of the session timeout and reconnects elsewhere; every call is bounded by the request timeout |
//! | the leader's clock jumps (NTP step, a new leader with another clock) | lease deadlines move with it: leases expire early or late by the jump. The contract's early-loss report assumes clocks that do not jump |
//! | other tools write under the namespace | a znode written by `zkCli.sh` in `/{ns}/kv` is a key without lease to reads, but watchers do not see it (no log entry) until a kvstore write to it |
//!
//! With credentials (`zookeeper://user:password@...`, `digest` authentication) every
//! znode the store creates is `CREATOR_ALL`: other users get `Auth` errors. The password
//! never appears in `Debug` output or errors.
//!
//! ```no_run
//! # async fn demo() -> kvstore_core::Result<()> {
//! use bytes::Bytes;
//! use kvstore_core::{PutOptions, Store};
//! use kvstore_zookeeper::{ZooKeeperConfig, ZooKeeperStore};
//!
//! let config = ZooKeeperConfig::from_url("zookeeper://127.0.0.1:2181/myapp")?;
//! let store = ZooKeeperStore::connect(config).await?;
//! let written = store.put("config/mode", Bytes::from("blue"), PutOptions::default()).await?;
//! assert_eq!(store.get("config/mode").await?.revision, written.revision);
//! // zkCli.sh get /myapp/kv/config%2Fmode  prints  blue
//! # Ok(()) }
//! ```

mod config;
mod error;
mod layout;
mod lease;
mod log;
mod read;
mod session;
mod store;
mod watch;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HISTORY_CAPACITY, DEFAULT_MAX_VALUE_SIZE, DEFAULT_NAMESPACE,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_SESSION_TIMEOUT, SCHEME, ZooKeeperConfig,
};
pub use store::{REAP_INTERVAL, ZooKeeperStore};
pub use watch::WATCH_POLL;

/// The backend's name in errors and [`kvstore_core::Store::backend`].
pub const BACKEND: &str = "zookeeper";
