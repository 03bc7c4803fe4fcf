//! Option structs for writes and locks.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lease::LeaseId;

/// The longest TTL accepted, for keys, leases and locks: etcd's own maximum lease TTL
/// (9,000,000,000 s, about 285 years). A longer one is [`Error::InvalidArgument`], so an
/// absurd duration (say `Duration::MAX`, or 1e30 s from a command line) is a typed error
/// on every backend instead of an overflow ([contract §7](crate::contract#7-errors)).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// Check a TTL given to `operation`: neither zero nor over [`MAX_TTL`].
pub(crate) fn check_ttl_range(ttl: Duration, operation: &'static str) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid_argument(
            operation,
            "a zero TTL is not allowed",
        ));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid_argument(
            operation,
            format!(
                "a TTL of {ttl:?} is over the maximum of {} s",
                MAX_TTL.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Options for `put` and `atomic_put`.
///
/// `ttl` and `lease` are mutually exclusive: setting both is [`Error::InvalidArgument`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Expire the key this long after the write unless it is rewritten (libkv
    /// `WriteOptions.TTL`). Implemented as a fresh lease of that TTL that is not kept
    /// alive; backends round it up to their granularity (etcd: whole seconds). Zero or
    /// over [`MAX_TTL`] is [`Error::InvalidArgument`].
    pub ttl: Option<Duration>,
    /// Attach the key to an existing lease (etcd `WithLease`): it is deleted when the
    /// lease expires or is revoked.
    pub lease: Option<LeaseId>,
}

impl PutOptions {
    /// Options that expire the key after `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        PutOptions {
            ttl: Some(ttl),
            lease: None,
        }
    }

    /// Options that attach the key to `lease`.
    pub fn with_lease(lease: LeaseId) -> Self {
        PutOptions {
            ttl: None,
            lease: Some(lease),
        }
    }

    pub(crate) fn validate(&self, operation: &'static str) -> Result<()> {
        if self.ttl.is_some() && self.lease.is_some() {
            return Err(Error::invalid_argument(
                operation,
                "`ttl` and `lease` are mutually exclusive",
            ));
        }
        match self.ttl {
            Some(ttl) => check_ttl_range(ttl, operation),
            None => Ok(()),
        }
    }
}

/// The TTL used by [`LockOptions::default`]: 15 seconds, etcd `concurrency`'s default
/// session TTL is 60 s; a shorter one replaces a dead holder sooner.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

/// Options for `new_lock` (libkv `LockOptions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// The value the lock key holds while the lock is held, visible to `get(key)`.
    pub value: Bytes,
    /// The lease TTL: the guard renews it while held, so holding longer is fine; a holder
    /// that dies is replaced after at most this long (plus the backend's granularity).
    pub ttl: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            value: Bytes::new(),
            ttl: DEFAULT_LOCK_TTL,
        }
    }
}
