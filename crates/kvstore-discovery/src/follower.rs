//! The follower: one task per watched service per [`crate::Discovery`], shared by every
//! [`crate::InstanceSet`] of that service ([contract §9](kvstore_core::contract#9-discovery) "Shared watches").
//!
//! It holds the one backend watch of the service, decodes each record once into an
//! `Arc<Instance>`, and publishes the served set as a persistent map (`rpds`), so a
//! change copies a path of the tree, never the whole set, and a consumer's snapshot of
//! what it last saw costs a pointer. Each change is also logged as a diff, so consumers
//! catch up in time proportional to what changed; one that fell behind the log diffs its
//! snapshot against the current set instead.
//!
//! Protection (Nacos's protect threshold and empty-push protection) lives here too: a
//! resync, or one revision removing several instances at once, that would take the set
//! below the threshold is not applied to what consumers see; the removed instances stay
//! served, marked stale, until the registry has enough instances again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures::stream::{BoxStream, Peekable};
use futures::{FutureExt, StreamExt};
use kvstore_core::{Error, KvPair, Result, Store, WatchEvent, WatchFrom};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{CACHE_WRITE_INTERVAL, Cached, SnapshotCache};
use crate::discovery::Liveness;
use crate::health::{Health, StaleError};
use crate::record::{self, Member};
use crate::set::InstanceChange;

/// A service's instances by id, shared structurally between versions.
pub(crate) type Members = rpds::RedBlackTreeMapSync<String, Member>;

/// How many change batches the log keeps for consumers to catch up from; one further
/// behind diffs its snapshot against the current set instead.
const LOG_CAPACITY: usize = 64;

/// One published version of the served set.
#[derive(Debug)]
pub(crate) struct Published {
    /// How many times the served set has changed: a consumer at `seq` has seen it all.
    pub seq: u64,
    /// The store revision the set reflects.
    pub revision: u64,
    pub members: Members,
    pub health: Health,
    /// Bumped each time the set turns stale, or stale for another reason, so each
    /// consumer is told once.
    pub stale_epoch: u64,
}

/// The recent change batches, by `seq`.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    batches: VecDeque<(u64, Arc<[InstanceChange]>)>,
}

impl ChangeLog {
    fn push(&mut self, seq: u64, changes: Arc<[InstanceChange]>) {
        if self.batches.len() == LOG_CAPACITY {
            self.batches.pop_front();
        }
        self.batches.push_back((seq, changes));
    }

    /// The batches after `from` up to `to`, if the log still has all of them.
    pub(crate) fn between(&self, from: u64, to: u64) -> Option<Vec<Arc<[InstanceChange]>>> {
        let first = self.batches.front()?.0;
        if from + 1 < first {
            return None;
        }
        let batches: Vec<_> = self
            .batches
            .iter()
            .filter(|(seq, _)| *seq > from && *seq <= to)
            .map(|(_, changes)| changes.clone())
            .collect();
        (batches.len() as u64 == to - from).then_some(batches)
    }
}

/// The handles consumers read the follower's output through.
pub(crate) struct Outputs {
    pub current: watch::Receiver<Arc<Published>>,
    pub log: Arc<Mutex<ChangeLog>>,
}

/// Lock the log; a panic elsewhere while holding it leaves it consistent (pushes are
/// single operations), so poisoning is ignored.
pub(crate) fn lock(log: &Mutex<ChangeLog>) -> std::sync::MutexGuard<'_, ChangeLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The protect threshold and empty-push protection ([`crate::DiscoveryOptions`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Protection {
    pub threshold: f64,
    pub empty: bool,
}

impl Protection {
    /// Whether `remaining` instances out of `known` is too few to serve.
    fn violated(&self, remaining: usize, known: usize) -> bool {
        let below_threshold = (remaining as f64) < self.threshold * known as f64;
        let emptied = self.empty && remaining == 0 && known > 0;
        below_threshold || emptied
    }
}

/// What one step of the watch brings.
#[derive(Debug)]
enum Step {
    /// The whole state (the first snapshot, or a resync after lost history).
    Reset(kvstore_core::Snapshot),
    /// Every event of one revision.
    Revision(u64, Vec<WatchEvent>),
}

type Events = Peekable<BoxStream<'static, Result<WatchEvent>>>;

/// Which kind of staleness was last published, to tell a new episode from the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Cached,
    Registry,
    Protected,
}

