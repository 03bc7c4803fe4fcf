//! Watches that never lose an event, on the change stream.
//!
//! A store's watchers share one reader of its stream (`XREAD BLOCK` on one connection,
//! see `feed.rs`); each watcher reads what it missed (before it subscribed, or after it
//! fell behind) with `XRANGE` from the last entry it has seen. Stream entry IDs are `<revision>-<n>` and each entry names the
//! revision before it, so a gap is visible: when the next entry does not follow the
//! watcher's position, history was trimmed past the watcher and it yields a `Resync`; so
//! does a revision whose first entries were trimmed (a revision with more keys than the
//! stream bound). Every read also checks the
//! data's epoch, which changes when Redis lost its data (a restart without persistence):
//! then, too, the watcher yields a `Resync` to the current state instead of hanging or
//! replaying. A rollback that keeps the epoch (a restart from an older RDB/AOF, a
//! failover to a lagging replica) is detected at reconnect: the counter is behind the
//! watcher, or the log entry at the watcher's position carries another tip (the random
//! id of the call that wrote it) than the one the watcher saw.
//!
//! A watch connection blocks in `XREAD BLOCK` for [`WATCH_BLOCK`] at a time, and its response
//! timeout is that plus the store's response timeout: a server that goes silent (host
//! crash, blackholed network) fails the read within `WATCH_BLOCK + response_timeout` (7 s by
//! default) and the watch reconnects.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{EventBatchStream, WatchSource, WatchTarget, resuming};
use kvstore_core::{Error, KvPair, LeaseId, Result, Snapshot, WatchEvent, WatchFrom};
use redis::streams::{StreamId, StreamRangeReply};
use tokio::sync::broadcast;

use crate::error::{from_redis, unexpected};
use crate::feed::Delivery;
use crate::scripts::Reply;
use crate::store::RedisStore;

/// How long one `XREAD` of a watch blocks before asking again; a watch connection's
/// response timeout is this plus the store's response timeout.
pub const WATCH_BLOCK: Duration = Duration::from_secs(2);
/// Most stream entries read at once.
pub(crate) const READ_COUNT: usize = 1000;
/// The client name of watch connections, as `CLIENT LIST` shows it.
pub const WATCH_CLIENT_NAME: &str = "kvstore-watch";

#[derive(Clone, Copy, PartialEq)]
enum Start {
    Snapshot,
    Resync,
    Events,
}

/// One parsed change log entry.
pub(crate) struct Entry {
    pub(crate) revision: u64,
    /// Its place among the entries of its revision, from 0.
    pub(crate) seq: usize,
    /// The revision before it (the one a reader must be at to read on from it).
    pub(crate) prev: u64,
    pub(crate) entries_in_revision: usize,
    /// The random id of the script call that wrote it.
    pub(crate) tip: String,
    /// Its change, when it is to a key of the area and target asked about.
    pub(crate) event: Option<WatchEvent>,
}

struct Watcher {
    store: RedisStore,
    target: WatchTarget,
    start: Start,
    /// Every revision up to this one has been delivered.
    position: u64,
    /// The data epoch the position belongs to; `None` until learned.
    epoch: Option<String>,
    /// The tip of the log entries of `position`, when known ('' otherwise).
    tip: String,
    /// Entries of the revision after `position` read so far (a revision may span reads).
    pending: Vec<Entry>,
    /// The last stream entry id read.
    last_id: String,
    /// The store's shared reader, once subscribed.
    feed: Option<broadcast::Receiver<Delivery>>,
    /// Whether entries after `last_id` may be missing from the feed, to be read with
    /// `XRANGE` first (after subscribing, after falling behind, after a reconnect).
    catching_up: bool,
    /// Whether the history after `position` was checked since the last (re)connect.
    checked: bool,
}

pub(crate) async fn subscribe(
    store: RedisStore,
    target: WatchTarget,
    from: WatchFrom,
) -> Result<EventBatchStream> {
    let (start, position) = match from {
        WatchFrom::Snapshot => (Start::Snapshot, 0),
        WatchFrom::After(revision) => (Start::Events, revision),
    };
    let watcher = Watcher {
        store,
        target,
        start,
        position,
        epoch: None,
        tip: String::new(),
        pending: Vec::new(),
        last_id: after_revision(position),
        feed: None,
        catching_up: true,
        checked: false,
    };
    let shutdown = watcher.store.shutdown_token().clone();
    resuming(watcher, shutdown, crate::BACKEND).await
}

