//! The store's state, behind the store's read-write lock: data, leases, revision counter
//! and event history.
//!
//! Keys here are *physical*: the handle's area root (namespace and user/lock area) plus
//! the user key, so handles with different namespaces share one map without seeing each
//! other.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use kvstore_core::backend::Condition;
use kvstore_core::{
    Error, KvPair, LeaseId, LeaseLoss, PutOptions, Result, Txn, TxnOp, TxnResponse, TxnResult,
};
use tokio::time::Instant;

use crate::BACKEND;

/// One stored key.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub value: Bytes,
    pub revision: u64,
    pub create_revision: u64,
    pub lease: Option<LeaseId>,
}

impl Entry {
    pub(crate) fn to_pair(&self, key: String) -> KvPair {
        KvPair {
            key,
            value: self.value.clone(),
            revision: self.revision,
            create_revision: self.create_revision,
            lease: self.lease,
        }
    }
}

/// One change in the history ring: `entry` is the new state, `None` for a delete.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub revision: u64,
    pub key: String,
    pub entry: Option<Entry>,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

pub(crate) struct State {
    revision: u64,
    data: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, LeaseState>,
    /// Every live lease by deadline, so expiry checks cost O(log n), not a scan.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    next_lease: i64,
    history: VecDeque<Change>,
    history_capacity: usize,
    /// Every change at or below this revision has left the history ring.
    compacted: u64,
    closed: bool,
}

