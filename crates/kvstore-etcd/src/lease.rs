//! Leases: granting, revoking, and one keep-alive on the store's shared stream
//! (the stream itself is in keepalive.rs).

use std::time::Duration;

use kvstore_core::backend::LeaseGrant;
use kvstore_core::{Error, LeaseId, LeaseLoss, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::client::{RETRY_MAX_DELAY, RETRY_MIN_DELAY, Resend, never_sent};
use crate::error::{for_lease, from_shared};
use crate::keepalive::{Answer, Link};
use crate::read::revision;
use crate::store::EtcdStore;

impl EtcdStore {
    /// Grant a lease of at least `ttl`, tracked so closing the store revokes it.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<LeaseGrant> {
        // etcd TTLs are whole seconds: round up, so a lease never ends early.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let response = self
            .call("grant_lease", Resend::Write, |mut clients| async move {
                clients.lease.grant(seconds, None).await
            })
            .await?;
        self.lifecycle.track_lease(LeaseId(response.id()));
        Ok(LeaseGrant {
            id: LeaseId(response.id()),
            ttl: Duration::from_secs(revision(response.ttl())),
        })
    }

    /// One keep-alive, sent on the store's one `LeaseKeepAlive` stream that every lease
    /// of the store shares (opened by the first keep-alive, opened again after it breaks).
    pub(crate) async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        // The policy of every write (`call` with `Resend::Write`): bounded by the request
        // timeout, sent again at once (then with backoff) only when it never reached a
        // member. The stream's task authenticates again by itself (keepalive.rs).
        const OPERATION: &str = "keep_alive_lease";
        self.lifecycle.ensure_open(BACKEND)?;
        let deadline = self.deadline();
        let timed_out = || Error::Timeout {
            operation: OPERATION,
            after: self.config.request_timeout,
        };
        let mut delays = kvstore_core::backend::backoff(RETRY_MIN_DELAY, RETRY_MAX_DELAY);
        let mut immediate_resends = self.config.endpoints.len();
        loop {
            let renewal = self.keep_alives.renew(lease.0, || Link {
                client: self.client.clone(),
                lease: self.clients.lease.clone(),
                request_timeout: self.config.request_timeout,
                shutdown: self.shutdown_token().clone(),
            });
            let Ok(answer) = tokio::time::timeout_at(deadline, renewal).await else {
                return Err(timed_out());
            };
            let (error, unsent) = match answer {
                Answer::Ttl(ttl) if ttl > 0 => return Ok(Duration::from_secs(revision(ttl))),
                Answer::Ttl(_) => {
                    return Err(Error::LeaseLost {
                        lease,
                        reason: LeaseLoss::Expired,
                    });
                }
                Answer::Failed(error) => (
                    for_lease(from_shared(OPERATION, &error), lease),
                    never_sent(&error),
                ),
                Answer::Ended => (
                    Error::Unavailable {
                        backend: BACKEND,
                        operation: OPERATION,
                        message: "etcd ended the keep-alive stream".into(),
                        source: None,
                    },
                    false,
                ),
                Answer::TimedOut => return Err(timed_out()),
                Answer::Gone => {
                    self.lifecycle.ensure_open(BACKEND)?;
                    (
                        Error::Unavailable {
                            backend: BACKEND,
                            operation: OPERATION,
                            message: "the keep-alive task ended".into(),
                            source: None,
                        },
                        false,
                    )
                }
            };
            if unsent && immediate_resends > 0 {
                immediate_resends -= 1;
                tracing::debug!(%error, "etcd member unreachable; trying the next one");
                continue;
            }
            let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
            if !unsent || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "etcd keep-alive failed; sending it again");
            tokio::time::sleep(delay).await;
        }
    }

    /// Revoke `lease` and stop tracking it. A lease already gone (expired, revoked
    /// elsewhere) is what a revoke asks for, so that is no error.
    pub(crate) async fn revoke(&self, lease: LeaseId) -> Result<()> {
        let outcome = self
            .call("revoke_lease", Resend::Write, |mut clients| async move {
                clients.lease.revoke(lease.0).await
            })
            .await;
        self.lifecycle.forget_lease(lease);
        match outcome {
            Ok(_) | Err(Error::LeaseLost { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }
}
