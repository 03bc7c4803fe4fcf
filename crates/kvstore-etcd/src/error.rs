//! Mapping etcd client errors onto the contract's [`Error`] variants.

use std::sync::Arc;

use kvstore_core::{BoxError, Error, LeaseId, LeaseLoss};
use tonic::Code;

use crate::BACKEND;

/// Whether `error` says a lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(error: &etcd_client::Error) -> bool {
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
    let kind = classify(&error);
    kind.into_error(operation, move || Box::new(error))
}

/// [`from_etcd`] for an error that several callers receive (the failure of the keep-alive
/// stream they share): each gets its own contract error, whose source is the one
/// etcd client error.
pub(crate) fn from_shared(operation: &'static str, error: &Arc<etcd_client::Error>) -> Error {
    classify(error).into_error(operation, || Box::new(Shared(Arc::clone(error))))
}

/// Whether etcd refused `error`'s request for an expired or otherwise invalid auth token.
pub(crate) fn is_expired_token_status(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains(INVALID_TOKEN))
}

/// Which contract error an etcd client error is.
enum Kind {
    LeaseLost,
    Unavailable(String),
    Auth(String),
    Backend,
}

fn classify(error: &etcd_client::Error) -> Kind {
    if is_lease_not_found(error) {
        return Kind::LeaseLost;
    }
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                // etcd answers DeadlineExceeded when it has no leader: try again later.
                // Cancelled: the connection to the member closed under the request (the
                // member died); whether a write was applied is unknown.
                Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled => {
                    Kind::Unavailable(message)
                }
                Code::Unauthenticated | Code::PermissionDenied => Kind::Auth(message),
                Code::InvalidArgument
                    if message.contains("authentication failed")
                        || message.contains(INVALID_TOKEN) =>
                {
                    Kind::Auth(message)
                }
                // tonic reports connection failures as Unknown with a transport source.
                Code::Unknown if message.contains("transport") => Kind::Unavailable(message),
                _ => Kind::Backend,
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            Kind::Unavailable(error.to_string())
        }
        _ => Kind::Backend,
    }
}

impl Kind {
    /// The contract error of this kind, with the client error made by `source` as its
    /// source.
    fn into_error(self, operation: &'static str, source: impl FnOnce() -> BoxError) -> Error {
        match self {
            Kind::LeaseLost => Error::LeaseLost {
                lease: LeaseId(0),
                reason: LeaseLoss::Expired,
            },
            Kind::Unavailable(message) => Error::Unavailable {
                backend: BACKEND,
                operation,
                message,
                source: Some(source()),
            },
            Kind::Auth(message) => Error::Auth {
                backend: BACKEND,
                operation,
                message,
            },
            Kind::Backend => Error::Backend {
                backend: BACKEND,
                operation,
                source: source(),
            },
        }
    }
}

/// One etcd client error handed to several callers, as the source of each one's error.
#[derive(Debug)]
struct Shared(Arc<etcd_client::Error>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
