//! [`Discovery`]: consumers list and watch services and always hold the live instance
//! set.
//!
//! [`Discovery::watch`] reads the service's snapshot and follows the store's event watch
//! in a background task, so [`InstanceSet::instances`] is always current. Changes are
//! delivered by [`InstanceSet::next_change`] as a *diff* between what the consumer last
//! saw and the current set, so nothing is missed and nothing piles up: after a watch
//! `Resync` (history lost), the consumer gets exactly the additions, updates and
//! removals that bring it up to date — never a silent freeze (tower's `Discover`, with
//! revisions).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use kvstore_core::{Error, KvPair, Result, Store, WatchEvent, WatchFrom};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::instance::{Instance, SERVICES_PREFIX, service_prefix};

/// Looks services up on one store.
#[derive(Clone)]
pub struct Discovery {
    store: Arc<dyn Store>,
}

/// One change to a service's instance set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceChange {
    /// A new instance, written at `revision`.
    Added {
        /// The instance.
        instance: Instance,
        /// The revision of its record.
        revision: u64,
    },
    /// An instance whose record changed (status, weight, ...), written at `revision`.
    Updated {
        /// The instance as it is now.
        instance: Instance,
        /// The revision of its record.
        revision: u64,
    },
    /// An instance that left (deregistered, expired, deleted); `revision` is the store
    /// revision at which the consumer learned it.
    Removed {
        /// The instance as it was last seen.
        instance: Instance,
        /// The store revision of the set without it.
        revision: u64,
    },
}

/// The instances of a service at one store revision, keyed by instance id, with the
/// revision of each record. Records are shared (`Arc`), so the copy a change makes of a
/// view that a consumer still holds copies pointers, not records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct View {
    revision: u64,
    instances: BTreeMap<String, (Arc<Instance>, u64)>,
}

impl View {
    fn apply(&mut self, event: WatchEvent, prefix_len: usize) {
        self.revision = self.revision.max(event.revision());
        match event {
            WatchEvent::Snapshot(snapshot) | WatchEvent::Resync(snapshot) => {
                self.instances = snapshot
                    .pairs
                    .iter()
                    .filter_map(|pair| decode(pair, prefix_len))
                    .collect();
            }
            WatchEvent::Put(pair) => {
                if let Some((id, entry)) = decode(&pair, prefix_len) {
                    self.instances.insert(id, entry);
                }
            }
            WatchEvent::Delete { key, .. } => {
                self.instances
                    .remove(key.get(prefix_len..).unwrap_or_default());
            }
        }
    }
}

/// An instance from its record, keyed by id; malformed records are skipped with a
/// warning (a consumer must not fail because one provider wrote garbage).
fn decode(pair: &KvPair, prefix_len: usize) -> Option<(String, (Arc<Instance>, u64))> {
    let id = pair.key.get(prefix_len..)?;
    if id.contains('/') {
        return None;
    }
    match Instance::from_json(&pair.value) {
        Ok(instance) => Some((id.to_owned(), (Arc::new(instance), pair.revision))),
        Err(e) => {
            tracing::warn!(key = %pair.key, error = %e, "skipping a malformed instance record");
            None
        }
    }
}

impl Discovery {
    /// A discovery client reading `store` (any backend).
    pub fn new(store: Arc<dyn Store>) -> Discovery {
        Discovery { store }
    }

    /// The instances of `service` now, sorted by id.
    ///
    /// # Errors
    /// `InvalidKey` for a bad service name; the store's errors.
    pub async fn resolve(&self, service: &str) -> Result<Vec<Instance>> {
        let prefix = service_prefix(service)?;
        let prefix_len = prefix.as_str().len() + 1;
        let pairs = self.store.list(prefix.as_str()).await?;
        Ok(pairs
            .iter()
            .filter_map(|pair| decode(pair, prefix_len))
            .map(|(_, (instance, _))| Arc::unwrap_or_clone(instance))
            .collect())
    }

