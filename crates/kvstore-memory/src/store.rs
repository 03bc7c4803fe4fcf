//! [`MemoryStore`]: the handle users clone, and its [`Backend`] implementation.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{Backend, Condition, EventBatchStream, LeaseGrant, WatchTarget};
use kvstore_core::{
    Capabilities, Key, KvPair, LeaseId, Prefix, Result, Txn, TxnResponse, WatchFrom,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::state::State;
use crate::watch::Registry;

/// The largest value accepted by default: 1.5 MiB, etcd's default request limit, so code
/// tested on memory does not break on etcd.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1536 * 1024;

/// How many changes the history ring keeps by default. A watcher that falls further
/// behind gets a `Resync` instead of the store holding unbounded memory.
pub const DEFAULT_HISTORY_CAPACITY: usize = 10_000;

/// Options for [`MemoryStore::with_config`]. `#[non_exhaustive]`: start from
/// `MemoryConfig::default()` and set fields. With the `serde` feature it deserializes,
/// missing fields taking their defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct MemoryConfig {
    /// The root prefix of the handle's keys; handles with different namespaces on one
    /// store never see each other's keys. Default: empty.
    pub namespace: String,
    /// Values larger than this many bytes are rejected. Default
    /// [`DEFAULT_MAX_VALUE_SIZE`].
    pub max_value_size: usize,
    /// How many changes the history ring keeps (at least 1). Default
    /// [`DEFAULT_HISTORY_CAPACITY`].
    pub history_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            namespace: String::new(),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            history_capacity: DEFAULT_HISTORY_CAPACITY,
        }
    }
}

/// The state shared by every handle of one store.
///
/// Reads (`get`, `list`, watch reads) share the state's lock; writes, lease expiry and
/// `close` take it exclusively. Lock order: `state`, then `watchers`.
pub(crate) struct Shared {
    state: RwLock<State>,
    /// Every live watcher, indexed by its target; writers wake only the watchers of the
    /// keys they changed.
    pub watchers: Mutex<Registry>,
    /// Wakes the reaper when lease deadlines change.
    deadlines: Arc<Notify>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    /// Cancelled when the store is closed ([`Backend::closing`]).
    pub(crate) closing: CancellationToken,
    max_value_size: usize,
}

impl Shared {
    /// Run `f` on the open state under the shared lock: reads on many threads proceed
    /// together. `Closed` after shutdown.
    ///
    /// No read sees an expired key: if a lease is due, the read takes the exclusive
    /// lock instead and expires it first (at its own revision, waking its watchers, as
    /// the reaper would), so reads stay consistent with the revision they report.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T> {
        {
            let state = self.read_state();
            state.check_open()?;
            if !state.lease_due() {
                return Ok(f(&state));
            }
        }
        self.write(|state| Ok(f(state)))
    }

    /// Run `f` on the open state under the exclusive lock, after expiring due leases, and
    /// wake the watchers of every key changed meanwhile. `Closed` after shutdown.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut state = self.write_state();
        state.check_open()?;
        let before = state.revision();
        state.expire_if_due();
        // Tell the watchers of expired keys before `f` runs: `f` may be a watcher's own
        // read, which must see that its keys changed.
        self.publish(&state, before);
        let before = state.revision();
        let outcome = f(&mut state);
        self.publish(&state, before);
        outcome
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written in a way a
        // later reader could observe (every mutation completes before returning), so a
        // poisoned lock is still usable.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        // As in `read_state`: a poisoned lock is still usable.
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wake the watchers of every key changed after revision `before`. Called with the
    /// exclusive lock held, so each woken watcher's next read sees the change.
    fn publish(&self, state: &State, before: u64) {
        if state.revision() == before {
            return;
        }
        let watchers = crate::watch::lock(&self.watchers);
        if watchers.is_empty() {
            return;
        }
        if state.compacted() > before {
            // This write alone overflowed the history ring: the keys of the changes it
            // dropped are unknown, so every watcher may have lost one.
            watchers.touch_all(before + 1);
            return;
        }
        for change in state.changes_after(before) {
            watchers.touch(&change.key, change.revision);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get_mut().ok().and_then(Option::take) {
            reaper.abort();
        }
    }
}

/// The in-memory store. Cloning gives another handle on the same store.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    /// Physical prefix of this handle's keys: area marker, namespace, `/`.
    root: Arc<str>,
    namespace: Arc<str>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

const USER_AREA: &str = "kv";
const LOCK_AREA: &str = "lock";

impl MemoryStore {
    /// A new, empty store with the default [`MemoryConfig`].
    pub fn new() -> MemoryStore {
        MemoryStore::with_config(MemoryConfig::default())
    }

    /// A new, empty store.
    pub fn with_config(config: MemoryConfig) -> MemoryStore {
        let shared = Arc::new(Shared {
            state: RwLock::new(State::new(config.history_capacity)),
            watchers: Mutex::new(Registry::default()),
            deadlines: Arc::new(Notify::new()),
            reaper: Mutex::new(None),
            closing: CancellationToken::new(),
            max_value_size: config.max_value_size,
        });
        MemoryStore::handle(shared, USER_AREA, config.namespace.trim_matches('/'))
    }