/// The stream id just after every entry of `revision`.
fn after_revision(revision: u64) -> String {
    format!("{revision}-{}", u64::MAX)
}

/// Whether stream id `id` comes after `last` (ids are `<ms>-<seq>`, compared as numbers).
fn after(id: &str, last: &str) -> bool {
    let parse = |id: &str| {
        id.split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
    };
    match (parse(id), parse(last)) {
        (Some(id), Some(last)) => id > last,
        // An id that does not parse is for `parse` to report.
        _ => true,
    }
}

#[async_trait]
impl WatchSource for Watcher {
    /// Forget the feed and any partly read revision; resume after `position`.
    fn reset(&mut self) {
        self.feed = None;
        self.catching_up = true;
        self.checked = false;
        self.pending.clear();
        self.last_id = after_revision(self.position);
    }

    /// The first step is the snapshot, or (after a revision) the history check: both
    /// requests on the store's connection, so an unreachable server fails the watch.
    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        if self.start != Start::Events {
            return self.snapshot().await.map(Some);
        }
        if !self.checked {
            self.check_history().await?;
            return Ok(None);
        }
        if self.feed.is_none() {
            // Subscribed before catching up, so nothing falls between the two.
            self.feed = Some(self.store.subscribe_feed(&self.last_id));
            self.catching_up = true;
            return Ok(None);
        }
        if self.catching_up {
            return self.catch_up().await;
        }
        self.follow().await
    }
}

