//! Distributed locks with fencing tokens ([contract §6](crate::contract#6-locks)), written once for every backend.
//!
//! The recipe is etcd `clientv3/concurrency`'s mutex: each contender grants a lease and
//! creates a waiter key `lock/{lock key}/{lease id}` in the store's lock area (outside
//! the user key space); waiters are served in order of their keys' create revisions, and
//! each one watches only its predecessor's key, so a release wakes exactly one waiter. The holder
//! then writes the lock's value at the user key on the same lease (libkv: the value is
//! visible while the lock is held). Revoking the lease releases everything at one
//! revision; a dead holder's lease expires after its TTL.
//!
//! The fencing token is the create revision of the holder's waiter key: successive
//! holders of one key get strictly increasing tokens, so a resource can reject writes
//! from a holder that has been replaced.

use std::fmt;
use std::sync::Arc;

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{Lease, LeaseLoss};
use crate::options::{LockOptions, PutOptions};
use crate::pair::KvPair;
use crate::store::Store;

/// A lock on one key, created by [`crate::Store::new_lock`]. [`Locker::lock`] may be
/// called again after the previous guard is released.
pub struct Locker {
    store: Arc<dyn Store>,
    area: Arc<dyn Store>,
    key: Key,
    options: LockOptions,
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("key", &self.key)
            .field("ttl", &self.options.ttl)
            .finish_non_exhaustive()
    }
}

/// A held lock. Renews its lease while it lives; [`LockGuard::unlock`] or dropping it
/// releases the lock.
pub struct LockGuard {
    key: Key,
    lease: Lease,
    fencing_token: u64,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .finish_non_exhaustive()
    }
}

impl Locker {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        area: Arc<dyn Store>,
        key: Key,
        options: LockOptions,
    ) -> Locker {
        Locker {
            store,
            area,
            key,
            options,
        }
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// Wait until the lock is acquired and return its guard. Cancel by dropping the
    /// future (e.g. with `tokio::time::timeout`): the waiter's lease is then revoked.
    ///
    /// # Errors
    /// [`Error::LockLost`] if the lease ends while waiting; any error of the store
    /// (`Unavailable`, `Closed`, ...).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call holds nothing. Its lease is revoked in the background
    /// (it expires after the TTL when the store cannot be reached), which deletes its
    /// waiter key and, if the lock had just been taken, the lock's value, so the next
    /// waiter gets its turn.
    pub async fn lock(&self) -> Result<LockGuard> {
        let lease = self.store.grant_lease(self.options.ttl).await?;
        let queue = Queue::new(self.area.clone(), LOCK_QUEUES, &self.key)?;
        let mine = queue.join(&lease, bytes::Bytes::new()).await?;
        queue
            .wait_for_turn(&mine, &lease, self.key.as_str())
            .await?;
        self.store
            .put(
                self.key.as_str(),
                self.options.value.clone(),
                PutOptions::with_lease(lease.id()),
            )
            .await?;
        Ok(LockGuard {
            key: self.key.clone(),
            lease,
            fencing_token: mine.create_revision,
        })
    }
}

/// Where lock waiters queue in the lock area: `lock/{key}/{lease}`.
const LOCK_QUEUES: &str = "lock";

/// A queue of contenders for one lock or election, in the store's lock area: each has a
/// key `{queue}/{lease}` on its own lease, and they are served in the order of those
/// keys' create revisions (etcd `concurrency`'s recipe).
pub(crate) struct Queue {
    area: Arc<dyn Store>,
    prefix: Key,
}

impl Queue {
    /// The queue `{kind}/{name}` of the lock area.
    pub(crate) fn new(area: Arc<dyn Store>, kind: &str, name: &Key) -> Result<Queue> {
        Ok(Queue {
            area,
            prefix: Key::new(kind)?.join(name.as_str())?,
        })
    }

    /// The queue's prefix in the lock area.
    pub(crate) fn prefix(&self) -> &Key {
        &self.prefix
    }

    /// Enter the queue with `value`, on `lease`.
    pub(crate) async fn join(&self, lease: &Lease, value: bytes::Bytes) -> Result<KvPair> {
        let mine = self.prefix.join(&lease.id().to_string())?;
        self.area
            .atomic_put(
                mine.as_str(),
                value,
                None,
                PutOptions::with_lease(lease.id()),
            )
            .await
    }

    /// Wait until `mine` is first in line, watching only the contender just ahead.
    ///
    /// # Errors
    /// [`Error::LockLost`] naming `name` when `mine` leaves the queue or its lease ends
    /// while waiting; the store's errors.
    pub(crate) async fn wait_for_turn(
        &self,
        mine: &KvPair,
        lease: &Lease,
        name: &str,
    ) -> Result<()> {
        let lost = |reason| Error::LockLost {
            key: name.to_owned(),
            reason,
        };
        loop {
            let Some(predecessor) = self.predecessor(mine, name).await? else {
                return Ok(());
            };
            tokio::select! {
                reason = lease.lost() => return Err(lost(reason)),
                gone = self.wait_deleted(&predecessor) => gone?,
            }
        }
    }

    /// The contenders in line, first first: only this queue's own (`prefix/<lease>`),
    /// not those of queues below it.
    pub(crate) fn in_line(&self, contenders: Vec<KvPair>) -> Vec<KvPair> {
        let mut queue: Vec<KvPair> = contenders
            .into_iter()
            .filter(|w| {
                w.key
                    .get(self.prefix.as_str().len() + 1..)
                    .is_some_and(|lease| !lease.contains('/'))
            })
            .collect();
        queue.sort_by_key(|w| w.create_revision);
        queue
    }

    /// The contender just ahead of `mine`, or `None` when `mine` is first in line.
    async fn predecessor(&self, mine: &KvPair, name: &str) -> Result<Option<String>> {
        let queue = self.in_line(self.area.list(self.prefix.as_str()).await?);
        if !queue.iter().any(|w| w.key == mine.key) {
            return Err(Error::LockLost {
                key: name.to_owned(),
                reason: LeaseLoss::Expired,
            });
        }
        Ok(queue
            .iter()
            .take_while(|w| w.create_revision < mine.create_revision)
            .last()
            .map(|w| w.key.clone()))
    }

    async fn wait_deleted(&self, contender: &str) -> Result<()> {
        let mut states = self.area.watch(contender).await?;
        while let Some(state) = states.next().await {
            if state?.is_none() {
                return Ok(());
            }
        }
        Err(Error::Closed {
            backend: self.area.backend(),
        })
    }
}

impl LockGuard {
    /// The fencing token: the create revision of this holder's waiter key, strictly
    /// greater than every earlier holder's token for the same key. Pass it to the
    /// resource the lock protects so it can reject a replaced holder.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        self.key.as_str()
    }

    /// Resolves if the lock's lease is lost (the lock may then be held by another).
    pub async fn lost(&self) -> LeaseLoss {
        self.lease.lost().await
    }

    /// Release the lock: the user key and the waiter key are deleted at one revision.
    ///
    /// # Errors
    /// The store's error if the release could not be sent; the lock is then freed when
    /// its TTL runs out.
    pub async fn unlock(self) -> Result<()> {
        self.lease.revoke().await
    }

    /// Stop renewing without releasing, as if this holder had crashed: the lock frees
    /// itself after its TTL. For fault tests and hand-over on process exit.
    pub fn abandon(self) {
        self.lease.abandon();
    }
}