    /// Another handle on the same store whose keys live under `namespace` instead.
    pub fn with_namespace(&self, namespace: &str) -> MemoryStore {
        MemoryStore::handle(self.shared.clone(), USER_AREA, namespace.trim_matches('/'))
    }

    fn handle(shared: Arc<Shared>, area: &str, namespace: &str) -> MemoryStore {
        MemoryStore {
            shared,
            root: format!("{area}:{namespace}/").into(),
            namespace: namespace.into(),
        }
    }

    /// Drop the watch history up to the current revision, as etcd's `Compact`: a watcher
    /// resuming from an older revision then receives a `Resync`. Affects every handle.
    ///
    /// # Errors
    /// `Closed` after `close()`.
    pub fn compact(&self) -> Result<()> {
        // Not `Shared::write`: a due lease is left to the next call, so no change made
        // here is compacted away before its watchers are told.
        let mut state = self.shared.write_state();
        state.check_open()?;
        state.compact();
        Ok(())
    }

    /// Hold the store's shared (read) lock until the returned guard is dropped. Not part
    /// of the API: for tests showing that reads on other threads proceed meanwhile.
    #[doc(hidden)]
    pub fn read_lock_for_tests(&self) -> impl Sized + '_ {
        self.shared.read_state()
    }

    fn physical(&self, key: &str) -> String {
        let mut physical = String::with_capacity(self.root.len() + key.len());
        physical.push_str(&self.root);
        physical.push_str(key);
        physical
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn root(&self) -> &Arc<str> {
        &self.root
    }

    /// Run `f` on the open state under the exclusive lock and wake the watchers of the
    /// keys it changed.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.shared.write(f)
    }

    /// Start the lease reaper if it is not running. It holds only a weak reference, so
    /// it ends with the store.
    fn ensure_reaper(&self) {
        let mut reaper = self
            .shared
            .reaper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if reaper.is_none() {
            let weak = Arc::downgrade(&self.shared);
            let deadlines = self.shared.deadlines.clone();
            *reaper = Some(tokio::spawn(reap(weak, deadlines)));
        }
    }
}

/// Delete the keys of expired leases when their deadline passes, so watchers see expiry
/// even when nobody reads.
async fn reap(shared: Weak<Shared>, deadlines: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let state = shared.read_state();
            if state.is_closed() {
                return;
            }
            state.next_deadline()
        };
        match next {
            Some(deadline) => tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = deadlines.notified() => {}
            },
            None => deadlines.notified().await,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Expires what is due and wakes its watchers; `Closed` ends the reaper.
        if shared.write(|_| Ok(())).is_err() {
            return;
        }
    }
}

#[async_trait]
impl Backend for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all(self.shared.max_value_size)
    }

    fn lock_area(&self) -> Option<Self> {
        Some(MemoryStore::handle(
            self.shared.clone(),
            LOCK_AREA,
            &self.namespace,
        ))
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        let physical = self.physical(key.as_str());
        self.shared.read(|state| {
            state
                .get(&physical)
                .map(|e| e.to_pair(key.as_str().to_owned()))
        })
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        let start = self.physical(&prefix.key_start());
        self.shared.read(|state| {
            state
                .range(&start)
                .map(|(k, e)| e.to_pair(k[self.root.len()..].to_owned()))
                .collect()
        })
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        let physical = self.physical(key.as_str());
        self.mutate(|state| state.write(&physical, key.as_str(), value, condition, lease))
            .map(|entry| entry.to_pair(key.as_str().to_owned()))
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        let physical = self.physical(key.as_str());
        self.mutate(|state| state.remove(&physical, key.as_str(), condition))
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = self.physical(&prefix.key_start());
        self.mutate(|state| Ok(state.remove_range(&start)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        let id = self.mutate(|state| Ok(state.grant(ttl, Instant::now())))?;
        self.ensure_reaper();
        self.shared.deadlines.notify_one();
        Ok(LeaseGrant { id, ttl })
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        let ttl = self.mutate(|state| state.keep_alive(lease, Instant::now()))?;
        self.shared.deadlines.notify_one();
        Ok(ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.mutate(|state| {
            state.revoke(lease);
            Ok(())
        })
    }

    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let physical = |key: &str| self.physical(key);
        self.mutate(|state| state.txn(txn, &physical))
    }

    async fn watch(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        self.shared.read(|_| ())?;
        Ok(crate::watch::subscribe(self, target, from))
    }

    async fn close(&self) -> Result<()> {
        self.shared.closing.cancel();
        let mut state = self.shared.write_state();
        let before = state.revision();
        state.close();
        self.shared.publish(&state, before);
        // Wake every watcher so its stream ends, even if closing wrote nothing.
        crate::watch::lock(&self.shared.watchers).wake_all();
        drop(state);
        if let Some(reaper) = self
            .shared
            .reaper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            reaper.abort();
        }
        Ok(())
    }

    fn closing(&self) -> Option<CancellationToken> {
        Some(self.shared.closing.clone())
    }
}