impl Watcher {
    async fn snapshot(&mut self) -> Result<Vec<WatchEvent>> {
        let read = self.store.read(&self.target).await?;
        self.position = read.revision;
        self.epoch = Some(read.epoch);
        self.tip = read.tip;
        self.pending.clear();
        self.last_id = after_revision(self.position);
        self.catching_up = true;
        self.checked = true;
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

    /// After a (re)connect: has the data been replaced, or the history we need trimmed?
    async fn check_history(&mut self) -> Result<()> {
        let position = self.position.to_string();
        let reply = self
            .store
            .run("watch", &self.store.scripts.reap, &[position.as_bytes()])
            .await?;
        let bad = || unexpected("watch", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let revision = items
            .first()
            .and_then(Reply::int)
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(bad)?;
        let epoch = items.get(1).and_then(Reply::text).ok_or_else(bad)?;
        // The revision the oldest logged entry follows; `None` when the log is empty.
        let before_oldest: Option<u64> = items
            .get(2)
            .and_then(Reply::text)
            .and_then(|r| r.parse().ok());
        let tip = items.get(3).and_then(Reply::text).unwrap_or_default();
        let rewritten = !tip.is_empty() && !self.tip.is_empty() && tip != self.tip;
        let replaced = self.epoch.as_ref().is_some_and(|known| *known != epoch)
            || revision < self.position
            || rewritten;
        let trimmed =
            self.position < revision && before_oldest.is_none_or(|before| before > self.position);
        if replaced || trimmed {
            self.start = Start::Resync;
        }
        self.epoch = Some(epoch);
        self.checked = true;
        Ok(())
    }

    /// Read what the feed may not carry with `XRANGE`, until the stream has nothing
    /// newer; then follow the feed.
    async fn catch_up(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        let epoch_key = format!("{{{}}}:epoch", self.store.config.namespace);
        let timeout = self.store.config.response_timeout;
        let reading = &redis::pipe()
            .cmd("GET")
            .arg(&epoch_key)
            .cmd("XRANGE")
            .arg(self.store.stream_key())
            .arg(format!("({}", self.last_id))
            .arg("+")
            .arg("COUNT")
            .arg(READ_COUNT)
            .clone();
        let (epoch, reply): (Option<String>, StreamRangeReply) = self
            .store
            .connection
            .run_idempotent(|mut link| async move { reading.query_async(&mut link).await })
            .await
            .map_err(|e| from_redis("watch", e, timeout))?;
        if epoch != self.epoch {
            self.start = Start::Resync;
            return Ok(None);
        }
        if reply.ids.len() < READ_COUNT {
            self.catching_up = false;
        }
        Ok(self.accept(&reply.ids, true))
    }

    /// The next delivery of the store's shared reader.
    async fn follow(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        let Some(feed) = self.feed.as_mut() else {
            return Ok(None);
        };
        match feed.recv().await {
            Ok(Delivery::Entries { epoch, entries }) => {
                if epoch != self.epoch {
                    self.start = Start::Resync;
                    return Ok(None);
                }
                Ok(self.accept(&entries, false))
            }
            Ok(Delivery::Reconnected) => {
                self.checked = false;
                self.catching_up = true;
                Ok(None)
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.catching_up = true;
                Ok(None)
            }
            Err(broadcast::error::RecvError::Closed) => Err(Error::Unavailable {
                backend: crate::BACKEND,
                operation: "watch",
                message: "the store's stream reader stopped".into(),
                source: None,
            }),
        }
    }

    /// Take `entries` (in stream order) into the watch: skip what was read already,
    /// deliver every revision completed. A gap means entries between were trimmed away
    /// (a revision's first entries included, when it had more keys than the stream
    /// bound): read straight from the stream that is a `Resync`; in the feed it means
    /// this watcher must catch up from the stream first. A malformed entry is skipped
    /// with a warning and a `Resync`, never a stuck watch.
    fn accept(&mut self, entries: &[StreamId], from_stream: bool) -> Option<Vec<WatchEvent>> {
        let mut batch = Vec::new();
        for id in entries {
            if !after(&id.id, &self.last_id) {
                continue;
            }
            let entry = match self.parse(id) {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(%error, "skipping a malformed change log entry; resyncing");
                    self.start = Start::Resync;
                    return None;
                }
            };
            let continues = entry.seq == self.pending.len()
                && match self.pending.first() {
                    Some(first) => entry.revision == first.revision,
                    None => entry.prev == self.position,
                };
            if !continues {
                if from_stream {
                    self.start = Start::Resync;
                } else {
                    self.catching_up = true;
                }
                break;
            }
            self.last_id = id.id.clone();
            let complete = entry.entries_in_revision;
            self.pending.push(entry);
            if self.pending.len() >= complete {
                self.position = self.pending.last().map_or(self.position, |e| e.revision);
                self.tip = self
                    .pending
                    .last()
                    .map(|e| e.tip.clone())
                    .unwrap_or_default();
                batch.extend(self.pending.drain(..).filter_map(|e| e.event));
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    fn parse(&self, id: &StreamId) -> Result<Entry> {
        parse_entry(id, self.store.area, &self.target)
    }
}

/// Parse change log entry `id`; its `event` is set only for a key of `area` that
/// `target` matches. A malformed entry is an error naming what is wrong with it.
pub(crate) fn parse_entry(id: &StreamId, area: &str, target: &WatchTarget) -> Result<Entry> {
    let bad = |what: &str| unexpected("watch", format!("malformed stream entry {}: {what}", id.id));
    let (revision, seq) = id
        .id
        .split_once('-')
        .and_then(|(r, n)| Some((r.parse::<u64>().ok()?, n.parse::<usize>().ok()?)))
        .ok_or_else(|| bad("id"))?;
    let text = |field: &str| id.get::<String>(field);
    let entries_in_revision = text("entries")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("entries"))?;
    let entry_area = text("area").ok_or_else(|| bad("area"))?;
    let key = text("key").ok_or_else(|| bad("key"))?;
    let event = if entry_area != area || !target.matches(&key) {
        None
    } else if text("op").as_deref() == Some("put") {
        let value: Vec<u8> = id.get("value").ok_or_else(|| bad("value"))?;
        let create_revision = text("create_revision")
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("create_revision"))?;
        let lease = text("lease")
            .and_then(|l| l.parse::<i64>().ok())
            .map(LeaseId);
        Some(WatchEvent::Put(KvPair {
            key,
            value: Bytes::from(value),
            revision,
            create_revision,
            lease,
        }))
    } else {
        Some(WatchEvent::Delete { key, revision })
    };
    let prev = text("prev")
        .and_then(|p| p.parse().ok())
        .unwrap_or(revision.saturating_sub(1));
    Ok(Entry {
        revision,
        seq,
        prev,
        entries_in_revision,
        tip: text("tip").unwrap_or_default(),
        event,
    })
}
