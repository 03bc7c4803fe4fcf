//! Mapping redis client errors onto the contract's [`Error`] variants.

use std::time::Duration;

use kvstore_core::Error;
use redis::{ErrorKind, RedisError};

use crate::BACKEND;

/// The error code a script raises when the store's own keys are inconsistent (a revision
/// counter evicted, deleted, foreign, or behind the change log), before any write.
const CORRUPT: &str = "KVSTORE_CORRUPT";

/// The contract error for a redis error during `operation` (a script name or command).
pub(crate) fn from_redis(operation: &'static str, error: RedisError, timeout: Duration) -> Error {
    let auth = error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
    if auth {
        return Error::Auth {
            backend: BACKEND,
            operation,
            message: error.to_string(),
        };
    }
    if error.is_timeout() {
        return Error::Timeout {
            operation,
            after: timeout,
        };
    }
    if error.to_string().contains(CORRUPT) {
        return Error::Backend {
            backend: BACKEND,
            operation,
            source: format!(
                "the store's keys in Redis are inconsistent; nothing was written: {error}"
            )
            .into(),
        };
    }
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return Error::Unavailable {
            backend: BACKEND,
            operation,
            message: error.to_string(),
            source: Some(Box::new(error)),
        };
    }
    Error::Backend {
        backend: BACKEND,
        operation,
        source: Box::new(error),
    }
}

/// A script answered something this crate did not expect: a bug, reported as such.
pub(crate) fn unexpected(operation: &'static str, what: String) -> Error {
    Error::unexpected(BACKEND, operation, what)
}
