//! Leader election ([contract §11](crate::contract#11-leader-election)), etcd `concurrency.Election` on the lock recipe.
//!
//! Each candidate grants a lease and enters the election's queue in the store's lock area
//! (`election/{name}/{lease id}`, outside the user keys) with its value; the candidate
//! whose key was created first leads, and each other candidate watches only the one just
//! ahead of it. A leader that resigns, or whose lease ends (it crashed: after its TTL),
//! leaves the queue and the next candidate leads. The leader's fencing token is the
//! create revision of its key, strictly increasing across successive leaders.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kvstore_core::Error> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use kvstore_core::{ElectionOptions, Store};
//!
//! let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! let election = store.new_election("scheduler", ElectionOptions::default())?;
//! let leadership = election.campaign(Bytes::from("node-1")).await?;
//! assert_eq!(election.leader().await?.unwrap().value, "node-1");
//! leadership.proclaim(Bytes::from("node-1 (draining)")).await?;
//! leadership.resign().await?;
//! assert_eq!(election.leader().await?, None);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{Lease, LeaseLoss};
use crate::lock::Queue;
use crate::options::{DEFAULT_LOCK_TTL, PutOptions};
use crate::pair::KvPair;
use crate::store::Store;

/// Where candidates queue in the lock area: `election/{name}/{lease}`.
const ELECTION_QUEUES: &str = "election";

/// Options for [`crate::Store::new_election`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionOptions {
    /// The TTL of each candidate's lease: renewed while it campaigns or leads, so a
    /// leader that dies is replaced after at most this long. Default 15 s
    /// ([`DEFAULT_LOCK_TTL`]; etcd's `concurrency` sessions default to 60 s).
    pub ttl: Duration,
}

impl Default for ElectionOptions {
    fn default() -> Self {
        ElectionOptions {
            ttl: DEFAULT_LOCK_TTL,
        }
    }
}

/// One election, created by [`crate::Store::new_election`]: campaign, read and observe
/// its leader.
pub struct Election {
    store: Arc<dyn Store>,
    area: Arc<dyn Store>,
    name: Key,
    options: ElectionOptions,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("ttl", &self.options.ttl)
            .finish_non_exhaustive()
    }
}

/// Leading an election. Renews its lease while it lives; [`Leadership::resign`] or
/// dropping it steps down.
pub struct Leadership {
    name: Key,
    area: Arc<dyn Store>,
    lease: Lease,
    /// The leader's key in the lock area, with its current value and revision.
    pair: Mutex<KvPair>,
    fencing_token: u64,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("fencing_token", &self.fencing_token)
            .finish_non_exhaustive()
    }
}

impl Election {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        area: Arc<dyn Store>,
        name: Key,
        options: ElectionOptions,
    ) -> Election {
        Election {
            store,
            area,
            name,
            options,
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    fn queue(&self) -> Result<Queue> {
        Queue::new(self.area.clone(), ELECTION_QUEUES, &self.name)
    }

    /// Become a candidate with `value` and wait until elected (etcd `Campaign`).
    /// Candidates are elected in the order they campaigned. Cancel by dropping the future
    /// (e.g. with `tokio::time::timeout`): the candidacy's lease is then revoked.
    ///
    /// # Errors
    /// `ValueTooLarge`; [`Error::LockLost`] if the candidacy's lease ends while waiting;
    /// the store's errors.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`crate::Locker::lock`]: a dropped campaign leads nothing; its
    /// lease is revoked in the background (or expires after the TTL), taking its place
    /// in the queue with it.
    pub async fn campaign(&self, value: Bytes) -> Result<Leadership> {
        let lease = self.store.grant_lease(self.options.ttl).await?;
        let queue = self.queue()?;
        let mine = queue.join(&lease, value).await?;
        queue
            .wait_for_turn(&mine, &lease, self.name.as_str())
            .await?;
        Ok(Leadership {
            name: self.name.clone(),
            area: self.area.clone(),
            fencing_token: mine.create_revision,
            pair: Mutex::new(mine),
            lease,
        })
    }

    /// The current leader (etcd `Leader`): its key (`{name}/{lease id}`), value,
    /// revision (changed by each proclaim) and create revision (its fencing token);
    /// `None` when nobody leads.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn leader(&self) -> Result<Option<KvPair>> {
        let queue = self.queue()?;
        let candidates = self.area.list(queue.prefix().as_str()).await?;
        Ok(queue.in_line(candidates).into_iter().next().map(user_pair))
    }

    /// Every change of leader or of the leader's value, in order (etcd `Observe`): first
    /// the current leader (`None` when nobody leads), then each change. Built on a
    /// watch, so it never misses a change (after a gap it yields the current leader).
    ///
    /// # Errors
    /// The store's errors; later failures arrive as `Err` items.
    pub async fn observe(&self) -> Result<BoxStream<'static, Result<Option<KvPair>>>> {
        let queue = self.queue()?;
        let lists = self.area.watch_tree(queue.prefix().as_str()).await?;
        let mut last: Option<Option<(String, u64)>> = None;
        Ok(lists
            .filter_map(move |list| {
                let change = match list {
                    Err(error) => Some(Err(error)),
                    Ok(list) => {
                        let leader = queue.in_line(list).into_iter().next();
                        let seen = leader.as_ref().map(|p| (p.key.clone(), p.revision));
                        if last.as_ref() == Some(&seen) {
                            None
                        } else {
                            last = Some(seen);
                            Some(Ok(leader.map(user_pair)))
                        }
                    }
                };
                futures::future::ready(change)
            })
            .boxed())
    }
}

