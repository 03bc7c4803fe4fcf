//! [`InstanceSet`]: a consumer's handle on the live instances of one service, and the
//! [`InstanceChange`]s it streams.
//!
//! Every set of one service from one [`crate::Discovery`] shares one follower (one
//! backend watch, one decoded set of `Arc<Instance>`); a set only remembers which
//! version of the shared set its consumer last saw. Changes are a *diff* between that
//! version and the current one, so nothing is missed and nothing piles up: a consumer
//! that polls rarely gets one batch with the net changes, and after a watch `Resync`
//! (history lost) it gets exactly the additions, updates and removals that bring it up
//! to date (tower's `Discover`, with revisions).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::WatchStream;

use crate::discovery::SharedWatch;
use crate::follower::{Members, Published, lock};
use crate::health::{Health, StaleError};
use crate::instance::Instance;

/// One change to a service's instance set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceChange {
    /// A new instance, written at `revision`.
    Added {
        /// The instance.
        instance: Arc<Instance>,
        /// The revision of its record.
        revision: u64,
    },
    /// An instance whose record changed (status, weight, address, ...), written at
    /// `revision`.
    Updated {
        /// The instance as it is now.
        instance: Arc<Instance>,
        /// The revision of its record.
        revision: u64,
    },
    /// An instance that left (deregistered, expired, deleted, or its record became
    /// undecodable); `revision` is the store revision at which the set lost it.
    Removed {
        /// The instance as it was last seen.
        instance: Arc<Instance>,
        /// The store revision of the set without it.
        revision: u64,
    },
}

impl InstanceChange {
    /// The instance the change is about (as it is now, or as last seen if removed).
    pub fn instance(&self) -> &Arc<Instance> {
        match self {
            InstanceChange::Added { instance, .. }
            | InstanceChange::Updated { instance, .. }
            | InstanceChange::Removed { instance, .. } => instance,
        }
    }
}

/// The live instance set of one service ([`crate::Discovery::watch`]).
///
/// - [`InstanceSet::instances`] is always the current set (`Up`, `Draining` and `Down`
///   instances, sorted by id); [`InstanceSet::health`] says whether it is in step with
///   the registry.
/// - As a [`Stream`] it yields `Ok(changes)`: the changes since the consumer last
///   looked (non-empty, sorted by id), and `Err(StaleError)` once each time the set
///   turns stale (registry unreachable, protection holding back a drop). It ends when
///   the store is closed.
/// - [`InstanceSet::next_change`] is the stream without the errors.
///
/// Cheap: all sets of a service from one `Discovery` share one watch and one decoded
/// set. Dropping the last set (and [`InstanceReader`]) of a service stops following it.
pub struct InstanceSet {
    shared: Arc<SharedWatch>,
    wakeups: WatchStream<Arc<Published>>,
    /// The version the consumer of the stream was last brought to.
    seen: Arc<Published>,
    /// The last stale episode reported as an `Err` item.
    reported_epoch: u64,
}

impl std::fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSet")
            .field("service", &self.shared.service)
            .field("revision", &self.seen.revision)
            .finish_non_exhaustive()
    }
}

impl InstanceSet {
    pub(crate) fn new(shared: Arc<SharedWatch>) -> InstanceSet {
        let current = shared.outputs.current.clone();
        let seen = current.borrow().clone();
        InstanceSet {
            reported_epoch: seen.stale_epoch,
            wakeups: WatchStream::from_changes(current),
            seen,
            shared,
        }
    }

