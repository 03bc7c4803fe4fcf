//! Watches that never lose an event, on the change stream.
//!
//! A store's watchers share one reader of its stream (`XREAD BLOCK` on one connection,
//! see `feed.rs`); each watcher reads what it missed (before it subscribed, or after it
//! fell behind) with `XRANGE` from the last entry it has seen. Stream entry IDs are `<revision>-<n>` and each entry names the
//! revision before it, so a gap is visible: when the next entry does not follow the
//! watcher's position, history was trimmed past the watcher and it yields a `Resync`; so
//! does a revision whose first entries were trimmed (a revision with more keys than the
//! stream bound). Each entry is decoded once ([`Decoded`]: by the shared reader for all
//! watchers, or by the `XRANGE` read of one catching up); a watcher then only compares
//! the entry's area and key with its own, and copies something out of it only for a
//! change to a key it watches. Every read also checks the
//! data's epoch, which changes when Redis lost its data (a restart without persistence):
//! then, too, the watcher yields a `Resync` to the current state instead of hanging or
//! replaying. A rollback that keeps the epoch (a restart from an older RDB/AOF, a
//! failover to a lagging replica) is detected at reconnect: the counter is behind the
//! watcher, or the log entry at the watcher's position carries another tip (the random
//! id of the call that wrote it) than the one the watcher saw.
//!
//! A watch connection blocks in `XREAD BLOCK` for [`WATCH_BLOCK`] at a time, and its response
//! timeout is that plus the store's request timeout: a server that goes silent (host
//! crash, blackholed network) fails the read within `WATCH_BLOCK + request_timeout` (7 s by
//! default) and the watch reconnects.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{EventBatchStream, WatchSource, WatchTarget, resuming};
use kvstore_core::{Error, KvPair, LeaseId, Result, Snapshot, WatchEvent, WatchFrom};
use redis::streams::{StreamId, StreamRangeReply};
use redis::{FromRedisValue, Value};
use tokio::sync::broadcast;

use crate::error::{from_redis, unexpected};
use crate::feed::Delivery;
use crate::layout;
use crate::scripts::Reply;
use crate::store::RedisStore;

/// How long one `XREAD` of a watch blocks before asking again; a watch connection's
/// response timeout is this plus the store's request timeout.
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

/// A change log entry's stream id, `<revision>-<n>`, ordered as Redis orders stream ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId {
    /// The revision that wrote the entry.
    pub(crate) revision: u64,
    /// The entry's place among the entries of its revision, from 0.
    pub(crate) n: u64,
}

impl EntryId {
    /// The id just after every entry of `revision`.
    fn after_revision(revision: u64) -> EntryId {
        EntryId {
            revision,
            n: u64::MAX,
        }
    }

    /// Stream id `id` as numbers; `None` when it is not two numbers joined by `-`.
    pub(crate) fn parse(id: &str) -> Option<EntryId> {
        let (revision, n) = id.split_once('-')?;
        Some(EntryId {
            revision: revision.parse().ok()?,
            n: n.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.revision, self.n)
    }
}

/// A change log entry, decoded once for all its readers: the store's stream reader
/// (`feed.rs`) decodes each entry it reads for every watcher of the store. A reader
/// takes it with [`Decoded::read`], which compares its area and key with the reader's
/// and builds an event only for an entry the reader watches.
pub(crate) struct Decoded {
    /// The stream id as read.
    pub(crate) id: String,
    /// What it holds, or what is malformed in it.
    contents: std::result::Result<Entry, Malformed>,
}

/// What is wrong with a malformed change log entry.
struct Malformed {
    /// Its id as numbers, when that much is well formed.
    id: Option<EntryId>,
    /// The first field found malformed.
    field: &'static str,
}

/// A change log entry, with what every reader needs of it well formed.
pub(crate) struct Entry {
    /// Its stream id.
    pub(crate) id: EntryId,
    /// Its place among the entries of its revision, from 0 (`id.n`).
    pub(crate) seq: usize,
    /// The revision before it (the one a reader must be at to read on from it).
    pub(crate) prev: u64,
    /// How many entries its revision has.
    pub(crate) entries_in_revision: usize,
    /// The random id of the script call that wrote it.
    pub(crate) tip: Arc<str>,
    area: String,
    key: String,
    change: Change,
}

/// What an entry did to its key. A put's fields are checked only by the readers of its
/// key (a malformed put elsewhere is none of a reader's business).
enum Change {
    Put {
        value: Option<Bytes>,
        create_revision: Option<u64>,
        lease: Option<LeaseId>,
    },
    Delete,
}

impl Decoded {
    /// Where the entry is in the stream; `None` when its id is malformed.
    pub(crate) fn at(&self) -> Option<EntryId> {
        match &self.contents {
            Ok(entry) => Some(entry.id),
            Err(malformed) => malformed.id,
        }
    }