impl State {
    pub(crate) fn new(history_capacity: usize) -> State {
        State {
            revision: 0,
            data: BTreeMap::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_lease: 1,
            history: VecDeque::new(),
            history_capacity: history_capacity.max(1),
            compacted: 0,
            closed: false,
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Fails with `Closed` after shutdown.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }

    /// Whether some lease's deadline has passed by tokio's clock, so its keys must be
    /// deleted before anyone reads or writes. One look at the earliest deadline; the
    /// clock, which costs more than the rest of a read, is read only when a lease exists.
    pub(crate) fn lease_due(&self) -> bool {
        self.deadlines
            .first()
            .is_some_and(|&(deadline, _)| deadline <= Instant::now())
    }

    /// Expire every lease that is due, if any: a write calls this first, so no write ever
    /// sees an expired key, and does nothing more than [`State::lease_due`]'s one look
    /// when nothing is due.
    pub(crate) fn expire_if_due(&mut self) {
        if let Some(&(first, _)) = self.deadlines.first() {
            let now = Instant::now();
            if first <= now {
                self.expire_due(now);
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.data.get(key)
    }

    /// Every entry whose physical key starts with `start`, in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        self.data
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(start))
    }

    /// Changes newer than `after`, oldest first.
    pub(crate) fn changes_after(&self, after: u64) -> impl Iterator<Item = &Change> {
        let first = self.history.partition_point(|c| c.revision <= after);
        self.history.range(first..)
    }

    pub(crate) fn write(
        &mut self,
        key: &str,
        user_key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Entry> {
        self.check(key, user_key, condition)?;
        if let Some(id) = lease
            && !self.leases.contains_key(&id)
        {
            return Err(Error::LeaseLost {
                lease: id,
                reason: LeaseLoss::Expired,
            });
        }
        let revision = self.next_revision();
        Ok(self.put_at(revision, key, value, lease))
    }

    /// Write `key` at `revision` (already taken), attached to `lease` (known to exist).
    fn put_at(&mut self, revision: u64, key: &str, value: Bytes, lease: Option<LeaseId>) -> Entry {
        let previous = self.data.get(key);
        let create_revision = previous.map_or(revision, |e| e.create_revision);
        if let Some(old) = previous.and_then(|e| e.lease) {
            self.detach(old, key);
        }
        if let Some(id) = lease
            && let Some(state) = self.leases.get_mut(&id)
        {
            state.keys.insert(key.to_owned());
        }
        let entry = Entry {
            value,
            revision,
            create_revision,
            lease,
        };
        self.data.insert(key.to_owned(), entry.clone());
        self.record(revision, key.to_owned(), Some(entry.clone()));
        entry
    }

    pub(crate) fn remove(
        &mut self,
        key: &str,
        user_key: &str,
        condition: Condition,
    ) -> Result<Option<u64>> {
        self.check(key, user_key, condition)?;
        if !self.data.contains_key(key) {
            return Ok(None);
        }
        let revision = self.next_revision();
        self.delete_at(revision, key);
        Ok(Some(revision))
    }

    /// Apply `txn` (validated by core) at one revision: compare, then apply the chosen
    /// branch; `physical` maps a user key to this handle's physical key.
    pub(crate) fn txn(
        &mut self,
        txn: &Txn,
        physical: &dyn Fn(&str) -> String,
    ) -> Result<TxnResponse> {
        let succeeded = txn.compares().iter().all(|compare| {
            let current = self
                .data
                .get(&physical(&compare.key))
                .map(|entry| entry.to_pair(compare.key.clone()));
            compare.holds(current.as_ref())
        });
        let branch = txn.branch(succeeded);
        // Check every lease before the first write: nothing is half-applied.
        for op in branch {
            if let TxnOp::Put {
                options: PutOptions {
                    lease: Some(id), ..
                },
                ..
            } = op
                && !self.leases.contains_key(id)
            {
                return Err(Error::LeaseLost {
                    lease: *id,
                    reason: LeaseLoss::Expired,
                });
            }
        }
        let writes = branch.iter().any(|op| !matches!(op, TxnOp::Get { .. }));
        let revision = if writes {
            self.next_revision()
        } else {
            self.revision
        };
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            let key = physical(op.key());
            results.push(match op {
                TxnOp::Get { key: user_key } => {
                    TxnResult::Get(self.data.get(&key).map(|e| e.to_pair(user_key.clone())))
                }
                TxnOp::Delete { .. } => {
                    let deleted = self.data.contains_key(&key);
                    self.delete_at(revision, &key);
                    TxnResult::Delete { deleted }
                }
                TxnOp::Put {
                    key: user_key,
                    value,
                    options,
                } => {
                    let entry = self.put_at(revision, &key, value.clone(), options.lease);
                    TxnResult::Put(entry.to_pair(user_key.clone()))
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            results,
        })
    }

    pub(crate) fn remove_range(&mut self, start: &str) -> Option<u64> {
        let keys: Vec<String> = self.range(start).map(|(k, _)| k.clone()).collect();
        self.delete_all(keys)
    }

    pub(crate) fn grant(&mut self, ttl: Duration, now: Instant) -> LeaseId {
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let deadline = now + ttl;
        self.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        id
    }

    pub(crate) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration> {
        let lease = self.leases.get_mut(&id).ok_or(Error::LeaseLost {
            lease: id,
            reason: LeaseLoss::Expired,
        })?;
        self.deadlines.remove(&(lease.deadline, id));
        lease.deadline = now + lease.ttl;
        self.deadlines.insert((lease.deadline, id));
        Ok(lease.ttl)
    }

    pub(crate) fn revoke(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.remove(&id) {
            self.deadlines.remove(&(lease.deadline, id));
            self.delete_all(lease.keys.into_iter().collect());
        }
    }

    /// The earliest lease deadline, for the reaper.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Expire every lease whose deadline has passed, each at its own revision, oldest
    /// deadline first.
    fn expire_due(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.revoke(id);
        }
    }

    /// Close the store: revoke every lease (their keys are deleted, as on a server) and
    /// refuse every later call.
    pub(crate) fn close(&mut self) {
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            self.revoke(id);
        }
        self.closed = true;
    }

    /// Drop all history up to the current revision (etcd `Compact`).
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.revision;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    fn check(&self, key: &str, user_key: &str, condition: Condition) -> Result<()> {
        let current = self.data.get(key);
        match (condition, current) {
            (Condition::Always, _) | (Condition::Absent, None) => Ok(()),
            (Condition::Absent, Some(_)) => Err(Error::KeyExists {
                key: user_key.to_owned(),
            }),
            (Condition::Revision(_), None) => Err(Error::KeyNotFound {
                key: user_key.to_owned(),
            }),
            (Condition::Revision(expected), Some(entry)) if entry.revision != expected => {
                Err(Error::KeyModified {
                    key: user_key.to_owned(),
                    expected,
                    actual: entry.revision,
                })
            }
            (Condition::Revision(_), Some(_)) => Ok(()),
        }
    }

    fn delete_all(&mut self, keys: Vec<String>) -> Option<u64> {
        if keys.is_empty() {
            return None;
        }
        let revision = self.next_revision();
        for key in keys {
            self.delete_at(revision, &key);
        }
        Some(revision)
    }

    fn delete_at(&mut self, revision: u64, key: &str) {
        if let Some(entry) = self.data.remove(key) {
            if let Some(id) = entry.lease {
                self.detach(id, key);
            }
            self.record(revision, key.to_owned(), None);
        }
    }

    fn detach(&mut self, lease: LeaseId, key: &str) {
        if let Some(state) = self.leases.get_mut(&lease) {
            state.keys.remove(key);
        }
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, revision: u64, key: String, entry: Option<Entry>) {
        if self.history.len() == self.history_capacity
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = self.compacted.max(dropped.revision);
        }
        self.history.push_back(Change {
            revision,
            key,
            entry,
        });
    }
}
