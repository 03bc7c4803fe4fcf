//! One runner per section of the report: each connects to the servers it needs, runs
//! the measurements of its topic module (`crate::kv`, `crate::lock`, ...) and adds its
//! tables to the [`Report`](crate::report::Report). Called by `run_section` in `main.rs`.
//!
//! - `etcd-kv`, `redis-kv`, `memory-kv`, `txn`, `zookeeper`, `inflight-curve` and
//!   `value-size-curve` in [`kv`];
//! - `lock` in [`lock`];
//! - `watch` and `watchers-curve` in [`watch`];
//! - `discovery` in [`discovery`];
//! - `election` in [`coordination`];
//! - `serving` in [`serving`];
//! - `list-curve` in [`list`];
//! - `keepalive-curve` in [`lease`].

pub(crate) mod coordination;
pub(crate) mod discovery;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod list;
pub(crate) mod lock;
pub(crate) mod serving;
pub(crate) mod watch;