pub(crate) struct Follower {
    service: String,
    prefix: String,
    store: Arc<dyn Store>,
    protection: Protection,
    /// The registry's state as last read.
    truth: Members,
    /// Instances the registry lost in a protected step, still served.
    held: Members,
    /// What consumers see: `truth` overlaid on `held`.
    served: Members,
    /// How many instances were served when protection started holding.
    baseline: usize,
    revision: u64,
    seq: u64,
    stale_epoch: u64,
    last_cause: Option<Cause>,
    registry_error: Option<(Instant, Arc<Error>)>,
    /// Started from the cache: since when, and the cached revision.
    cached: Option<(Instant, u64)>,
    protected: Option<Instant>,
    publisher: watch::Sender<Arc<Published>>,
    log: Arc<Mutex<ChangeLog>>,
    cache: Option<SnapshotCache>,
    cache_due: Option<Instant>,
    liveness: Option<watch::Receiver<Liveness>>,
}

impl Follower {
    pub(crate) fn new(
        service: &str,
        prefix: String,
        store: Arc<dyn Store>,
        protection: Protection,
        cache: Option<SnapshotCache>,
        liveness: watch::Receiver<Liveness>,
    ) -> (Follower, Outputs) {
        let (publisher, current) = watch::channel(Arc::new(Published {
            seq: 0,
            revision: 0,
            members: Members::new_sync(),
            health: Health::Synced { revision: 0 },
            stale_epoch: 0,
        }));
        let log = Arc::new(Mutex::new(ChangeLog::default()));
        let follower = Follower {
            service: service.to_owned(),
            prefix,
            store,
            protection,
            truth: Members::new_sync(),
            held: Members::new_sync(),
            served: Members::new_sync(),
            baseline: 0,
            revision: 0,
            seq: 0,
            stale_epoch: 0,
            last_cause: None,
            registry_error: None,
            cached: None,
            protected: None,
            publisher,
            log: log.clone(),
            cache,
            cache_due: None,
            liveness: Some(liveness),
        };
        (follower, Outputs { current, log })
    }

