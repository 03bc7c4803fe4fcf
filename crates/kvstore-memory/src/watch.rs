//! Watches on the memory store: each watcher keeps its position (the last revision it
//! has seen) and reads newer changes from the shared history ring when woken. No
//! per-watcher queue, so a slow watcher costs nothing until it reads; if the ring has
//! dropped a change it has not seen, it gets a `Resync`.
//!
//! Watchers are woken only for their own keys. Each registers a [`Slot`] in the store's
//! [`Registry`], indexed by the physical key it watches or the physical string every key
//! below its prefix starts with. After each write, the writer walks the changed keys and,
//! for each, looks up the key itself and every ancestor prefix (the key up to each `/`),
//! so a write costs a few hash lookups per changed key however many watchers sit
//! elsewhere. A slot records the first revision that touched its target since the
//! watcher last read: a watcher that was not woken while unrelated writes overflowed the
//! ring knows it lost nothing, and one whose own change left the ring knows to resync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kvstore_core::backend::{EventBatchStream, WatchTarget};
use kvstore_core::{KvPair, Result, Snapshot, WatchEvent, WatchFrom};
use tokio::sync::Notify;

use crate::state::State;
use crate::store::{MemoryStore, Shared};

/// What one watcher is told by writers: wake up, and since when.
#[derive(Default)]
pub(crate) struct Slot {
    /// Wakes the watcher; a wake-up sent while it is not waiting is kept as a permit,
    /// so none is lost between its read and its wait.
    notify: Notify,
    /// The revision of the first change to the watcher's target since it last read, 0
    /// for none. Set by writers and taken by the watcher, both under the state lock.
    first_unseen: AtomicU64,
}

impl Slot {
    /// A change at `revision` touched this watcher's target.
    fn touch(&self, revision: u64) {
        // Only the first since the last read counts: a later one cannot be older.
        let _ =
            self.first_unseen
                .compare_exchange(0, revision, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// The first unseen revision (0 for none), which is now seen.
    fn take_first_unseen(&self) -> u64 {
        self.first_unseen.swap(0, Ordering::AcqRel)
    }
}

/// The watchers of one target, by registration id.
type Slots = HashMap<u64, Arc<Slot>>;

/// Where a watcher is indexed: a physical key, or the physical start of a prefix (the
/// handle's root plus [`kvstore_core::Prefix::key_start`], so it always ends in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Index {
    Key(String),
    Prefix(String),
}

/// Every live watcher of a store, indexed by what it watches.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: u64,
    keys: HashMap<String, Slots>,
    prefixes: HashMap<String, Slots>,
}

impl Registry {
    fn register(&mut self, index: &Index) -> (u64, Arc<Slot>) {
        let id = self.next_id;
        self.next_id += 1;
        let slot = Arc::new(Slot::default());
        let (map, target) = self.map(index);
        map.entry(target.to_owned())
            .or_default()
            .insert(id, slot.clone());
        (id, slot)
    }

    fn unregister(&mut self, index: &Index, id: u64) {
        let (map, target) = self.map(index);
        if let Some(slots) = map.get_mut(target) {
            slots.remove(&id);
            if slots.is_empty() {
                map.remove(target);
            }
        }
    }

    fn map<'a>(&'a mut self, index: &'a Index) -> (&'a mut HashMap<String, Slots>, &'a str) {
        match index {
            Index::Key(key) => (&mut self.keys, key),
            Index::Prefix(start) => (&mut self.prefixes, start),
        }
    }

    /// Whether no watcher is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.prefixes.is_empty()
    }

    /// Tell the watchers of physical `key` (of the key itself, or of a prefix above it)
    /// that it changed at `revision`.
    pub(crate) fn touch(&self, key: &str, revision: u64) {
        if let Some(slots) = self.keys.get(key) {
            slots.values().for_each(|slot| slot.touch(revision));
        }
        if self.prefixes.is_empty() {
            return;
        }
        // Every prefix start ends in `/`, so the ones above `key` are `key` cut after
        // each of its `/` (cutting after an ASCII byte stays on a char boundary).
        for (end, _) in key.match_indices('/') {
            if let Some(slots) = self.prefixes.get(&key[..=end]) {
                slots.values().for_each(|slot| slot.touch(revision));
            }
        }
    }

    /// Tell every watcher that anything may have changed from `revision` on: for a write
    /// whose own changes overflowed the history ring before they could be looked at.
    pub(crate) fn touch_all(&self, revision: u64) {
        self.slots().for_each(|slot| slot.touch(revision));
    }

    /// Wake every watcher without reporting a change, so each rereads the state (after
    /// `close`, to end its stream).
    pub(crate) fn wake_all(&self) {
        self.slots().for_each(|slot| slot.notify.notify_one());
    }

    fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.keys
            .values()
            .chain(self.prefixes.values())
            .flat_map(HashMap::values)
    }
}

/// Lock `registry`; a panic while holding it cannot leave a map half-updated in a way
/// that matters (at worst a wake-up is missing for a watcher being dropped), so a
/// poisoned lock is still usable.
pub(crate) fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Watcher {
    shared: Arc<Shared>,
    root: Arc<str>,
    target: WatchTarget,
    index: Index,
    id: u64,
    slot: Arc<Slot>,
    /// Revision up to which this watcher has seen everything; `None` before the
    /// snapshot has been sent.
    position: Option<u64>,
    /// Whether the slot has tracked every change since `position`: false until the
    /// first read, since changes between a `WatchFrom::After` revision and the
    /// registration were never reported to it.
    tracked: bool,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        lock(&self.shared.watchers).unregister(&self.index, self.id);
    }
}

