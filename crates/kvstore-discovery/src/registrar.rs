//! [`Registrar`]: a provider registers itself under a lease and stays registered.
//!
//! [`Registrar::register`] writes the instance record at `services/{service}/{id}` on a
//! lease kept alive in the background. A background task, owned by the returned
//! [`Registration`], then guards the registration ([contract §9](kvstore_core::contract#9-discovery)):
//!
//! - if the lease is lost (expired during an outage, revoked by someone), it registers
//!   again on a new lease, retrying **forever** with jittered exponential backoff, never
//!   waiting longer than the keep-alive interval (`ttl / 3`) between attempts;
//! - if the record is deleted, or overwritten by something that is not a registration,
//!   it writes it back;
//! - **one id, one writer**: if a *newer* registration of the same id took the record (a
//!   restarted pod reusing its id while the old process still runs), this one reports
//!   [`RegistrationStatus::Replaced`], releases its lease and stops writing, so the two
//!   never rewrite each other in a loop. Each registration stores a random token and
//!   the revision of its first write in its record (`"registration": {"token": ...,
//!   "since": ...}`, ignored by readers); the newer one is the one whose first write has
//!   the higher revision, the token breaking ties, so no clocks need to agree. A
//!   registration coming back after losing its lease keeps its claim;
//! - [`Registration::drain`] and [`Registration::set_status`] change the advertised
//!   status, [`Registration::check_health`] lets an application check flip it between
//!   `Up`, `Draining` and `Down`; [`Registration::deregister`] removes the record now,
//!   and dropping the [`Registration`] deregisters too.
//!
//! Every state change is visible through [`Registration::status`] /
//! [`Registration::status_changes`] and logged with `tracing`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{Error, Key, KvPair, Lease, LeaseId, LeaseLoss, PutOptions, Result, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::AbortOnDropHandle;

use crate::instance::{Instance, Status};
use crate::record::{self, Claim};

/// First delay before registering again after a failure.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
/// Default grace for [`Registration::drain_and_deregister`]: how long a drained
/// instance stays listed as `Draining` before it deregisters, so every consumer's watch
/// has seen it stop taking new requests.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Longest delay between attempts to register again; never longer than the
/// registration's keep-alive interval (a third of its TTL), so a provider is back within
/// about that interval once the registry answers again, however long it was gone.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

/// The longest delay between attempts to register again with a lease of `ttl`: the
/// keep-alive interval (`ttl / 3`), within [`RETRY_MIN_DELAY`] and [`RETRY_MAX_DELAY`].
/// Retrying as often as a live registration heartbeats costs the registry nothing more
/// than the provider's normal load, and backing off past the TTL would keep the provider
/// invisible long after the registry is back ([contract §9](kvstore_core::contract#9-discovery)).
fn retry_max_delay(ttl: Duration) -> Duration {
    (ttl / 3).clamp(RETRY_MIN_DELAY, RETRY_MAX_DELAY)
}

/// Where a registration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// The record is in the store on `lease`, last written at `revision`.
    Registered {
        /// The lease the record is attached to.
        lease: LeaseId,
        /// The revision of the last write of the record.
        revision: u64,
    },
    /// The registration was lost and is being restored; `attempt` counts failed tries
    /// since it was lost (0 while the first try runs).
    Reregistering {
        /// Failed attempts so far.
        attempt: u32,
        /// Why the last attempt (or the registration) failed.
        reason: String,
    },
    /// A newer registration of the same `service/id` owns the record (written at
    /// `revision`): this one released its lease and stopped writing, for good. Dropping
    /// or deregistering it leaves the newer record alone.
    Replaced {
        /// The revision of the newer registration's record when this one gave way.
        revision: u64,
    },
    /// Deregistered, abandoned, or the store was closed: nothing more will happen.
    Stopped,
}

impl RegistrationStatus {
    /// The state's name in snake case (`"registered"`, `"reregistering"`, `"replaced"`,
    /// `"stopped"`), for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistrationStatus::Registered { .. } => "registered",
            RegistrationStatus::Reregistering { .. } => "reregistering",
            RegistrationStatus::Replaced { .. } => "replaced",
            RegistrationStatus::Stopped => "stopped",
        }
    }
}