    /// The service this set follows.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// Every instance now (`Up`, `Draining` and `Down`), sorted by id.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.shared.instances()
    }

    /// The store revision the set reflects.
    pub fn revision(&self) -> u64 {
        self.shared.outputs.current.borrow().revision
    }

    /// Whether the set is in step with the registry ([`Health::Synced`]) or serving
    /// the last known set ([`Health::Stale`], since when and why).
    pub fn health(&self) -> Health {
        self.shared.outputs.current.borrow().health.clone()
    }

    /// A cheap handle that reads the current instances and health from elsewhere
    /// (e.g. request handlers of a gateway), while this set is driven for changes. It
    /// keeps the service followed while it lives.
    pub fn reader(&self) -> InstanceReader {
        InstanceReader {
            shared: self.shared.clone(),
        }
    }

    /// The changes since the last call (the first call reports changes since
    /// [`crate::Discovery::watch`]), waiting until there is at least one. Staleness is
    /// not reported here (see [`InstanceSet::health`] and the `Stream`). `None` when the
    /// store has closed.
    pub async fn next_change(&mut self) -> Option<Vec<InstanceChange>> {
        use futures::StreamExt;
        loop {
            match self.next().await? {
                Ok(changes) => return Some(changes),
                Err(_) => continue,
            }
        }
    }

    /// Bring `seen` to the current version; the net changes, sorted by id.
    fn catch_up(&mut self) -> Vec<InstanceChange> {
        let current = self.shared.outputs.current.borrow().clone();
        let changes = if current.seq == self.seen.seq {
            Vec::new()
        } else {
            let logged = lock(&self.shared.outputs.log).between(self.seen.seq, current.seq);
            match logged {
                Some(batches) => coalesce(&batches),
                None => diff(&self.seen.members, &current.members, current.revision),
            }
        };
        self.seen = current;
        changes
    }

    /// The stale error to report, if the set turned stale since the last report.
    fn new_staleness(&mut self) -> Option<StaleError> {
        let current = self.shared.outputs.current.borrow();
        if current.stale_epoch == self.reported_epoch {
            return None;
        }
        self.reported_epoch = current.stale_epoch;
        match &current.health {
            Health::Stale { error, .. } => Some(error.clone()),
            Health::Synced { .. } => None,
        }
    }
}

impl Stream for InstanceSet {
    type Item = Result<Vec<InstanceChange>, StaleError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let changes = self.catch_up();
            if !changes.is_empty() {
                return Poll::Ready(Some(Ok(changes)));
            }
            if let Some(error) = self.new_staleness() {
                return Poll::Ready(Some(Err(error)));
            }
            match Pin::new(&mut self.wakeups).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads the current instances of an [`InstanceSet`]; cheap to clone. Keeps the
/// service followed while it lives.
#[derive(Clone)]
pub struct InstanceReader {
    shared: Arc<SharedWatch>,
}

impl std::fmt::Debug for InstanceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceReader")
            .field("service", &self.shared.service)
            .finish_non_exhaustive()
    }
}

impl InstanceReader {
    /// Every instance now (`Up`, `Draining` and `Down`), sorted by id.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.shared.instances()
    }

    /// Whether the set is in step with the registry.
    pub fn health(&self) -> Health {
        self.shared.outputs.current.borrow().health.clone()
    }

    /// The store revision the set reflects.
    pub fn revision(&self) -> u64 {
        self.shared.outputs.current.borrow().revision
    }

    /// How many times the served set has changed: equal numbers, equal sets.
    pub(crate) fn version(&self) -> u64 {
        self.shared.outputs.current.borrow().seq
    }

    /// The service this reader follows.
    pub fn service(&self) -> &str {
        &self.shared.service
    }
}

/// The net effect of consecutive change batches, per id: what a consumer that knew the
/// state before the first batch must do to reach the state after the last.
fn coalesce(batches: &[Arc<[InstanceChange]>]) -> Vec<InstanceChange> {
    // Per id: whether the consumer knew the instance before, and its last change.
    let mut net: BTreeMap<&str, (bool, &InstanceChange)> = BTreeMap::new();
    for change in batches.iter().flat_map(|batch| batch.iter()) {
        let known_before = !matches!(change, InstanceChange::Added { .. });
        net.entry(change.instance().id.as_str())
            .and_modify(|(_, last)| *last = change)
            .or_insert((known_before, change));
    }
    net.into_values()
        .filter_map(|(known_before, last)| match (known_before, last) {
            (false, InstanceChange::Removed { .. }) => None,
            (false, InstanceChange::Added { instance, revision })
            | (false, InstanceChange::Updated { instance, revision }) => {
                Some(InstanceChange::Added {
                    instance: instance.clone(),
                    revision: *revision,
                })
            }
            (true, InstanceChange::Added { instance, revision })
            | (true, InstanceChange::Updated { instance, revision }) => {
                Some(InstanceChange::Updated {
                    instance: instance.clone(),
                    revision: *revision,
                })
            }
            (true, removed @ InstanceChange::Removed { .. }) => Some(removed.clone()),
        })
        .collect()
}