/// A candidate's pair as users see it: `{name}/{lease id}`, without the queue's area.
fn user_pair(mut pair: KvPair) -> KvPair {
    if let Some(key) = pair.key.strip_prefix(&format!("{ELECTION_QUEUES}/")) {
        pair.key = key.to_owned();
    }
    pair
}

impl Leadership {
    /// The fencing token: the create revision of this leader's key, strictly greater than
    /// every earlier leader's of the same election. Pass it to what the leader writes so
    /// a replaced leader's writes can be refused.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Resolves if the leadership's lease is lost: another candidate may lead by then.
    pub async fn lost(&self) -> LeaseLoss {
        self.lease.lost().await
    }

    /// Publish a new value as leader (etcd `Proclaim`), without an election; observers
    /// see it. Only while still leading: it is a compare-and-swap on the leader's key.
    ///
    /// # Errors
    /// [`Error::LockLost`] when this leadership is over (its key was deleted or changed
    /// by someone else); `ValueTooLarge`; the store's errors.
    ///
    /// # Cancel safety
    /// A dropped proclaim may have published its value or not (as a dropped
    /// [`Store::put`]); the leadership is unaffected and the next proclaim works
    /// either way.
    pub async fn proclaim(&self, value: Bytes) -> Result<KvPair> {
        let current = self.current();
        let written = match self.swap(&current, value.clone()).await {
            Err(Error::KeyNotFound { .. } | Error::KeyModified { .. }) => {
                // The key changed under us. If it still holds our lease and our create
                // revision, the change was ours: an earlier proclaim applied although its
                // answer was lost. Lead on from what is there.
                match self.ours_now(&current.key).await? {
                    Some(now) => self.swap(&now, value).await,
                    None => Err(self.lost_error()),
                }
            }
            Err(error) if error.may_have_applied() => {
                // Unknown outcome: learn the key's revision now, so the next proclaim
                // compares against what is there, not against what was.
                let _ = self.ours_now(&current.key).await;
                return Err(error);
            }
            other => other,
        }
        .map_err(|error| match error {
            Error::KeyNotFound { .. } | Error::KeyModified { .. } => self.lost_error(),
            other => other,
        })?;
        self.set_current(written.clone());
        Ok(user_pair(written))
    }

    fn current(&self) -> KvPair {
        self.pair
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_current(&self, pair: KvPair) {
        *self
            .pair
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pair;
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            key: self.name.to_string(),
            reason: LeaseLoss::Revoked,
        }
    }

    /// Compare-and-swap the leader's key from `current` to `value`.
    async fn swap(&self, current: &KvPair, value: Bytes) -> Result<KvPair> {
        self.area
            .atomic_put(
                &current.key,
                value,
                Some(current),
                PutOptions::with_lease(self.lease.id()),
            )
            .await
    }

    /// The leader's key if it is still this leadership's (our lease, our create
    /// revision), remembered as current; `None` if it is gone or someone else's.
    async fn ours_now(&self, key: &str) -> Result<Option<KvPair>> {
        match self.area.get(key).await {
            Ok(now)
                if now.lease == Some(self.lease.id())
                    && now.create_revision == self.fencing_token =>
            {
                self.set_current(now.clone());
                Ok(Some(now))
            }
            Ok(_) | Err(Error::KeyNotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Step down (etcd `Resign`): the leader's key is deleted and the next candidate
    /// leads.
    ///
    /// # Errors
    /// The store's error if the resignation could not be sent; leadership then ends when
    /// the TTL runs out.
    pub async fn resign(self) -> Result<()> {
        self.lease.revoke().await
    }

    /// Stop renewing without resigning, as if this leader had crashed: the next
    /// candidate leads after the TTL. For fault tests.
    pub fn abandon(self) {
        self.lease.abandon();
    }
}
