//! # kvstore-memory: the in-memory reference backend
//!
//! All of the kvstore contract ([the contract](kvstore_core::contract)) in one process, for unit tests and
//! single-process programs: revisions, compare-and-swap, leases and TTLs, lossless watches
//! and fenced locks. Cloned handles share one store.
//!
//! Time is `tokio::time`, so under `#[tokio::test(start_paused = true)]` a 30 s lease
//! expires as soon as the test has nothing else to do. Expiry is exact at the
//! millisecond: reads never return an expired key, and a background reaper deletes
//! expired keys so watchers see the deletes.
//!
//! Watch history is a bounded ring ([`MemoryConfig::history_capacity`] changes): a
//! watcher that falls further behind on its own keys receives a `Resync` with the full
//! state.
//!
//! Costs that do not grow with the work elsewhere: reads (`get`, `list`, watch
//! snapshots) share a read-write lock, so threads read in parallel; a write wakes only
//! the watchers whose key or prefix contains a key it changed (a few hash lookups per
//! changed key, however many watchers sit on other prefixes); and a write looks for
//! expired leases only when the earliest lease deadline has passed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> kvstore_core::Result<()> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use kvstore_core::{PutOptions, Store};
//! use kvstore_memory::MemoryStore;
//!
//! let store = MemoryStore::new();
//! store.put("session/42", Bytes::from("alice"), PutOptions::with_ttl(Duration::from_secs(30))).await?;
//! assert!(store.exists("session/42").await?);
//! tokio::time::sleep(Duration::from_secs(31)).await; // instant on the paused clock
//! assert!(!store.exists("session/42").await?);
//! # Ok(()) }
//! ```

mod state;
mod store;
mod watch;

pub use store::{DEFAULT_HISTORY_CAPACITY, DEFAULT_MAX_VALUE_SIZE, MemoryConfig, MemoryStore};

/// The backend's name in errors and [`kvstore_core::Store::backend`].
pub const BACKEND: &str = "memory";