    /// The names of every service with at least one instance, sorted.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn list_services(&self) -> Result<Vec<String>> {
        let pairs = self.store.list(SERVICES_PREFIX).await?;
        let names: BTreeSet<String> = pairs
            .iter()
            .filter_map(|pair| {
                let rest = pair.key.strip_prefix(SERVICES_PREFIX)?.strip_prefix('/')?;
                let (service, _id) = rest.split_once('/')?;
                Some(service.to_owned())
            })
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Follow `service`: the returned set holds its current instances (already loaded)
    /// and reports every change.
    ///
    /// # Errors
    /// `InvalidKey` for a bad service name; the store's errors if the first snapshot
    /// cannot be read.
    pub async fn watch(&self, service: &str) -> Result<InstanceSet> {
        let prefix = service_prefix(service)?;
        let prefix_len = prefix.as_str().len() + 1;
        let mut events = self
            .store
            .watch_prefix_events(prefix.as_str(), WatchFrom::Snapshot)
            .await?;
        let mut view = View::default();
        match events.next().await {
            Some(Ok(snapshot)) => view.apply(snapshot, prefix_len),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::Closed {
                    backend: self.store.backend(),
                });
            }
        }
        let (publish, current) = watch::channel(Arc::new(view));
        let service_name = service.to_owned();
        let follower = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        publish.send_modify(|view| Arc::make_mut(view).apply(event, prefix_len))
                    }
                    Err(e) => {
                        tracing::warn!(service = %service_name, error = %e, "instance watch error")
                    }
                }
            }
        });
        let seen = current.borrow().clone();
        Ok(InstanceSet {
            seen,
            current,
            follower,
        })
    }
}

/// The live instance set of one service. Dropping it stops following the service.
pub struct InstanceSet {
    current: watch::Receiver<Arc<View>>,
    /// What the consumer of [`InstanceSet::next_change`] has been told so far: the view
    /// it was last brought to (shared with the follower until the next change).
    seen: Arc<View>,
    follower: JoinHandle<()>,
}

impl Drop for InstanceSet {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl InstanceSet {
    /// Every instance now (`Up` and `Draining`), sorted by id.
    pub fn instances(&self) -> Vec<Instance> {
        instances_of(&self.current.borrow())
    }

    /// The store revision the set reflects.
    pub fn revision(&self) -> u64 {
        self.current.borrow().revision
    }

    /// A cheap handle that reads the current instances from elsewhere (e.g. request
    /// handlers of a gateway), while this set is being driven for changes.
    pub fn reader(&self) -> InstanceReader {
        InstanceReader {
            current: self.current.clone(),
        }
    }

    /// The changes since the last call (the first call reports changes since
    /// [`Discovery::watch`]), waiting until there is at least one. `None` when the store
    /// has closed.
    pub async fn next_change(&mut self) -> Option<Vec<InstanceChange>> {
        loop {
            let changes = self.diff();
            if !changes.is_empty() {
                return Some(changes);
            }
            self.current.changed().await.ok()?;
        }
    }

    /// Bring `seen` up to the current view and say what changed.
    fn diff(&mut self) -> Vec<InstanceChange> {
        let view = self.current.borrow_and_update().clone();
        let mut changes = Vec::new();
        for (id, (instance, revision)) in &view.instances {
            match self.seen.instances.get(id) {
                None => changes.push(InstanceChange::Added {
                    instance: Instance::clone(instance),
                    revision: *revision,
                }),
                Some((_, seen_revision)) if seen_revision != revision => {
                    changes.push(InstanceChange::Updated {
                        instance: Instance::clone(instance),
                        revision: *revision,
                    });
                }
                Some(_) => {}
            }
        }
        for (id, (instance, _)) in &self.seen.instances {
            if !view.instances.contains_key(id) {
                changes.push(InstanceChange::Removed {
                    instance: Instance::clone(instance),
                    revision: view.revision,
                });
            }
        }
        self.seen = view;
        changes
    }
}

/// Reads the current instances of an [`InstanceSet`]; cheap to clone.
#[derive(Clone)]
pub struct InstanceReader {
    current: watch::Receiver<Arc<View>>,
}

impl InstanceReader {
    /// Every instance now (`Up` and `Draining`), sorted by id.
    pub fn instances(&self) -> Vec<Instance> {
        instances_of(&self.current.borrow())
    }
}

fn instances_of(view: &View) -> Vec<Instance> {
    view.instances
        .values()
        .map(|(instance, _)| Instance::clone(instance))
        .collect()
}