/// Count a registration entering `status`: the `metrics` counter
/// `kvstore_registrations_total` with labels `service` and `status`.
fn count_status(service: &str, status: &'static str) {
    metrics::counter!(
        "kvstore_registrations_total",
        "service" => service.to_owned(),
        "status" => status,
    )
    .increment(1);
}

enum Command {
    /// Set the status the application asked for ([`Registration::set_status`]).
    SetStatus(Status, oneshot::Sender<Result<()>>),
    /// The health check's latest verdict.
    Health(Status),
    Deregister(oneshot::Sender<Result<()>>),
    Abandon,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("backend", &self.store.backend())
            .finish()
    }
}

/// Registers instances on one store.
#[derive(Clone)]
pub struct Registrar {
    store: Arc<dyn Store>,
}

impl Registrar {
    /// A registrar writing to `store` (any backend).
    pub fn new(store: Arc<dyn Store>) -> Registrar {
        Registrar { store }
    }

    /// Register `instance` with a lease of `ttl` and keep it registered until the
    /// returned [`Registration`] is deregistered, dropped, or replaced by a newer
    /// registration of the same id. A crashed provider's record disappears within `ttl`
    /// (plus the backend's expiry granularity).
    ///
    /// # Errors
    /// `InvalidKey`/`InvalidArgument` for a bad record or zero TTL, and the store's errors
    /// if the first registration fails (later failures are retried forever).
    pub async fn register(&self, instance: Instance, ttl: Duration) -> Result<Registration> {
        instance.validate()?;
        if ttl.is_zero() {
            return Err(Error::invalid_argument(
                "register",
                "a zero TTL is not allowed",
            ));
        }
        let key = instance.key()?;
        let mut claim = Claim::new();
        let (lease, pair) =
            write_on_new_lease(self.store.as_ref(), &key, &instance, &claim, ttl).await?;
        // The first write has no `since`: its own revision is the claim from now on.
        claim.since = Some(pair.revision);
        count_status(&instance.service, "registered");
        let (status_tx, status) = watch::channel(RegistrationStatus::Registered {
            lease: lease.id(),
            revision: pair.revision,
        });
        let (commands, inbox) = mpsc::unbounded_channel();
        let guard = Guard {
            store: self.store.clone(),
            key,
            wanted: instance.status,
            health: Status::Up,
            instance,
            claim,
            ttl,
            status: status_tx,
            inbox,
        };
        Ok(Registration {
            commands,
            status,
            health_check: None,
            _guard: AbortOnDropHandle::new(tokio::spawn(guard.run(lease))),
        })
    }
}

