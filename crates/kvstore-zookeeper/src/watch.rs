//! Watches that never lose an event, on the change log.
//!
//! ZooKeeper's own watches carry no data and fire once, so they only say *when* to
//! look: a watcher lists the log with a child watch, reads the entries after its
//! position (in revision order, as `multi` reads), and when it is up to date waits for
//! the watch to fire (or [`WATCH_POLL`], whichever is first) before listing again. Every
//! write adds an entry in its own `multi`, so nothing falls between two looks, and a
//! dropped connection loses nothing: the position is a revision, and the next look reads
//! on from it.
//!
//! History is gone when the log was trimmed past the position (its trim mark is newer)
//! or the namespace's data was replaced (another epoch): then the watcher yields a
//! `Resync` with the current state and goes on from there.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use kvstore_core::backend::{EventBatchStream, WatchSource, WatchTarget, resuming};
use kvstore_core::{KvPair, Result, Snapshot, WatchEvent, WatchFrom};
use zookeeper_client as zk;

use crate::layout::Op;
use crate::log::Position;
use crate::read::{Epoch, READ_CHUNK};
use crate::store::ZooKeeperStore;

/// Longest wait for the log's child watch before looking again anyway: a bound on how
/// long a lost notification could delay events.
pub const WATCH_POLL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Start {
    Snapshot,
    Resync,
    Events,
}

struct Watcher {
    store: ZooKeeperStore,
    target: WatchTarget,
    start: Start,
    /// Every revision up to this one has been delivered.
    position: u64,
    /// The epoch the position belongs to; `None` until learned.
    epoch: Option<Epoch>,
    /// Listed entries after the position, not read yet.
    pending: VecDeque<String>,
    /// The log's child watch from the last listing.
    wake: Option<zk::OneshotWatcher>,
}

pub(crate) async fn subscribe(
    store: ZooKeeperStore,
    target: WatchTarget,
    from: WatchFrom,
) -> Result<EventBatchStream> {
    let (start, position) = match from {
        WatchFrom::Snapshot => (Start::Snapshot, 0),
        WatchFrom::After(revision) => (Start::Events, revision),
    };
    let shutdown = store.shutdown_token().clone();
    let watcher = Watcher {
        store,
        target,
        start,
        position,
        epoch: None,
        pending: VecDeque::new(),
        wake: None,
    };
    resuming(watcher, shutdown, crate::BACKEND).await
}

#[async_trait]
impl WatchSource for Watcher {
    fn reset(&mut self) {
        self.pending.clear();
        self.wake = None;
    }

    /// The first step reads the snapshot, or (after a revision) lists the log: both
    /// requests fail fast when the ensemble is unreachable.
    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        let store = self.store.clone();
        if self.start != Start::Events {
            return store.bounded("watch", self.snapshot()).await.map(Some);
        }
        if self.pending.is_empty() {
            if let Some(wake) = self.wake.take() {
                tokio::select! {
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(WATCH_POLL) => {}
                }
            }
            return store.bounded("watch", self.look()).await.map(|()| None);
        }
        store.bounded("watch", self.read_pending()).await
    }
}

impl Watcher {
    async fn snapshot(&mut self) -> Result<Vec<WatchEvent>> {
        let read = self.store.snapshot(&self.target).await?;
        self.position = read.revision;
        self.epoch = Some(read.epoch);
        self.pending.clear();
        self.wake = None;
        let snapshot = Snapshot {
            revision: read.revision,
            pairs: read.pairs,
        };
        let event = match std::mem::replace(&mut self.start, Start::Events) {
            Start::Snapshot => WatchEvent::Snapshot(snapshot),
            _ => WatchEvent::Resync(snapshot),
        };
        Ok(vec![event])
    }

    /// List the log (setting the child watch) and queue the entries after the position,
    /// or decide to resync when history is gone.
    async fn look(&mut self) -> Result<()> {
        let (listing, wake) = self.store.list_log(true).await?;
        self.wake = wake;
        let replaced = self.epoch.is_some_and(|known| known != listing.epoch);
        self.epoch = Some(listing.epoch);
        if replaced || listing.trimmed_through > self.position {
            self.start = Start::Resync;
            return Ok(());
        }
        match self
            .store
            .position_in(&listing.names, self.position)
            .await?
        {
            Position::From(index) => {
                self.pending = listing.names.into_iter().skip(index).collect();
            }
            // Trimmed while we looked: the next look sees the mark.
            Position::Trimmed => self.wake = None,
        }
        Ok(())
    }

    /// Read the next queued entries and deliver their events for this target.
    async fn read_pending(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        let count = self.pending.len().min(READ_CHUNK);
        let names: Vec<String> = self.pending.iter().take(count).cloned().collect();
        let Some(entries) = self.store.read_entries(&names).await? else {
            // Trimmed between the listing and the read: look again.
            self.pending.clear();
            self.wake = None;
            return Ok(None);
        };
        self.pending.drain(..count);
        let mut batch = Vec::new();
        for entry in entries {
            if entry.revision <= self.position {
                continue;
            }
            let Some(changes) = entry.changes else {
                // Its changes cannot be known: history lost, told as a `Resync` with
                // the current state (from the next step), never a silent gap.
                self.pending.clear();
                self.wake = None;
                self.start = Start::Resync;
                return Ok((!batch.is_empty()).then_some(batch));
            };
            self.position = entry.revision;
            for change in changes {
                if change.area != self.store.area || !self.target.matches(&change.key) {
                    continue;
                }
                batch.push(match change.op {
                    Op::Delete => WatchEvent::Delete {
                        key: change.key,
                        revision: entry.revision,
                    },
                    Op::Put {
                        value,
                        create_revision,
                        lease,
                    } => WatchEvent::Put(KvPair {
                        key: change.key,
                        value,
                        revision: entry.revision,
                        create_revision: create_revision.unwrap_or(entry.revision),
                        lease,
                    }),
                });
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}