    /// The entry for a reader of the keys of `area` that `target` matches, with its
    /// change as an event when it is to such a key (the only case that copies anything).
    /// A malformed entry is an error naming its first malformed field.
    pub(crate) fn read(
        &self,
        area: &str,
        target: &WatchTarget,
    ) -> Result<(&Entry, Option<WatchEvent>)> {
        let bad = |field: &str| {
            unexpected(
                "watch",
                format!("malformed stream entry {}: {field}", self.id),
            )
        };
        let entry = self.contents.as_ref().map_err(|m| bad(m.field))?;
        if entry.area != area || !target.matches(&entry.key) {
            return Ok((entry, None));
        }
        let revision = entry.id.revision;
        let event = match &entry.change {
            Change::Put {
                value,
                create_revision,
                lease,
            } => WatchEvent::Put(KvPair {
                key: entry.key.clone(),
                value: value.clone().ok_or_else(|| bad("value"))?,
                revision,
                create_revision: create_revision.ok_or_else(|| bad("create_revision"))?,
                lease: *lease,
            }),
            Change::Delete => WatchEvent::Delete {
                key: entry.key.clone(),
                revision,
            },
        };
        Ok((entry, Some(event)))
    }
}

/// Decode change log entry `entry`, once for all its readers.
pub(crate) fn decode(entry: StreamId) -> Decoded {
    let StreamId { id, mut map, .. } = entry;
    let contents = decode_fields(&id, &mut map);
    Decoded { id, contents }
}

/// The fields of the entry with stream id `id`, taken out of `map`.
fn decode_fields(
    id: &str,
    map: &mut HashMap<String, Value>,
) -> std::result::Result<Entry, Malformed> {
    fn take<T: FromRedisValue>(map: &mut HashMap<String, Value>, field: &str) -> Option<T> {
        map.remove(field)
            .and_then(|value| redis::from_redis_value(value).ok())
    }
    let at = EntryId::parse(id);
    let malformed = |field| Malformed { id: at, field };
    let (id, seq) = at
        .and_then(|at| Some((at, usize::try_from(at.n).ok()?)))
        .ok_or_else(|| malformed("id"))?;
    let entries_in_revision = take::<String>(map, "entries")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| malformed("entries"))?;
    let area = take(map, "area").ok_or_else(|| malformed("area"))?;
    let key = take(map, "key").ok_or_else(|| malformed("key"))?;
    let change = if take::<String>(map, "op").as_deref() == Some("put") {
        Change::Put {
            value: take::<Vec<u8>>(map, "value").map(Bytes::from),
            create_revision: take::<String>(map, "create_revision").and_then(|c| c.parse().ok()),
            lease: take::<String>(map, "lease")
                .and_then(|l| l.parse::<i64>().ok())
                .map(LeaseId),
        }
    } else {
        Change::Delete
    };
    let prev = take::<String>(map, "prev")
        .and_then(|p| p.parse().ok())
        .unwrap_or(id.revision.saturating_sub(1));
    Ok(Entry {
        id,
        seq,
        prev,
        entries_in_revision,
        tip: take::<String>(map, "tip").unwrap_or_default().into(),
        area,
        key,
        change,
    })
}

/// The entries read so far of the revision after a reader's position: a revision's
/// changes are delivered together, once all its entries are read, each following the
/// one before.
#[derive(Default)]
pub(crate) struct Pending {
    /// Entries of the revision read so far.
    read: usize,
    /// The revision, while `read > 0`.
    revision: u64,
    /// The changes among them for the reader.
    events: Vec<WatchEvent>,
}

impl Pending {
    /// Whether `entry` is the next one for a reader at revision `position`: the next
    /// entry of the revision being read, or the first of the revision after `position`.
    pub(crate) fn continues(&self, entry: &Entry, position: u64) -> bool {
        entry.seq == self.read
            && if self.read == 0 {
                entry.prev == position
            } else {
                entry.id.revision == self.revision
            }
    }

    /// Take `entry` (which [`Pending::continues`]) with its `event` for the reader: the
    /// changes of its revision when it is the revision's last entry, `None` before.
    pub(crate) fn push(
        &mut self,
        entry: &Entry,
        event: Option<WatchEvent>,
    ) -> Option<Vec<WatchEvent>> {
        self.revision = entry.id.revision;
        self.read += 1;
        self.events.extend(event);
        (self.read >= entry.entries_in_revision).then(|| {
            self.read = 0;
            std::mem::take(&mut self.events)
        })
    }