async fn write_on_new_lease(
    store: &dyn Store,
    key: &Key,
    instance: &Instance,
    claim: &Claim,
    ttl: Duration,
) -> Result<(Lease, KvPair)> {
    let lease = store.grant_lease(ttl).await?;
    let pair = store
        .put(
            key.as_str(),
            record::encode(instance, claim)?,
            PutOptions::with_lease(lease.id()),
        )
        .await?;
    Ok((lease, pair))
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// A live registration. Dropping it stops its background tasks and deregisters the
/// instance: the lease is revoked, which deletes the record (unless the registration
/// was [`RegistrationStatus::Replaced`]: the record then belongs to the newer
/// registration and stays).
pub struct Registration {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<RegistrationStatus>,
    health_check: Option<AbortOnDropHandle<()>>,
    /// Aborting the guard drops its lease, and dropping a lease revokes it.
    _guard: AbortOnDropHandle<()>,
}

impl Registration {
    /// Where the registration stands now.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change, for waiting on one.
    pub fn status_changes(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Mark the instance `Draining`: it stays listed but balancers stop picking it. A
    /// health check cannot make it `Up` again (it can make it `Down`); only
    /// [`Registration::set_status`] can.
    ///
    /// # Errors
    /// The store's error if the record could not be rewritten; `Closed` if the
    /// registration has stopped (deregistered, replaced, or the store closed).
    pub async fn drain(&self) -> Result<()> {
        self.set_status(Status::Draining).await
    }

    /// Advertise `status`, as the application decides it (e.g. `Up` again after a
    /// `drain`). The advertised status is the worse of this and the health check's
    /// verdict ([`Registration::check_health`]). Written now if registered, otherwise
    /// with the next registration.
    ///
    /// # Errors
    /// The store's error if the record could not be rewritten; `Closed` if the
    /// registration has stopped (deregistered, replaced, or the store closed).
    pub async fn set_status(&self, status: Status) -> Result<()> {
        self.ask(|reply| Command::SetStatus(status, reply)).await
    }

    /// Run the application's health `check` every `every` and advertise what it says:
    /// `Up`, `Draining` or `Down` (consumers' balancers pick only `Up`). A check that
    /// does not answer within `every` counts as `Down`. The record is rewritten only
    /// when the verdict changes. The check runs in a task owned by this registration:
    /// it stops when the registration is dropped, deregistered or abandoned, and a new
    /// call replaces the previous check.
    ///
    /// The advertised status is the worse of the check's verdict and the status set by
    /// [`Registration::drain`] / [`Registration::set_status`], so a drained instance
    /// stays drained while healthy, and shows `Down` while failing.
    ///
    /// # Errors
    /// `InvalidArgument` if `every` is zero (nothing is started).
    pub fn check_health<F, Fut>(&mut self, every: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Status> + Send + 'static,
    {
        if every.is_zero() {
            return Err(Error::invalid_argument(
                "check_health",
                "the health check period must be non-zero",
            ));
        }
        let commands = self.commands.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = None;
            loop {
                ticks.tick().await;
                let verdict = tokio::time::timeout(every, check())
                    .await
                    .unwrap_or(Status::Down);
                if last != Some(verdict) {
                    last = Some(verdict);
                    if commands.send(Command::Health(verdict)).is_err() {
                        return;
                    }
                }
            }
        });
        self.health_check = Some(AbortOnDropHandle::new(task));
        Ok(())
    }

    /// Stop gracefully, as Kubernetes drains a pod: advertise `Draining` (so consumers
    /// stop picking the instance), wait until the registry holds that record, wait
    /// `grace` more for every consumer's watch to see it, then deregister. Keep serving
    /// until this returns: requests routed before consumers saw the drain still arrive
    /// during the grace. Then stop the server the way that finishes in-flight requests
    /// (axum's and tonic's graceful shutdown). [`DEFAULT_DRAIN_GRACE`] is a sensible
    /// `grace` on one network; make it longer than your consumers' watch latency.
    ///
    /// A registration that is not registered at the moment (re-registering after an
    /// outage) has nothing consumers could read: it deregisters after the grace.
    ///
    /// # Errors
    /// The store's error if the `Draining` record could not be written (the record is
    /// then deregistered at once, as [`Registration::deregister`] would) or the lease
    /// could not be revoked (the record then expires after its TTL).
    ///
    /// # Cancel safety
    /// Dropping the future drops the registration, which deregisters it (as dropping a
    /// [`Registration`] does); the grace is cut short.
    pub async fn drain_and_deregister(self, grace: Duration) -> Result<()> {
        if self.is_over() {
            return Ok(());
        }
        match self.drain().await {
            Ok(()) => {
                tracing::info!(?grace, "drained; deregistering after the grace");
                tokio::time::sleep(grace).await;
                self.deregister().await
            }
            Err(e) => {
                let deregistered = self.deregister().await;
                tracing::warn!(error = %e, "draining failed; deregistered at once");
                deregistered.and(Err(e))
            }
        }
    }

    /// Remove the record now and stop. A replaced or stopped registration has nothing
    /// to remove and returns `Ok`.
    ///
    /// # Errors
    /// The store's error if the lease could not be revoked (the record then expires
    /// after its TTL).
    pub async fn deregister(mut self) -> Result<()> {
        self.health_check = None;
        if self.is_over() {
            return Ok(());
        }
        match self.ask(Command::Deregister).await {
            // The guard ended meanwhile (replaced, or the store closed): nothing of ours
            // is left to remove.
            Err(Error::Closed { .. }) if self.is_over() => Ok(()),
            other => other,
        }
    }

    /// Whether nothing of this registration is left to remove: replaced by a newer one,
    /// or stopped.
    fn is_over(&self) -> bool {
        matches!(
            self.status(),
            RegistrationStatus::Replaced { .. } | RegistrationStatus::Stopped
        )
    }

    /// Stop heartbeating without deregistering, as if the provider had crashed: the
    /// record expires after its TTL. For fault tests and demos.
    pub fn abandon(self) {
        let Registration {
            commands, _guard, ..
        } = self;
        let _ = commands.send(Command::Abandon);
        // The guard must get to abandon its lease, not be aborted (which would revoke
        // it); it ends as soon as it has.
        drop(_guard.detach());
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Closed {
            backend: "discovery",
        };
        self.commands.send(command(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The background task behind a [`Registration`].
struct Guard {
    store: Arc<dyn Store>,
    key: Key,
    /// What is advertised: `instance.status` is the worse of `wanted` and `health`.
    instance: Instance,
    /// The status the application set (drain, set_status).
    wanted: Status,
    /// The health check's last verdict (`Up` without a check).
    health: Status,
    claim: Claim,
    ttl: Duration,
    status: watch::Sender<RegistrationStatus>,
    inbox: mpsc::UnboundedReceiver<Command>,
}

/// How a guarded registration ended.
enum Outcome {
    /// The lease is gone: register again.
    Lost(String),
    /// Remove the record (asked, with a reply, or because the handle was dropped).
    Deregister(Option<oneshot::Sender<Result<()>>>),
    /// Stop heartbeating and leave the record to expire.
    Abandon,
    /// A newer registration of this id owns the record (at this revision).
    Replaced(u64),
    /// The store was closed.
    Closed,
}

/// What the current record means for this registration.
enum Verdict {
    /// Ours, as we wrote it.
    Intact,
    /// Gone or not ours: write ours back.
    WriteBack(&'static str),
    /// A newer registration of this id wrote it.
    Replaced(u64),
}

impl Guard {
    /// Publish a status change and count it (`kvstore_registrations_total`).
    fn report(&self, status: RegistrationStatus) {
        count_status(&self.instance.service, status.kind());
        self.status.send_replace(status);
    }

    async fn run(mut self, first: Lease) {
        let mut lease = first;
        let end = loop {
            let reason = match self.guard(&lease).await {
                Outcome::Lost(reason) => reason,
                Outcome::Deregister(reply) => {
                    let revoked = lease.revoke().await;
                    if let Err(e) = &revoked {
                        tracing::warn!(key = %self.key, error = %e, "deregister failed; the record expires after its TTL");
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(revoked);
                    }
                    break RegistrationStatus::Stopped;
                }
                Outcome::Abandon => {
                    lease.abandon();
                    break RegistrationStatus::Stopped;
                }
                Outcome::Replaced(revision) => {
                    tracing::warn!(key = %self.key, revision, "a newer registration of this id took over; this one stops writing");
                    // The newer record is on the newer lease: ours holds nothing now.
                    if let Err(e) = lease.revoke().await {
                        tracing::debug!(key = %self.key, error = %e, "releasing the replaced lease failed; it expires after its TTL");
                    }
                    break RegistrationStatus::Replaced { revision };
                }
                Outcome::Closed => break RegistrationStatus::Stopped,
            };
            tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
            match self.reregister(reason).await {
                Some(new_lease) => lease = new_lease,
                None => break RegistrationStatus::Stopped,
            }
        };
        self.report(end);
    }

    /// Keep the record in place while `lease` lives.
    async fn guard(&mut self, lease: &Lease) -> Outcome {
        let mut own = match self.store.watch(self.key.as_str()).await {
            Ok(own) => own,
            Err(Error::Closed { .. }) => return Outcome::Closed,
            Err(e) => return Outcome::Lost(format!("cannot watch the record: {e}")),
        };
        loop {
            tokio::select! {
                reason = lease.lost() => return match reason {
                    // The store's close revokes the lease: registering again would only
                    // outlive the close.
                    LeaseLoss::StoreClosed => Outcome::Closed,
                    reason => Outcome::Lost(reason.to_string()),
                },
                state = own.next() => match state {
                    None => return Outcome::Closed,
                    Some(Err(e)) => tracing::warn!(key = %self.key, error = %e, "watch of own record failed"),
                    Some(Ok(current)) => match self.judge(current.as_ref(), lease) {
                        Verdict::Intact => {}
                        Verdict::Replaced(revision) => return Outcome::Replaced(revision),
                        Verdict::WriteBack(why) => {
                            tracing::warn!(key = %self.key, why, "writing the record back");
                            if let Err(e) = self.write(lease).await {
                                return Outcome::Lost(format!("cannot write the record back: {e}"));
                            }
                        }
                    },
                },
                command = self.inbox.recv() => match command {
                    Some(Command::SetStatus(status, reply)) => {
                        self.wanted = status;
                        let _ = reply.send(self.advertise(Some(lease)).await);
                    }
                    Some(Command::Health(verdict)) => {
                        self.health = verdict;
                        if let Err(e) = self.advertise(Some(lease)).await {
                            tracing::warn!(key = %self.key, error = %e, "could not advertise the health check's verdict");
                        }
                    }
                    Some(Command::Deregister(reply)) => return Outcome::Deregister(Some(reply)),
                    Some(Command::Abandon) => return Outcome::Abandon,
                    None => return Outcome::Deregister(None),
                },
            }
        }
    }

    fn judge(&self, current: Option<&KvPair>, lease: &Lease) -> Verdict {
        let Some(pair) = current else {
            return Verdict::WriteBack("deleted by someone else");
        };
        match Claim::read(&pair.value) {
            Some(theirs) if theirs.token == self.claim.token => {
                let as_written = pair.lease == Some(lease.id())
                    && Instance::from_json(&pair.value).is_ok_and(|i| i == self.instance);
                if as_written {
                    Verdict::Intact
                } else {
                    Verdict::WriteBack("an earlier write of ours came back")
                }
            }
            Some(theirs) if theirs.rank(pair) > self.claim.rank(pair) => {
                Verdict::Replaced(pair.revision)
            }
            Some(_) => Verdict::WriteBack("an older registration of this id overwrote it"),
            None => Verdict::WriteBack("overwritten by something that is not a registration"),
        }
    }

    /// Apply `wanted` and `health` to the record, writing it if it changed and a lease
    /// is held (otherwise the next registration writes it).
    async fn advertise(&mut self, lease: Option<&Lease>) -> Result<()> {
        let status = self.wanted.max(self.health);
        if status == self.instance.status {
            return Ok(());
        }
        tracing::info!(key = %self.key, ?status, "advertising a new status");
        self.instance.status = status;
        match lease {
            Some(lease) => self.write(lease).await,
            None => Ok(()),
        }
    }

    async fn write(&self, lease: &Lease) -> Result<()> {
        let pair = self
            .store
            .put(
                self.key.as_str(),
                record::encode(&self.instance, &self.claim)?,
                PutOptions::with_lease(lease.id()),
            )
            .await?;
        self.report(RegistrationStatus::Registered {
            lease: lease.id(),
            revision: pair.revision,
        });
        Ok(())
    }

    /// Register on a new lease, retrying forever; `None` when told to stop meanwhile.
    /// The claim stays the same: a registration that comes back after an outage is not
    /// newer than one that started meanwhile.
    async fn reregister(&mut self, reason: String) -> Option<Lease> {
        let max_delay = retry_max_delay(self.ttl);
        let mut delays = kvstore_core::backend::backoff(RETRY_MIN_DELAY, max_delay);
        let mut attempt = 0;
        let mut reason = reason;
        loop {
            self.report(RegistrationStatus::Reregistering {
                attempt,
                reason: reason.clone(),
            });
            match write_on_new_lease(
                self.store.as_ref(),
                &self.key,
                &self.instance,
                &self.claim,
                self.ttl,
            )
            .await
            {
                Ok((lease, pair)) => {
                    tracing::info!(key = %self.key, lease = %lease.id(), "registered again");
                    self.report(RegistrationStatus::Registered {
                        lease: lease.id(),
                        revision: pair.revision,
                    });
                    return Some(lease);
                }
                Err(Error::Closed { .. }) => return None,
                Err(e) => {
                    attempt += 1;
                    reason = e.to_string();
                    tracing::warn!(key = %self.key, attempt, error = %e, "registering again failed; retrying");
                }
            }
            let delay = delays.next().unwrap_or(max_delay);
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    command = self.inbox.recv() => match command {
                        Some(Command::SetStatus(status, reply)) => {
                            self.wanted = status;
                            let _ = reply.send(self.advertise(None).await);
                        }
                        Some(Command::Health(verdict)) => {
                            self.health = verdict;
                            let _ = self.advertise(None).await;
                        }
                        Some(Command::Deregister(reply)) => {
                            let _ = reply.send(Ok(()));
                            return None;
                        }
                        Some(Command::Abandon) | None => return None,
                    },
                }
            }
        }
    }
}
