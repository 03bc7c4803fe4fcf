//! Watches that never lose an event, on the change stream.
//!
//! Each watcher reads the store's stream (`XREAD BLOCK`) on its own connection, from the
//! last entry it has seen. Stream entry IDs are `<revision>-<n>` and each entry names the
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
use kvstore_core::{
    EventBatchStream, KvPair, LeaseId, Result, Snapshot, WatchEvent, WatchFrom, WatchSource,
    WatchTarget, resuming,
};
use redis::streams::{StreamId, StreamReadReply};

use crate::connection::{Link, Purpose};
use crate::error::{from_redis, unexpected};
use crate::scripts::Reply;
use crate::store::RedisStore;

/// How long one `XREAD` of a watch blocks before asking again; a watch connection's
/// response timeout is this plus the store's response timeout.
pub const WATCH_BLOCK: Duration = Duration::from_secs(2);
/// Most stream entries read at once.
const READ_COUNT: usize = 1000;
/// The client name of watch connections, as `CLIENT LIST` shows it.
pub const WATCH_CLIENT_NAME: &str = "kvstore-watch";

#[derive(Clone, Copy, PartialEq)]
enum Start {
    Snapshot,
    Resync,
    Events,
}

/// One parsed stream entry.
struct Entry {
    revision: u64,
    /// Its place among the entries of its revision, from 0.
    seq: usize,
    /// The revision before it (the one a watcher must be at to read on from it).
    prev: u64,
    entries_in_revision: usize,
    /// The random id of the script call that wrote it.
    tip: String,
    event: Option<WatchEvent>,
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
    connection: Option<Link>,
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
        connection: None,
        checked: false,
    };
    let shutdown = watcher.store.shutdown_token().clone();
    resuming(watcher, shutdown, crate::BACKEND).await
}

/// The stream id just after every entry of `revision`.
fn after_revision(revision: u64) -> String {
    format!("{revision}-{}", u64::MAX)
}

#[async_trait]
impl WatchSource for Watcher {
    /// Forget the connection and any partly read revision; resume after `position`.
    fn reset(&mut self) {
        self.connection = None;
        self.checked = false;
        self.pending.clear();
        self.last_id = after_revision(self.position);
    }

    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        if self.start != Start::Events {
            return self.snapshot().await.map(Some);
        }
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
            return Ok(None);
        }
        if !self.checked {
            self.check_history().await?;
            return Ok(None);
        }
        self.read().await
    }
}

impl Watcher {
    async fn snapshot(&mut self) -> Result<Vec<WatchEvent>> {
        // Connected before the snapshot is handed out, so the first read of changes
        // after it does not wait for a new connection.
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let read = self.store.read(&self.target).await?;
        self.position = read.revision;
        self.epoch = Some(read.epoch);
        self.tip = read.tip;
        self.pending.clear();
        self.last_id = after_revision(self.position);
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

    async fn connect(&self) -> Result<Link> {
        let timeout = self.store.config.connect_timeout;
        let endpoint = &self.store.endpoint;
        let mut connection = endpoint
            .connect(Purpose::Watch)
            .await
            .map_err(|e| from_redis("watch", e, timeout))?;
        // On a cluster a command without a key goes to an arbitrary node: not worth it.
        if !endpoint.is_cluster() {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(WATCH_CLIENT_NAME)
                .exec_async(&mut connection)
                .await
                .map_err(|e| from_redis("watch", e, timeout))?;
        }
        Ok(connection)
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

    async fn read(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        let epoch_key = format!("{{{}}}:epoch", self.store.config.namespace);
        let timeout = self.store.config.response_timeout;
        let (epoch, reply): (Option<String>, Option<StreamReadReply>) = redis::pipe()
            .cmd("GET")
            .arg(&epoch_key)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(WATCH_BLOCK.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(self.store.stream_key())
            .arg(&self.last_id)
            .query_async(connection)
            .await
            .map_err(|e| from_redis("watch", e, timeout))?;
        if epoch != self.epoch {
            self.start = Start::Resync;
            return Ok(None);
        }
        let mut batch = Vec::new();
        for id in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let entry = self.parse(&id)?;
            // The next entry must be the next one of the revision being read, or the
            // first one of the revision that follows our position: anything else means
            // entries between were trimmed away (a revision's first entries included,
            // when it had more keys than the stream bound).
            let continues = entry.seq == self.pending.len()
                && match self.pending.first() {
                    Some(first) => entry.revision == first.revision,
                    None => entry.prev == self.position,
                };
            if !continues {
                self.start = Start::Resync;
                return Ok(None);
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
        Ok((!batch.is_empty()).then_some(batch))
    }

    fn parse(&self, id: &StreamId) -> Result<Entry> {
        let bad =
            |what: &str| unexpected("watch", format!("malformed stream entry {}: {what}", id.id));
        let (revision, seq) = id
            .id
            .split_once('-')
            .and_then(|(r, n)| Some((r.parse::<u64>().ok()?, n.parse::<usize>().ok()?)))
            .ok_or_else(|| bad("id"))?;
        let text = |field: &str| id.get::<String>(field);
        let entries_in_revision = text("entries")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("entries"))?;
        let area = text("area").ok_or_else(|| bad("area"))?;
        let key = text("key").ok_or_else(|| bad("key"))?;
        let event = if area != self.store.area || !self.target.matches(&key) {
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
}
