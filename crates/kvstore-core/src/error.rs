//! The one error type of the contract ([contract §7](crate::contract#7-errors)).
//!
//! Every variant carries enough context to say *which operation on which key* failed, and
//! [`Error::is_retryable`] tells a caller (or a retry layer) whether trying again can help,
//! in the manner of OpenDAL's `ErrorKind` and object_store's `Error`.

use std::time::Duration;

use crate::lease::{LeaseId, LeaseLoss};

/// A boxed error from a backend's client library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout kvstore.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a kvstore operation.
///
/// The variants follow [contract §7](crate::contract#7-errors). The enum is `#[non_exhaustive]`: match the variants you
/// handle and keep a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (libkv `ErrKeyNotFound`, object_store `NotFound`).
    #[error("key {key:?} not found")]
    KeyNotFound {
        /// The key, relative to the store's namespace.
        key: String,
    },
    /// A create-only write found the key already present (etcd `Txn` with
    /// `CreateRevision == 0` failing; object_store `AlreadyExists`).
    #[error("key {key:?} already exists")]
    KeyExists {
        /// The key, relative to the store's namespace.
        key: String,
    },
    /// A compare-and-swap found a different revision than the caller expected (libkv
    /// `ErrKeyModified`, object_store `Precondition`).
    #[error("key {key:?} was modified: expected revision {expected}, found {actual}")]
    KeyModified {
        /// The key, relative to the store's namespace.
        key: String,
        /// The revision the caller passed.
        expected: u64,
        /// The key's revision in the store.
        actual: u64,
    },
    /// The key (or prefix) breaks the rules of [contract §1](crate::contract#1-keys-values-and-namespaces); nothing was sent to the server.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as the caller gave it.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An option or argument is out of range or contradicts another one.
    #[error("invalid argument to {operation}: {message}")]
    InvalidArgument {
        /// The operation that rejected it.
        operation: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The value is larger than the backend accepts; nothing was sent to the server.
    #[error("value for key {key:?} is {size} bytes, over the {limit}-byte limit")]
    ValueTooLarge {
        /// The key, relative to the store's namespace.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The backend's limit in bytes ([`crate::Capabilities::max_value_size`]).
        limit: usize,
    },
    /// The backend cannot do this (see [`crate::Capabilities`]); it never fakes it.
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
        /// The backend's name.
        backend: &'static str,
    },
    /// A held lock's lease was lost, so the lock may now be held by someone else.
    #[error("lock {key:?} was lost: {reason}")]
    LockLost {
        /// The lock's key.
        key: String,
        /// Why its lease ended.
        reason: LeaseLoss,
    },
    /// The lease no longer exists on the server (expired or revoked).
    #[error("lease {lease} was lost: {reason}")]
    LeaseLost {
        /// The lease.
        lease: LeaseId,
        /// Why it ended.
        reason: LeaseLoss,
    },
    /// The store was closed with `close()`; every later call fails this way.
    #[error("the {backend} store is closed")]
    Closed {
        /// The backend's name.
        backend: &'static str,
    },
    /// The operation did not finish within its deadline.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// The server cannot be reached (connection refused, reset, DNS, connect timeout).
    #[error("{backend} is unavailable during {operation}: {message}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
        /// What the client reported.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The server rejected the credentials or the permission.
    #[error("{backend} refused authentication during {operation}: {message}")]
    Auth {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
        /// What the server said.
        message: String,
    },
    /// A URL or option set is malformed, or names a backend that is not compiled in.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong, naming the offending part.
        message: String,
    },
    /// Any other server or client error, with its source.
    #[error("{backend} error during {operation}: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
        /// The client library's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying the same call later can succeed: `true` for [`Error::Unavailable`],
    /// [`Error::Timeout`] and [`Error::Backend`] (which may be transient); `false` for
    /// outcomes of the data (`KeyNotFound`, `KeyModified`, ...), bad input, `Auth`,
    /// `Config` and `Closed`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Backend { .. }
        )
    }

    /// Whether a write that failed with this error may have been applied all the same:
    /// `true` when the request may have reached the server and only its answer was lost
    /// or late ([`Error::Unavailable`], [`Error::Timeout`], [`Error::Backend`]). Such a
    /// write must be neither undone (its key may be live) nor sent again unless it is
    /// idempotent; read the key to learn its outcome.
    pub fn may_have_applied(&self) -> bool {
        self.is_retryable()
    }

    /// The variant's name in snake case (`"key_not_found"`, `"unavailable"`, ...): a
    /// label with few values, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::KeyNotFound { .. } => "key_not_found",
            Error::KeyExists { .. } => "key_exists",
            Error::KeyModified { .. } => "key_modified",
            Error::InvalidKey { .. } => "invalid_key",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::Unsupported { .. } => "unsupported",
            Error::LockLost { .. } => "lock_lost",
            Error::LeaseLost { .. } => "lease_lost",
            Error::Closed { .. } => "closed",
            Error::Timeout { .. } => "timeout",
            Error::Unavailable { .. } => "unavailable",
            Error::Auth { .. } => "auth",
            Error::Config { .. } => "config",
            Error::Backend { .. } => "backend",
        }
    }

    /// The server or a script answered something the backend did not expect (a bug, or
    /// a server it does not know): an [`Error::Backend`] saying `what`.
    pub fn unexpected(
        backend: &'static str,
        operation: &'static str,
        what: impl Into<String>,
    ) -> Self {
        Error::Backend {
            backend,
            operation,
            source: what.into().into(),
        }
    }

    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid_argument(operation: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            operation,
            message: message.into(),
        }
    }
}