    /// Whether no entry of a revision is waiting for the rest of it.
    pub(crate) fn is_empty(&self) -> bool {
        self.read == 0
    }
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
    tip: Arc<str>,
    /// Entries of the revision after `position` read so far (a revision may span reads).
    pending: Pending,
    /// The last stream entry id read.
    last_id: EntryId,
    /// The store's shared reader, once subscribed.
    feed: Option<broadcast::Receiver<Delivery>>,
    /// Whether entries after `last_id` may be missing from the feed, to be read with
    /// `XRANGE` first (after subscribing, after falling behind, after a reconnect).
    catching_up: bool,
    /// Whether the history after `position` was checked since the last (re)connect.
    checked: bool,
}

/// A watch of `target` on `store` from `from` (a snapshot first, or the changes after a
/// revision), resuming by itself after failures.
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
        tip: Arc::from(""),
        pending: Pending::default(),
        last_id: EntryId::after_revision(position),
        feed: None,
        catching_up: true,
        checked: false,
    };
    let shutdown = watcher.store.shutdown_token().clone();
    resuming(watcher, shutdown, crate::BACKEND).await
}

#[async_trait]
impl WatchSource for Watcher {
    /// Forget the feed and any partly read revision; resume after `position`.
    fn reset(&mut self) {
        self.feed = None;
        self.catching_up = true;
        self.checked = false;
        self.pending = Pending::default();
        self.last_id = EntryId::after_revision(self.position);
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
            self.feed = Some(self.store.subscribe_feed(&self.last_id.to_string()));
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
        self.tip = read.tip.into();
        self.pending = Pending::default();
        self.last_id = EntryId::after_revision(self.position);
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
        let rewritten = !tip.is_empty() && !self.tip.is_empty() && *tip != *self.tip;
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
        let epoch_key = layout::epoch(&self.store.config.namespace);
        let timeout = self.store.config.request_timeout;
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
        let entries: Vec<Decoded> = reply.ids.into_iter().map(decode).collect();
        Ok(self.accept(&entries, true))
    }

