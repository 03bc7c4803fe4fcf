//! Mapping etcd client errors onto the contract's [`Error`] variants.

use kvstore_core::{Error, LeaseId, LeaseLoss};
use tonic::Code;

use crate::BACKEND;

/// Whether `error` says a lease does not exist (expired or revoked).
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.message().contains("requested lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

/// What etcd says about a token it no longer accepts (simple tokens expire after
/// `--auth-token-ttl` without use; JWT tokens at their expiry).
const INVALID_TOKEN: &str = "invalid auth token";

/// Whether `error` is etcd refusing an expired or otherwise invalid auth token, which
/// authenticating again fixes.
pub(crate) fn is_expired_token(error: &Error) -> bool {
    matches!(error, Error::Auth { message, .. } if message.contains(INVALID_TOKEN))
}

/// Name the lease in a [`Error::LeaseLost`] made by [`from_etcd`], which cannot know it.
pub(crate) fn for_lease(error: Error, lease: LeaseId) -> Error {
    match error {
        Error::LeaseLost { reason, .. } => Error::LeaseLost { lease, reason },
        other => other,
    }
}

/// The contract error for an etcd client error during `operation`. A missing lease
/// becomes [`Error::LeaseLost`]; callers name the lease with [`for_lease`].
pub(crate) fn from_etcd(operation: &'static str, error: etcd_client::Error) -> Error {
    if is_lease_not_found(&error) {
        return Error::LeaseLost {
            lease: LeaseId(0),
            reason: LeaseLoss::Expired,
        };
    }
    match &error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                // etcd answers DeadlineExceeded when it has no leader: try again later.
                // Cancelled: the connection to the member closed under the request (the
                // member died); whether a write was applied is unknown.
                Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled => {
                    unavailable(operation, message, error)
                }
                Code::Unauthenticated | Code::PermissionDenied => Error::Auth {
                    backend: BACKEND,
                    operation,
                    message,
                },
                Code::InvalidArgument
                    if message.contains("authentication failed")
                        || message.contains(INVALID_TOKEN) =>
                {
                    Error::Auth {
                        backend: BACKEND,
                        operation,
                        message,
                    }
                }
                // tonic reports connection failures as Unknown with a transport source.
                Code::Unknown if message.contains("transport") => {
                    unavailable(operation, message, error)
                }
                _ => backend(operation, error),
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            let message = error.to_string();
            unavailable(operation, message, error)
        }
        _ => backend(operation, error),
    }
}

fn unavailable(operation: &'static str, message: String, error: etcd_client::Error) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        operation,
        message,
        source: Some(Box::new(error)),
    }
}

fn backend(operation: &'static str, error: etcd_client::Error) -> Error {
    Error::Backend {
        backend: BACKEND,
        operation,
        source: Box::new(error),
    }
}