/// The changes from `before` to `after`, by id (for a consumer that fell behind the
/// change log).
fn diff(before: &Members, after: &Members, revision: u64) -> Vec<InstanceChange> {
    let mut changes = Vec::new();
    let mut old = before.iter().peekable();
    let mut new = after.iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((_, gone)) = old.next() {
                    changes.push(InstanceChange::Removed {
                        instance: gone.instance.clone(),
                        revision,
                    });
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((_, arrived)) = new.next() {
                    changes.push(InstanceChange::Added {
                        instance: arrived.instance.clone(),
                        revision: arrived.revision,
                    });
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((_, was)), Some((_, is))) = (old.next(), new.next())
                    && (was.revision != is.revision || !Arc::ptr_eq(&was.instance, &is.instance))
                {
                    changes.push(InstanceChange::Updated {
                        instance: is.instance.clone(),
                        revision: is.revision,
                    });
                }
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Member;

    fn instance(id: &str, port: u16) -> Arc<Instance> {
        Arc::new(Instance::new("api", id, format!("127.0.0.1:{port}")))
    }

    fn summary(changes: &[InstanceChange]) -> Vec<(&'static str, String)> {
        changes
            .iter()
            .map(|c| {
                let kind = match c {
                    InstanceChange::Added { .. } => "added",
                    InstanceChange::Updated { .. } => "updated",
                    InstanceChange::Removed { .. } => "removed",
                };
                (kind, c.instance().id.clone())
            })
            .collect()
    }

    #[test]
    fn coalescing_keeps_only_the_net_change_per_instance() {
        let (a, b, c, d) = (
            instance("a", 1),
            instance("b", 2),
            instance("c", 3),
            instance("d", 4),
        );
        let batches: Vec<Arc<[InstanceChange]>> = vec![
            vec![
                InstanceChange::Added {
                    instance: a.clone(),
                    revision: 1,
                },
                InstanceChange::Updated {
                    instance: b.clone(),
                    revision: 1,
                },
                InstanceChange::Removed {
                    instance: c.clone(),
                    revision: 1,
                },
                InstanceChange::Added {
                    instance: d.clone(),
                    revision: 1,
                },
            ]
            .into(),
            vec![
                InstanceChange::Removed {
                    instance: a,
                    revision: 2,
                },
                InstanceChange::Removed {
                    instance: b,
                    revision: 2,
                },
                InstanceChange::Added {
                    instance: c,
                    revision: 2,
                },
                InstanceChange::Updated {
                    instance: d,
                    revision: 2,
                },
            ]
            .into(),
        ];
        assert_eq!(
            summary(&coalesce(&batches)),
            [
                ("removed", "b".to_owned()),
                ("updated", "c".to_owned()),
                ("added", "d".to_owned())
            ]
        );
    }

    #[test]
    fn diff_compares_two_versions_by_id() {
        let member = |instance: &Arc<Instance>, revision| Member {
            instance: instance.clone(),
            revision,
        };
        let (a, b, c) = (instance("a", 1), instance("b", 2), instance("c", 3));
        let before = Members::new_sync()
            .insert("a".into(), member(&a, 1))
            .insert("b".into(), member(&b, 1));
        let after = before
            .remove("a")
            .insert("b".into(), member(&b, 5))
            .insert("c".into(), member(&c, 5));
        assert_eq!(
            summary(&diff(&before, &after, 5)),
            [
                ("removed", "a".to_owned()),
                ("updated", "b".to_owned()),
                ("added", "c".to_owned())
            ]
        );
        assert!(diff(&after, &after, 5).is_empty());
    }
}
