//! [`Capabilities`]: what a backend honestly supports (after OpenDAL's `Capability`).

/// What a backend supports. The conformance suite runs a behaviour only where the
/// backend claims it, and an unsupported call returns [`crate::Error::Unsupported`].
///
/// `#[non_exhaustive]`: a backend starts from [`Capabilities::new`] (nothing but plain
/// keys and values) and switches on what it supports, so new capabilities can be added
/// without breaking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The largest value accepted, in bytes; larger values get
    /// [`crate::Error::ValueTooLarge`] before any I/O.
    pub max_value_size: usize,
    /// Leases, TTL puts and everything built on them (locks).
    pub leases: bool,
    /// Watches (`watch`, `watch_tree`, `watch_prefix_events`).
    pub watch: bool,
    /// Locks (`new_lock`) and elections (`new_election`).
    pub locks: bool,
    /// Transactions (`txn`), [contract §10](crate::contract#10-transactions).
    pub transactions: bool,
}

impl Capabilities {
    /// Plain keys and values up to `max_value_size` bytes, and nothing optional: no
    /// leases, watches, locks or transactions.
    pub const fn new(max_value_size: usize) -> Capabilities {
        Capabilities {
            max_value_size,
            leases: false,
            watch: false,
            locks: false,
            transactions: false,
        }
    }

    /// Everything: leases, watches, locks and transactions, values up to
    /// `max_value_size` bytes (a backend that lacks one switches it off).
    pub const fn all(max_value_size: usize) -> Capabilities {
        Capabilities {
            max_value_size,
            leases: true,
            watch: true,
            locks: true,
            transactions: true,
        }
    }
}
