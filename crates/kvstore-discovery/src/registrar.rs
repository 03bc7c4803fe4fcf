//! [`Registrar`]: a provider registers itself under a lease and stays registered.
//!
//! [`Registrar::register`] writes the instance record at `services/{service}/{id}` on a
//! lease kept alive in the background. A background task then guards the registration:
//!
//! - if the lease is lost (expired during an outage, revoked by someone), it registers
//!   again on a new lease, retrying **forever** with jittered exponential backoff;
//! - if the key is deleted or overwritten by someone else, it writes it back;
//! - [`Registration::drain`] flips the status to `Draining`, [`Registration::deregister`]
//!   removes the record now, and dropping the [`Registration`] deregisters too.
//!
//! Every state change is visible through [`Registration::status`] /
//! [`Registration::status_changes`] and logged with `tracing`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{Error, Key, Lease, LeaseId, PutOptions, Result, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::instance::{Instance, Status};

/// First delay before registering again after a failure.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between attempts to register again.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

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
    /// Deregistered, abandoned, or the store was closed: nothing more will happen.
    Stopped,
}

enum Command {
    Drain(oneshot::Sender<Result<()>>),
    Deregister(oneshot::Sender<Result<()>>),
    Abandon,
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
    /// returned [`Registration`] is deregistered or dropped. A crashed provider's record
    /// disappears within `ttl` (plus the backend's expiry granularity).
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
        let (lease, revision) =
            write_on_new_lease(self.store.as_ref(), &key, &instance, ttl).await?;
        let (status_tx, status) = watch::channel(RegistrationStatus::Registered {
            lease: lease.id(),
            revision,
        });
        let (commands, inbox) = mpsc::unbounded_channel();
        let guard = Guard {
            store: self.store.clone(),
            key,
            instance,
            ttl,
            status: status_tx,
            inbox,
        };
        tokio::spawn(guard.run(lease));
        Ok(Registration { commands, status })
    }
}

async fn write_on_new_lease(
    store: &dyn Store,
    key: &Key,
    instance: &Instance,
    ttl: Duration,
) -> Result<(Lease, u64)> {
    let lease = store.grant_lease(ttl).await?;
    let pair = store
        .put(
            key.as_str(),
            Bytes::from(instance.to_json()?),
            PutOptions::with_lease(lease.id()),
        )
        .await?;
    Ok((lease, pair.revision))
}

/// A live registration. Dropping it deregisters the instance.
pub struct Registration {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<RegistrationStatus>,
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

    /// Mark the instance `Draining`: it stays listed but balancers stop picking it.
    ///
    /// # Errors
    /// The store's error if the record could not be rewritten; `Closed` if the
    /// registration has stopped.
    pub async fn drain(&self) -> Result<()> {
        self.ask(Command::Drain).await
    }

    /// Remove the record now and stop.
    ///
    /// # Errors
    /// The store's error if the lease could not be revoked (the record then expires
    /// after its TTL).
    pub async fn deregister(self) -> Result<()> {
        self.ask(Command::Deregister).await
    }

    /// Stop heartbeating without deregistering, as if the provider had crashed: the
    /// record expires after its TTL. For fault tests and demos.
    pub fn abandon(self) {
        let _ = self.commands.send(Command::Abandon);
    }

    async fn ask(&self, command: fn(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
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
    instance: Instance,
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
    /// The store was closed.
    Closed,
}

impl Guard {
    async fn run(mut self, first: Lease) {
        let mut lease = first;
        loop {
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
                    break;
                }
                Outcome::Abandon => {
                    lease.abandon();
                    break;
                }
                Outcome::Closed => break,
            };
            tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
            match self.reregister(reason).await {
                Some(new_lease) => lease = new_lease,
                None => break,
            }
        }
        self.status.send_replace(RegistrationStatus::Stopped);
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
                reason = lease.lost() => return Outcome::Lost(reason.to_string()),
                state = own.next() => match state {
                    None => return Outcome::Closed,
                    Some(Err(e)) => tracing::warn!(key = %self.key, error = %e, "watch of own record failed"),
                    Some(Ok(current)) => {
                        let intact = current.as_ref().is_some_and(|pair| {
                            pair.lease == Some(lease.id())
                                && Instance::from_json(&pair.value).is_ok_and(|i| i == self.instance)
                        });
                        if !intact {
                            tracing::warn!(key = %self.key, "record deleted or overwritten by someone else; writing it back");
                            if let Err(e) = self.write(lease).await {
                                return Outcome::Lost(format!("cannot write the record back: {e}"));
                            }
                        }
                    }
                },
                command = self.inbox.recv() => match command {
                    Some(Command::Drain(reply)) => {
                        self.instance.status = Status::Draining;
                        let _ = reply.send(self.write(lease).await);
                    }
                    Some(Command::Deregister(reply)) => return Outcome::Deregister(Some(reply)),
                    Some(Command::Abandon) => return Outcome::Abandon,
                    None => return Outcome::Deregister(None),
                },
            }
        }
    }

    async fn write(&self, lease: &Lease) -> Result<()> {
        let pair = self
            .store
            .put(
                self.key.as_str(),
                Bytes::from(self.instance.to_json()?),
                PutOptions::with_lease(lease.id()),
            )
            .await?;
        self.status.send_replace(RegistrationStatus::Registered {
            lease: lease.id(),
            revision: pair.revision,
        });
        Ok(())
    }

    /// Register on a new lease, retrying forever; `None` when told to stop meanwhile.
    async fn reregister(&mut self, reason: String) -> Option<Lease> {
        let mut delays = kvstore_core::retry::backoff(RETRY_MIN_DELAY, RETRY_MAX_DELAY);
        let mut attempt = 0;
        let mut reason = reason;
        loop {
            self.status.send_replace(RegistrationStatus::Reregistering {
                attempt,
                reason: reason.clone(),
            });
            match write_on_new_lease(self.store.as_ref(), &self.key, &self.instance, self.ttl).await
            {
                Ok((lease, revision)) => {
                    tracing::info!(key = %self.key, lease = %lease.id(), "registered again");
                    self.status.send_replace(RegistrationStatus::Registered {
                        lease: lease.id(),
                        revision,
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
            let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                command = self.inbox.recv() => match command {
                    Some(Command::Drain(reply)) => {
                        self.instance.status = Status::Draining;
                        let _ = reply.send(Ok(()));
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
