//! [`Lifecycle`]: the open/closed state a backend handle shares with its clones and its
//! background tasks, and the leases it must revoke when closed ([contract §3](crate::contract#3-operations) `close`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lease::LeaseId;

/// How many leases [`Lifecycle::close_revoking`] revokes at once.
pub const CLOSE_REVOKES_IN_FLIGHT: usize = 64;

/// Shared by every clone of one backend connection.
#[derive(Debug, Default)]
pub struct Lifecycle {
    closed: AtomicBool,
    closing: CancellationToken,
    shutdown: CancellationToken,
    leases: Mutex<HashSet<LeaseId>>,
}

impl Lifecycle {
    /// An open lifecycle with no leases.
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// `Ok` while open.
    ///
    /// # Errors
    /// [`Error::Closed`] naming `backend` after [`Lifecycle::close`].
    pub fn ensure_open(&self, backend: &'static str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed { backend })
        } else {
            Ok(())
        }
    }

    /// Cancelled as soon as the handle starts closing, before its leases are revoked:
    /// what [`crate::backend::Backend::closing`] returns, so each lease's `lost()` says
    /// [`crate::LeaseLoss::StoreClosed`] at once.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Cancelled when the handle closes: background loops select on it to stop.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Remember a lease this handle granted, to revoke it on close.
    pub fn track_lease(&self, lease: LeaseId) {
        self.leases().insert(lease);
    }

    /// Forget a lease (revoked, or detached to outlive the handle).
    pub fn forget_lease(&self, lease: LeaseId) {
        self.leases().remove(&lease);
    }

    /// Take every tracked lease, for revoking on close.
    pub fn take_leases(&self) -> Vec<LeaseId> {
        self.leases().drain().collect()
    }

    /// Close as `close()` must ([contract §3](crate::contract#3-operations)): revoke every
    /// tracked lease with `revoke`, [`CLOSE_REVOKES_IN_FLIGHT`] at a time, then mark
    /// closed and stop background loops. Best effort: a lease that cannot be revoked
    /// expires after its TTL; once one revoke finds the server unreachable (an error
    /// that [`Error::may_have_applied`]), the rest are not tried, so closing against a
    /// dead server takes about one request timeout, not one per lease.
    pub async fn close_revoking<F, Fut>(&self, revoke: F)
    where
        F: Fn(LeaseId) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        use futures::StreamExt as _;

        self.closing.cancel();
        let unreachable = AtomicBool::new(false);
        futures::stream::iter(self.take_leases())
            .for_each_concurrent(CLOSE_REVOKES_IN_FLIGHT, |lease| {
                let revoke = &revoke;
                let unreachable = &unreachable;
                async move {
                    if unreachable.load(Ordering::Acquire) {
                        return;
                    }
                    if let Err(error) = revoke(lease).await {
                        if error.may_have_applied() {
                            unreachable.store(true, Ordering::Release);
                        }
                        tracing::debug!(%lease, %error, "revoke on close failed; the lease will expire");
                    }
                }
            })
            .await;
        self.close();
    }

    /// Mark closed and stop background loops.
    pub fn close(&self) {
        self.closing.cancel();
        self.closed.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    /// Run `work` every `interval` (a lease reaper, a log trimmer) in a task owned by
    /// this lifecycle: it stops when the store is closed, even mid-run, or when the last
    /// handle is gone (the task holds no strong reference to the lifecycle). A tick that
    /// falls behind is delayed, not bunched. `work` reports its own failures; the loop
    /// goes on.
    pub fn every<F, Fut>(self: &Arc<Self>, interval: Duration, mut work: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let alive = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if alive.strong_count() == 0 {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = work() => {}
                }
            }
        });
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashSet<LeaseId>> {
        // Every critical section is a single set operation: a poisoned set is intact.
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
