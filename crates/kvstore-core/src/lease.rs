//! Leases: a TTL on the server that keys attach to, kept alive by a handle ([contract §4](crate::contract#4-leases-and-ttl)).
//!
//! [`crate::Store::grant_lease`] returns a [`Lease`]. While the handle lives, a background
//! task refreshes the lease every third of its TTL (as etcd's `clientv3` keep-alive does);
//! `revoke()` or dropping the handle ends it, deleting its keys at one revision. Loss is
//! never silent: [`Lease::lost`] resolves with the [`LeaseLoss`] reason.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::Store;

/// A lease's identifier, as the server knows it (etcd's lease ID; a counter elsewhere).
/// Displayed in hexadecimal, like `etcdctl lease list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a backend returns when it grants a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The new lease.
    pub id: LeaseId,
    /// The TTL the server granted: the requested one rounded up to the backend's
    /// granularity.
    pub ttl: Duration,
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The server let it expire (keep-alives did not reach it in time).
    Expired,
    /// It was revoked, by this handle or by anyone else.
    Revoked,
    /// Keep-alives failed (server unreachable or not answering) for longer than the TTL,
    /// so the server has expired it or will do so: treat it as gone.
    KeepAliveFailed,
    /// The store was closed.
    StoreClosed,
}

impl LeaseLoss {
    /// The reason in snake case (`"expired"`, `"keep_alive_failed"`, ...), for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseLoss::Expired => "expired",
            LeaseLoss::Revoked => "revoked",
            LeaseLoss::KeepAliveFailed => "keep_alive_failed",
            LeaseLoss::StoreClosed => "store_closed",
        }
    }
}

impl fmt::Display for LeaseLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseLoss::Expired => "the lease expired",
            LeaseLoss::Revoked => "the lease was revoked",
            LeaseLoss::KeepAliveFailed => "keep-alives failed for longer than the TTL",
            LeaseLoss::StoreClosed => "the store was closed",
        })
    }
}

/// How long to wait before retrying a failed keep-alive, at most: short, so a lease
/// survives a brief outage, but never longer than a third of the TTL.
const KEEP_ALIVE_RETRY: Duration = Duration::from_millis(500);

/// A granted lease, kept alive in the background while this handle lives.
///
/// Dropping the handle stops the keep-alive and revokes the lease ([contract §4](crate::contract#4-leases-and-ttl)); use
/// [`Lease::abandon`] to stop keeping it alive without revoking it.
pub struct Lease {
    id: LeaseId,
    ttl: Duration,
    store: Arc<dyn Store>,
    loss: watch::Receiver<Option<LeaseLoss>>,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Start keeping `grant` alive on `store`; `asked` is when the grant was requested,
    /// the earliest moment the server can have started the lease's clock. Called by
    /// [`crate::Store::grant_lease`]; a backend never needs it. `closing` is the store's
    /// ([`crate::backend::Backend::closing`]): once cancelled, the lease is reported
    /// lost to the close at once.
    pub(crate) fn keep_alive(
        store: Arc<dyn Store>,
        grant: LeaseGrant,
        asked: Instant,
        closing: Option<CancellationToken>,
    ) -> Lease {
        let (report, loss) = watch::channel(None);
        let closing = closing.unwrap_or_default();
        let keeper = tokio::spawn(keep_alive_loop(
            store.clone(),
            grant,
            asked,
            closing,
            report,
        ));
        Lease {
            id: grant.id,
            ttl: grant.ttl,
            store,
            loss,
            keeper: Some(keeper),
        }
    }

