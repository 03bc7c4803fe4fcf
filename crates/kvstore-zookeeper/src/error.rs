//! Mapping zookeeper-client errors onto the contract's [`Error`] variants.

use std::time::Duration;

use kvstore_core::Error;
use zookeeper_client as zk;

use crate::BACKEND;

/// The contract error for a ZooKeeper error during `operation`.
pub(crate) fn from_zk(operation: &'static str, error: zk::Error, timeout: Duration) -> Error {
    match error {
        zk::Error::NoAuth | zk::Error::AuthFailed => Error::Auth {
            backend: BACKEND,
            operation,
            message: error.to_string(),
        },
        zk::Error::Timeout => Error::Timeout {
            operation,
            after: timeout,
        },
        zk::Error::ConnectionLoss
        | zk::Error::NoHosts
        | zk::Error::SessionExpired
        | zk::Error::SessionMoved
        | zk::Error::ClientClosed
        | zk::Error::NotReadOnly
        | zk::Error::Throttled => Error::Unavailable {
            backend: BACKEND,
            operation,
            message: error.to_string(),
            source: Some(Box::new(error)),
        },
        other => Error::Backend {
            backend: BACKEND,
            operation,
            source: Box::new(other),
        },
    }
}

/// Whether a read may be sent again after `error` (the session is being re-established).
pub(crate) fn is_transient(error: &zk::Error) -> bool {
    matches!(
        error,
        zk::Error::ConnectionLoss
            | zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::SessionMoved
            | zk::Error::Throttled
    )
}

/// The server answered something this crate did not expect: reported as a backend error.
pub(crate) fn unexpected(operation: &'static str, what: String) -> Error {
    Error::unexpected(BACKEND, operation, what)
}