    /// Take the store's shared reader's deliveries until one has events for this watcher
    /// or calls for another step (a resync, a catch-up, a history check); waiting on
    /// the feed in one step keeps a watcher that nothing concerns cheap.
    async fn follow(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        loop {
            let Some(feed) = self.feed.as_mut() else {
                return Ok(None);
            };
            match feed.recv().await {
                Ok(Delivery::Entries(batch)) => {
                    if batch.epoch != self.epoch {
                        self.start = Start::Resync;
                        return Ok(None);
                    }
                    let events = self.accept(&batch.entries, false);
                    if events.is_some() || self.start != Start::Events || self.catching_up {
                        return Ok(events);
                    }
                }
                Ok(Delivery::Reconnected) => {
                    self.checked = false;
                    self.catching_up = true;
                    return Ok(None);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.catching_up = true;
                    return Ok(None);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Unavailable {
                        backend: crate::BACKEND,
                        operation: "watch",
                        message: "the store's stream reader stopped".into(),
                        source: None,
                    });
                }
            }
        }
    }

    /// Take `entries` (in stream order) into the watch: skip what was read already,
    /// deliver every revision completed. A gap means entries between were trimmed away
    /// (a revision's first entries included, when it had more keys than the stream
    /// bound): read straight from the stream that is a `Resync`; in the feed it means
    /// this watcher must catch up from the stream first. A malformed entry is skipped
    /// with a warning and a `Resync`, never a stuck watch. An entry to a key this
    /// watcher does not watch costs a few comparisons.
    fn accept(&mut self, entries: &[Decoded], from_stream: bool) -> Option<Vec<WatchEvent>> {
        let mut batch = Vec::new();
        for decoded in entries {
            // An id that does not parse is for `read` to report.
            if decoded.at().is_some_and(|at| at <= self.last_id) {
                continue;
            }
            let (entry, event) = match decoded.read(self.store.area, &self.target) {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "skipping a malformed change log entry; resyncing");
                    self.start = Start::Resync;
                    return None;
                }
            };
            if !self.pending.continues(entry, self.position) {
                if from_stream {
                    self.start = Start::Resync;
                } else {
                    self.catching_up = true;
                }
                break;
            }
            self.last_id = entry.id;
            if let Some(events) = self.pending.push(entry, event) {
                self.position = entry.id.revision;
                self.tip = Arc::clone(&entry.tip);
                batch.extend(events);
            }
        }
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use kvstore_core::{Key, Prefix};

    use super::*;

    /// A stream entry with id `id` and fields `fields` (each a bulk string).
    fn logged(id: &str, fields: &[(&str, &str)]) -> Decoded {
        decode(StreamId {
            id: id.to_owned(),
            map: fields
                .iter()
                .map(|(field, value)| {
                    (
                        (*field).to_owned(),
                        Value::BulkString(value.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..StreamId::default()
        })
    }

    /// A put of `key`, the only entry of revision 5, without field `without` ("" for none).
    fn put(key: &str, without: &str) -> Decoded {
        let fields = [
            ("entries", "1"),
            ("area", "kv"),
            ("key", key),
            ("op", "put"),
            ("value", "v"),
            ("create_revision", "3"),
            ("lease", "7"),
            ("prev", "4"),
            ("tip", "t"),
        ];
        let fields: Vec<_> = fields.into_iter().filter(|(f, _)| *f != without).collect();
        logged("5-0", &fields)
    }

    fn prefix(name: &str) -> WatchTarget {
        WatchTarget::Prefix(Prefix::new(name).unwrap())
    }

    #[test]
    fn an_entry_becomes_an_event_only_for_a_reader_of_its_area_and_key() {
        let decoded = put("a/b", "");
        assert_eq!(decoded.at(), Some(EntryId { revision: 5, n: 0 }));
        let (entry, event) = decoded.read("kv", &prefix("a")).unwrap();
        assert_eq!((entry.seq, entry.prev, &*entry.tip), (0, 4, "t"));
        assert_eq!(
            event,
            Some(WatchEvent::Put(KvPair {
                key: "a/b".into(),
                value: Bytes::from("v"),
                revision: 5,
                create_revision: 3,
                lease: Some(LeaseId(7)),
            }))
        );
        let key = WatchTarget::Key(Key::new("a/b").unwrap());
        assert!(decoded.read("kv", &key).unwrap().1.is_some());
        assert!(decoded.read("kv", &prefix("b")).unwrap().1.is_none());
        assert!(decoded.read("lock", &prefix("a")).unwrap().1.is_none());
        let delete = logged("6-0", &[("entries", "1"), ("area", "kv"), ("key", "a/b")]);
        let (entry, event) = delete.read("kv", &prefix("a")).unwrap();
        assert_eq!((entry.prev, &*entry.tip), (5, ""), "the defaults");
        assert_eq!(
            event,
            Some(WatchEvent::Delete {
                key: "a/b".into(),
                revision: 6
            })
        );
    }

    #[test]
    fn a_malformed_entry_is_an_error_for_the_readers_it_concerns() {
        let message = |decoded: &Decoded, target: &WatchTarget| {
            decoded
                .read("kv", target)
                .err()
                .map(|error| error.to_string())
        };
        for field in ["entries", "area", "key"] {
            let decoded = put("a/b", field);
            let expected = format!("malformed stream entry 5-0: {field}");
            assert!(decoded.at().is_some());
            assert!(
                message(&decoded, &prefix("b"))
                    .unwrap()
                    .ends_with(&expected)
            );
        }
        // A put's own fields concern only the readers of its key.
        for field in ["value", "create_revision"] {
            let decoded = put("a/b", field);
            let expected = format!("malformed stream entry 5-0: {field}");
            assert!(
                message(&decoded, &prefix("a"))
                    .unwrap()
                    .ends_with(&expected)
            );
            assert_eq!(message(&decoded, &prefix("b")), None);
        }
        let decoded = logged("five", &[("entries", "1"), ("area", "kv"), ("key", "a")]);
        assert_eq!(decoded.at(), None);
        assert!(
            message(&decoded, &prefix("b"))
                .unwrap()
                .ends_with("malformed stream entry five: id")
        );
    }

    #[test]
    fn a_revision_is_complete_once_all_its_entries_follow_one_another() {
        let first = |key: &str, entries: &str| {
            logged(
                "5-0",
                &[
                    ("entries", entries),
                    ("area", "kv"),
                    ("key", key),
                    ("prev", "3"),
                ],
            )
        };
        let second = logged("5-1", &[("entries", "2"), ("area", "kv"), ("key", "a/c")]);
        let target = prefix("a");
        let mut pending = Pending::default();
        let (entry, _) = second.read("kv", &target).unwrap();
        assert!(
            !pending.continues(entry, 3),
            "not the revision's first entry"
        );
        let decoded = first("b/x", "2");
        let (entry, event) = decoded.read("kv", &target).unwrap();
        assert!(!pending.continues(entry, 4), "not the revision after 4");
        assert!(pending.continues(entry, 3));
        assert_eq!(pending.push(entry, event), None);
        assert!(!pending.is_empty());
        let (entry, event) = second.read("kv", &target).unwrap();
        assert!(pending.continues(entry, 3));
        let events = pending.push(entry, event).unwrap();
        assert_eq!(
            events,
            vec![WatchEvent::Delete {
                key: "a/c".into(),
                revision: 5
            }]
        );
        assert!(pending.is_empty());
        assert_eq!(
            EntryId::after_revision(5).to_string(),
            format!("5-{}", u64::MAX)
        );
        assert!(EntryId::after_revision(5) > entry.id);
    }
}
