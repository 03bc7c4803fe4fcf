//! [`Capabilities`]: what a backend honestly supports (after OpenDAL's `Capability`).

use std::time::Duration;

/// What a backend supports. The conformance suite runs a behaviour only where the
/// backend claims it, and an unsupported call returns [`crate::Error::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The largest value accepted, in bytes; larger values get
    /// [`crate::Error::ValueTooLarge`] before any I/O.
    pub max_value_size: usize,
    /// Leases, TTL puts and everything built on them (locks).
    pub leases: bool,
    /// The smallest step of a TTL: TTLs are rounded up to a multiple of it (etcd: 1 s).
    pub ttl_granularity: Duration,
    /// Watches (`watch`, `watch_tree`, `watch_prefix_events`).
    pub watch: bool,
    /// Locks (`new_lock`) and elections (`new_election`).
    pub locks: bool,
    /// Transactions (`txn`), docs/CONTRACT.md §10.
    pub transactions: bool,
    /// Whether time is `tokio::time` (so tests may pause it), as in the memory backend.
    /// Backends talking to a server measure TTLs with the server's clock instead.
    pub tokio_clock: bool,
}