    /// The lease's identifier; pass it in [`crate::PutOptions::lease`].
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL the server granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Resolves when the lease is gone, with the reason. Never resolves while the lease
    /// lives. Can be awaited from several places (it takes `&self`).
    pub async fn lost(&self) -> LeaseLoss {
        let mut loss = self.loss.clone();
        match loss.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(LeaseLoss::Revoked),
            // The keeper ended without reporting: only after revoke or abandon.
            Err(_) => LeaseLoss::Revoked,
        }
    }

    /// The loss reason if the lease is already known to be gone, without waiting.
    pub fn loss(&self) -> Option<LeaseLoss> {
        *self.loss.borrow()
    }

    /// End the lease now; its keys are deleted at one revision.
    ///
    /// # Errors
    /// The backend's error if the revoke could not be sent (the lease then expires by
    /// itself after its TTL, since keep-alives have stopped).
    pub async fn revoke(mut self) -> Result<()> {
        self.stop_keeper();
        self.store.revoke_lease(self.id).await
    }

    /// Stop keeping the lease alive without revoking it, as if this process had crashed:
    /// the lease and its keys expire after the TTL. Returns the lease ID.
    pub fn abandon(mut self) -> LeaseId {
        self.stop_keeper();
        self.id
    }

    fn stop_keeper(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        if self.loss().is_some() {
            return;
        }
        // Revoking needs I/O; without a runtime the lease simply expires after its TTL.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let id = self.id;
            runtime.spawn(async move {
                if let Err(error) = store.revoke_lease(id).await {
                    tracing::debug!(lease = %id, %error, "revoke on drop failed; the lease will expire");
                }
            });
        }
    }
}

/// Refresh the lease every third of its TTL until it is lost; when the store starts
/// closing (`closing` is cancelled), report [`LeaseLoss::StoreClosed`] at once: the
/// close revokes the lease, and a holder must stop acting on it now, not at its next
/// keep-alive. A keep-alive that finds the lease gone while the store closes (the close
/// revoked it first) is the same loss, not an expiry.
///
/// The lease's remaining life is counted from when the last successful keep-alive was
/// *sent*, not answered: the server may have refreshed it at any moment in between, so
/// only the send time is a safe lower bound on when it expires ([contract §4](crate::contract#4-leases-and-ttl)). A
/// slow answer thus shortens the life we count on, and `lost()` fires before the server
/// can have expired the lease and handed its lock to someone else.
async fn keep_alive_loop(
    store: Arc<dyn Store>,
    grant: LeaseGrant,
    asked: Instant,
    closing: CancellationToken,
    report: watch::Sender<Option<LeaseLoss>>,
) {
    let interval = grant.ttl / 3;
    // The server started the lease's clock no earlier than the request: count from there.
    let mut expires = asked + grant.ttl;
    let mut next = asked + interval;
    loop {
        let sent = tokio::select! {
            () = tokio::time::sleep_until(next) => Instant::now(),
            () = closing.cancelled() => return lost(&report, grant.id, LeaseLoss::StoreClosed),
        };
        // A keep-alive that cannot land before the lease would expire is pointless.
        let keeping = tokio::time::timeout_at(expires, store.keep_alive_lease(grant.id));
        let outcome = tokio::select! {
            outcome = keeping => outcome,
            () = closing.cancelled() => return lost(&report, grant.id, LeaseLoss::StoreClosed),
        };
        let loss = match outcome {
            Ok(Ok(ttl)) => {
                // The server's answer is the TTL from when it refreshed, which was after
                // `sent`; never count on more than the granted TTL.
                let life = ttl.min(grant.ttl);
                expires = sent + life;
                next = (sent + life / 3).max(Instant::now());
                continue;
            }
            // Gone because the close revoked it first: lost to the close, not expired.
            Ok(Err(Error::LeaseLost { .. })) if closing.is_cancelled() => LeaseLoss::StoreClosed,
            Ok(Err(Error::LeaseLost { reason, .. })) => reason,
            Ok(Err(Error::Closed { .. })) => LeaseLoss::StoreClosed,
            Ok(Err(error)) if Instant::now() < expires => {
                tracing::warn!(lease = %grant.id, %error, "lease keep-alive failed; retrying");
                next = (Instant::now() + KEEP_ALIVE_RETRY.min(interval)).min(expires);
                continue;
            }
            Ok(Err(_)) | Err(_) => LeaseLoss::KeepAliveFailed,
        };
        return lost(&report, grant.id, loss);
    }
}

/// Report lease `id` lost for `loss`: to its holder, the log and the metrics.
fn lost(report: &watch::Sender<Option<LeaseLoss>>, id: LeaseId, loss: LeaseLoss) {
    tracing::warn!(lease = %id, reason = %loss, "lease lost");
    metrics::counter!("kvstore_lease_losses_total", "reason" => loss.kind()).increment(1);
    report.send_replace(Some(loss));
}