    /// Read the first snapshot from `events` (already there: the store read it before
    /// returning the stream) and publish it.
    ///
    /// # Errors
    /// The stream's error, or `Closed` if it ended.
    pub(crate) async fn start(
        &mut self,
        events: BoxStream<'static, Result<WatchEvent>>,
    ) -> Result<Events> {
        let mut events = events.peekable();
        match next_step(&mut events).await {
            Some(Ok(step)) => self.apply(step),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::Closed {
                    backend: self.store.backend(),
                });
            }
        }
        Ok(events)
    }

    /// Serve the cached snapshot, stale, because the registry cannot be read (`error`).
    pub(crate) fn start_from_cache(&mut self, cached: Cached, error: Error) {
        tracing::warn!(service = %self.service, revision = cached.revision, %error, "the registry cannot be read; starting from the cached snapshot");
        let now = Instant::now();
        self.cached = Some((now, cached.revision));
        self.registry_error = Some((now, Arc::new(error)));
        for (id, member) in cached.members {
            self.truth.insert_mut(id.clone(), member.clone());
            self.served.insert_mut(id, member);
        }
        self.revision = cached.revision;
        self.publish();
    }

    /// Follow the service until the store closes. `events` is the started watch, or
    /// `None` after [`Follower::start_from_cache`] (the watch is then opened here,
    /// retrying until the registry answers).
    pub(crate) async fn run(mut self, events: Option<Events>) {
        let mut events = match events {
            Some(events) => events,
            None => match self.connect().await {
                Some(events) => events,
                None => return,
            },
        };
        loop {
            let cache_due = self.cache_due;
            let write_cache = async move {
                match cache_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let liveness = async {
                match &mut self.liveness {
                    Some(liveness) => liveness.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                step = next_step(&mut events) => match step {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(service = %self.service, error = %e, "the instance watch failed");
                        self.registry_failed(e);
                        self.publish();
                    }
                    Some(Ok(step)) => self.apply(step),
                },
                open = liveness => {
                    if open {
                        self.liveness_changed();
                    } else {
                        self.liveness = None;
                    }
                }
                () = write_cache => self.write_cache().await,
            }
        }
    }

    /// Open the watch after a start from the cache, retrying with backoff; `None` if the
    /// store closed.
    async fn connect(&mut self) -> Option<Events> {
        let mut delays = kvstore_core::backend::backoff(
            kvstore_core::backend::RESUME_MIN_DELAY,
            kvstore_core::backend::RESUME_MAX_DELAY,
        );
        loop {
            let delay = delays
                .next()
                .unwrap_or(kvstore_core::backend::RESUME_MAX_DELAY);
            tokio::time::sleep(delay).await;
            let opened = self
                .store
                .watch_prefix_events(&self.prefix, WatchFrom::Snapshot)
                .await;
            let started = match opened {
                Ok(events) => self.start(events).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(events) => {
                    tracing::info!(service = %self.service, "the registry answers again; caught up from the cached snapshot");
                    return Some(events);
                }
                Err(Error::Closed { .. }) => return None,
                Err(e) => {
                    tracing::debug!(service = %self.service, error = %e, "the registry still cannot be read");
                    self.registry_failed(e);
                    self.publish();
                }
            }
        }
    }

    fn registry_failed(&mut self, error: Error) {
        let since = self
            .registry_error
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        self.registry_error = Some((since, Arc::new(error)));
    }

    fn liveness_changed(&mut self) {
        let Some(liveness) = &self.liveness else {
            return;
        };
        let now = liveness.borrow().clone();
        match now {
            Liveness::Answering => {
                if self.registry_error.take().is_some() {
                    tracing::info!(service = %self.service, "the registry answers again");
                }
            }
            Liveness::Failing(error) => {
                if self.registry_error.is_none() {
                    tracing::warn!(service = %self.service, %error, "the registry cannot be read; serving the last known set");
                }
                let since = self
                    .registry_error
                    .as_ref()
                    .map_or_else(Instant::now, |(since, _)| *since);
                self.registry_error = Some((since, error));
            }
        }
        self.publish();
    }

    /// The id of the instance at `key`, if `key` is an instance key of this service.
    fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let id = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        (!id.contains('/')).then_some(id)
    }

    /// The member a record stands for: `None` for an undecodable record (warned about),
    /// which removes that instance from views.
    fn member(&self, id: &str, pair: &KvPair, reuse: bool) -> Option<Member> {
        if reuse
            && let Some(known) = self.truth.get(id)
            && known.revision == pair.revision
        {
            return Some(known.clone());
        }
        match record::decode(&self.service, id, pair) {
            Ok(member) => Some(member),
            Err(e) => {
                tracing::warn!(key = %pair.key, error = %e, "undecodable instance record: removed from views");
                None
            }
        }
    }

    fn apply(&mut self, step: Step) {
        // Each touched id with its new state in the registry (`None`: gone).
        let mut updates: BTreeMap<String, Option<Member>> = BTreeMap::new();
        let (revision, reset) = match step {
            Step::Reset(snapshot) => {
                // Records decoded before can be reused, unless they came from the cache
                // (a restored registry can reuse revisions for other records).
                let reuse = self.cached.is_none();
                for (id, _) in self.truth.iter() {
                    updates.insert(id.clone(), None);
                }
                for pair in &snapshot.pairs {
                    if let Some(id) = self.id_of(&pair.key) {
                        updates.insert(id.to_owned(), self.member(id, pair, reuse));
                    }
                }
                (snapshot.revision, true)
            }
            Step::Revision(revision, events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(pair) => {
                            if let Some(id) = self.id_of(&pair.key) {
                                updates.insert(id.to_owned(), self.member(id, &pair, false));
                            }
                        }
                        WatchEvent::Delete { key, .. } => {
                            if let Some(id) = self.id_of(&key) {
                                updates.insert(id.to_owned(), None);
                            }
                        }
                        WatchEvent::Snapshot(_) | WatchEvent::Resync(_) => {}
                    }
                }
                (revision, false)
            }
        };

        let removed = updates
            .iter()
            .filter(|(id, update)| update.is_none() && self.truth.contains_key(*id))
            .count();
        let added = updates
            .iter()
            .filter(|(id, update)| update.is_some() && !self.truth.contains_key(*id))
            .count();
        let remaining = self.truth.size() + added - removed;
        let holding = self.protected.is_some();
        let known = if holding {
            self.baseline
        } else {
            self.served.size()
        };
        // A single removal is a crash or a deregistration and always applies; a resync,
        // or several removals in one revision, is protected.
        let protectable = reset || removed >= 2;
        let hold = protectable && removed > 0 && self.protection.violated(remaining, known);
        if hold && !holding {
            tracing::warn!(
                service = %self.service,
                known,
                remaining,
                threshold = self.protection.threshold,
                "protection: the registry lost too many instances at once; serving the last known set"
            );
            self.baseline = known;
            self.protected = Some(Instant::now());
        }

        let mut touched: Vec<String> = Vec::with_capacity(updates.len());
        for (id, update) in updates {
            match update {
                Some(member) => {
                    self.held.remove_mut(&id);
                    self.truth.insert_mut(id.clone(), member);
                }
                None => {
                    if let Some(gone) = self.truth.get(&id).cloned() {
                        self.truth.remove_mut(&id);
                        if hold {
                            self.held.insert_mut(id.clone(), gone);
                        }
                    }
                }
            }
            touched.push(id);
        }
        if self.protected.is_some() && !self.protection.violated(self.truth.size(), self.baseline) {
            tracing::info!(
                service = %self.service,
                instances = self.truth.size(),
                released = self.held.size(),
                "protection: the registry has enough instances again; serving it"
            );
            touched.extend(self.held.keys().cloned());
            self.held = Members::new_sync();
            self.protected = None;
        }

        self.revision = if reset {
            revision
        } else {
            self.revision.max(revision)
        };
        self.registry_error = None;
        if reset {
            self.cached = None;
        }
        let changes = self.serve(touched);
        if !changes.is_empty() {
            self.seq += 1;
            lock(&self.log).push(self.seq, changes.into());
            if self.cache.is_some() && self.cache_due.is_none() {
                self.cache_due = Some(Instant::now() + CACHE_WRITE_INTERVAL);
            }
        }
        self.publish();
    }

    /// Bring `served` to `truth` over `held` for the `touched` ids; the changes, by id.
    fn serve(&mut self, mut touched: Vec<String>) -> Vec<InstanceChange> {
        touched.sort_unstable();
        touched.dedup();
        let mut changes = Vec::new();
        for id in touched {
            let now = self.truth.get(&id).or_else(|| self.held.get(&id)).cloned();
            let before = self.served.get(&id).cloned();
            match (before, now) {
                (None, Some(now)) => {
                    changes.push(InstanceChange::Added {
                        instance: now.instance.clone(),
                        revision: now.revision,
                    });
                    self.served.insert_mut(id, now);
                }
                (Some(before), Some(now))
                    if before.revision != now.revision
                        || !Arc::ptr_eq(&before.instance, &now.instance) =>
                {
                    changes.push(InstanceChange::Updated {
                        instance: now.instance.clone(),
                        revision: now.revision,
                    });
                    self.served.insert_mut(id, now);
                }
                (Some(before), None) => {
                    changes.push(InstanceChange::Removed {
                        instance: before.instance,
                        revision: self.revision,
                    });
                    self.served.remove_mut(&id);
                }
                _ => {}
            }
        }
        changes
    }

    fn health(&mut self) -> Health {
        let stale = if let Some((since, revision)) = self.cached {
            let error = self.registry_error.as_ref().map(|(_, e)| e.clone());
            error.map(|error| (Cause::Cached, since, StaleError::Cached { revision, error }))
        } else {
            None
        };
        let stale = stale.or_else(|| {
            self.registry_error
                .as_ref()
                .map(|(since, e)| (Cause::Registry, *since, StaleError::Registry(e.clone())))
        });
        let stale = stale.or_else(|| {
            self.protected.map(|since| {
                (
                    Cause::Protected,
                    since,
                    StaleError::Protected {
                        known: self.baseline,
                        remaining: self.truth.size(),
                        threshold: self.protection.threshold,
                    },
                )
            })
        });
        let cause = stale.as_ref().map(|(cause, ..)| *cause);
        if cause.is_some() && cause != self.last_cause {
            self.stale_epoch += 1;
        }
        self.last_cause = cause;
        match stale {
            Some((_, since, error)) => Health::Stale { since, error },
            None => Health::Synced {
                revision: self.revision,
            },
        }
    }

    fn publish(&mut self) {
        let health = self.health();
        self.publisher.send_replace(Arc::new(Published {
            seq: self.seq,
            revision: self.revision,
            members: self.served.clone(),
            health,
            stale_epoch: self.stale_epoch,
        }));
    }

    async fn write_cache(&mut self) {
        self.cache_due = None;
        let Some(cache) = &self.cache else {
            return;
        };
        let members = self.served.values().cloned().collect();
        if let Err(e) = cache.store(self.revision, members).await {
            tracing::warn!(service = %self.service, error = %e, "cannot write the discovery cache");
        }
    }
}

/// The next step of the watch: a snapshot or resync, or every event of the next
/// revision (a backend delivers a revision's events together, so they are all ready at
/// once). `None` when the stream ended (the store closed).
///
/// Cancel-safe: the only await is for the first item.
async fn next_step(events: &mut Events) -> Option<Result<Step>> {
    let event = match events.next().await? {
        Ok(event) => event,
        Err(e) => return Some(Err(e)),
    };
    let revision = event.revision();
    let mut batch = match event {
        WatchEvent::Snapshot(snapshot) | WatchEvent::Resync(snapshot) => {
            return Some(Ok(Step::Reset(snapshot)));
        }
        event => vec![event],
    };
    let same_revision = |item: &Result<WatchEvent>| matches!(item, Ok(event @ (WatchEvent::Put(_) | WatchEvent::Delete { .. })) if event.revision() == revision);
    while let Some(Some(Ok(event))) = std::pin::Pin::new(&mut *events)
        .next_if(same_revision)
        .now_or_never()
    {
        batch.push(event);
    }
    Some(Ok(Step::Revision(revision, batch)))
}
