//! Watches that never lose an event, on the change stream.
//!
//! Each watcher reads the store's stream (`XREAD BLOCK`) on its own connection (without
//! a response timeout, which would break blocking reads), from the last entry it has
//! seen. Stream entry IDs are `<revision>-<n>` and revisions are consecutive, so a gap
//! is visible: when an entry's revision is not the next one, history was trimmed past
//! the watcher and it yields a `Resync`. Every read also checks the data's epoch, which
//! changes when Redis lost its data (a restart without persistence): then, too, the
//! watcher yields a `Resync` to the current state instead of hanging or replaying.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::{
    EventBatchStream, KvPair, LeaseId, Result, Snapshot, WatchEvent, WatchFrom, WatchSource,
    WatchTarget, resuming,
};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};

use crate::error::{from_redis, unexpected};
use crate::scripts::Reply;
use crate::store::RedisStore;

/// How long one `XREAD` blocks before asking again.
const BLOCK: Duration = Duration::from_secs(2);
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
    entries_in_revision: usize,
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
    /// Entries of the revision after `position` read so far (a revision may span reads).
    pending: Vec<Entry>,
    /// The last stream entry id read.
    last_id: String,
    connection: Option<MultiplexedConnection>,
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

    async fn connect(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.store.config.connect_timeout))
            .set_response_timeout(None);
        let timeout = self.store.config.connect_timeout;
        let mut connection = self
            .store
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| from_redis("watch", e, timeout))?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(WATCH_CLIENT_NAME)
            .exec_async(&mut connection)
            .await
            .map_err(|e| from_redis("watch", e, timeout))?;
        Ok(connection)
    }

    /// After a (re)connect: has the data been replaced, or the history we need trimmed?
    async fn check_history(&mut self) -> Result<()> {
        let reply = self
            .store
            .run("watch", &self.store.scripts.reap, &[])
            .await?;
        let bad = || unexpected("watch", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let revision = items
            .first()
            .and_then(Reply::int)
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(bad)?;
        let epoch = items.get(1).and_then(Reply::text).ok_or_else(bad)?;
        let oldest: u64 = items
            .get(2)
            .and_then(Reply::text)
            .and_then(|id| id.split('-').next().and_then(|r| r.parse().ok()))
            .unwrap_or(0);
        let replaced =
            self.epoch.as_ref().is_some_and(|known| *known != epoch) || revision < self.position;
        let trimmed = self.position < revision && (oldest == 0 || oldest > self.position + 1);
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
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
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
            let expected = self.position + 1;
            let continues = match self.pending.first() {
                Some(first) => entry.revision == first.revision,
                None => entry.revision == expected,
            };
            if !continues {
                // Entries between our position and this one were trimmed away.
                self.start = Start::Resync;
                return Ok(None);
            }
            self.last_id = id.id.clone();
            let complete = entry.entries_in_revision;
            self.pending.push(entry);
            if self.pending.len() >= complete {
                self.position = expected;
                batch.extend(self.pending.drain(..).filter_map(|e| e.event));
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    fn parse(&self, id: &StreamId) -> Result<Entry> {
        let bad =
            |what: &str| unexpected("watch", format!("malformed stream entry {}: {what}", id.id));
        let revision = id
            .id
            .split('-')
            .next()
            .and_then(|r| r.parse::<u64>().ok())
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
        Ok(Entry {
            revision,
            entries_in_revision,
            event,
        })
    }
}