/// A watch of `target` on `store`'s handle. It registers at once, before its first
/// read, so no write falls between what it reads first and what it is woken for.
pub(crate) fn subscribe(
    store: &MemoryStore,
    target: WatchTarget,
    from: WatchFrom,
) -> EventBatchStream {
    let shared = store.shared().clone();
    let root = store.root().clone();
    let index = match &target {
        WatchTarget::Key(key) => Index::Key(format!("{root}{key}")),
        WatchTarget::Prefix(prefix) => Index::Prefix(format!("{root}{}", prefix.key_start())),
    };
    let (id, slot) = lock(&shared.watchers).register(&index);
    let watcher = Watcher {
        shared,
        root,
        target,
        index,
        id,
        slot,
        position: match from {
            WatchFrom::Snapshot => None,
            WatchFrom::After(revision) => Some(revision),
        },
        tracked: false,
    };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let batch = watcher.next_batch().await?;
        Some((batch, watcher))
    })
    .boxed()
}

impl Watcher {
    /// The next non-empty batch, or `None` once the store is closed.
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        loop {
            let shared = self.shared.clone();
            match shared.read(|state| self.read(state)) {
                Err(_closed) => return None,
                Ok(batch) if !batch.is_empty() => return Some(Ok(batch)),
                Ok(_) => {}
            }
            // A write between the read above and this wait left a permit: no loss.
            self.slot.notify.notified().await;
        }
    }

    fn read(&mut self, state: &State) -> Vec<WatchEvent> {
        let current = state.revision();
        let touched = self.slot.take_first_unseen();
        let batch = match self.position {
            None => vec![WatchEvent::Snapshot(self.snapshot(state))],
            Some(position) if self.lost(position, touched, state) => {
                vec![WatchEvent::Resync(self.snapshot(state))]
            }
            // Nothing touched the target since the last read: nothing to look for.
            Some(_) if self.tracked && touched == 0 => Vec::new(),
            Some(position) => state
                .changes_after(position)
                .filter_map(|change| {
                    let key = change.key.strip_prefix(&*self.root)?;
                    if !self.target.matches(key) {
                        return None;
                    }
                    Some(match &change.entry {
                        Some(entry) => WatchEvent::Put(entry.to_pair(key.to_owned())),
                        None => WatchEvent::Delete {
                            key: key.to_owned(),
                            revision: change.revision,
                        },
                    })
                })
                .collect(),
        };
        self.position = Some(current.max(self.position.unwrap_or(0)));
        self.tracked = true;
        batch
    }

    /// Whether a change to the target after `position` has left the history ring.
    /// `touched` is the first change to the target since the last read (0 for none).
    fn lost(&self, position: u64, touched: u64, state: &State) -> bool {
        if self.tracked && touched > position {
            // The first unseen change to the target is the oldest one that matters.
            touched <= state.compacted()
        } else if self.tracked && touched == 0 {
            false
        } else {
            // Not tracked since `position` (the first read of a `WatchFrom::After`, or
            // a resume point beyond what was current): any loss past it counts.
            position < state.compacted()
        }
    }

    fn snapshot(&self, state: &State) -> Snapshot {
        let pairs: Vec<KvPair> = match &self.target {
            WatchTarget::Key(key) => state
                .get(&format!("{}{key}", self.root))
                .map(|e| e.to_pair(key.to_string()))
                .into_iter()
                .collect(),
            WatchTarget::Prefix(prefix) => {
                let start = format!("{}{}", self.root, prefix.key_start());
                state
                    .range(&start)
                    .map(|(k, e)| e.to_pair(k[self.root.len()..].to_owned()))
                    .collect()
            }
        };
        Snapshot {
            revision: state.revision(),
            pairs,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures::{FutureExt, StreamExt};
    use kvstore_core::backend::{Backend, Condition, WatchTarget};
    use kvstore_core::{Prefix, PutOptions, Store, WatchEvent, WatchFrom};
    use tokio::time::Instant;

    use crate::MemoryStore;

    /// A watcher that rereads with a leftover wake-up (no change reported) at the moment
    /// a lease under its prefix is due, before any reaper or other call has expired it,
    /// expires the lease itself and still delivers the delete. The lease is granted on
    /// the state directly, so no reaper exists to get there first.
    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_finds_a_lease_due_delivers_its_deletes() {
        let store = MemoryStore::new();
        let prefix = Prefix::new("s").expect("prefix");
        let mut events = Backend::watch(&store, WatchTarget::Prefix(prefix), WatchFrom::Snapshot)
            .await
            .expect("watch");
        assert!(matches!(
            events.next().await,
            Some(Ok(batch)) if matches!(batch.as_slice(), [WatchEvent::Snapshot(_)])
        ));
        let physical = format!("{}s/ttl", store.root());
        let written = store
            .shared()
            .write(|state| {
                let lease = state.grant(Duration::from_secs(1), Instant::now());
                state.write(
                    &physical,
                    "s/ttl",
                    Bytes::from_static(b"t"),
                    Condition::Always,
                    Some(lease),
                )
            })
            .expect("write");
        // The second write while the watcher waits leaves a wake-up it does not use.
        Store::put(
            &store,
            "s/a",
            Bytes::from_static(b"a"),
            PutOptions::default(),
        )
        .await
        .expect("put");
        assert!(matches!(
            events.next().now_or_never(),
            Some(Some(Ok(batch))) if batch.len() == 2
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        let Some(Some(Ok(batch))) = events.next().now_or_never() else {
            panic!("the expiry's delete is delivered at once");
        };
        assert_eq!(
            batch,
            vec![WatchEvent::Delete {
                key: "s/ttl".to_owned(),
                revision: written.revision + 2,
            }]
        );
    }
}
