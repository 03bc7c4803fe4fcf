//! Reading a key, or everything below a prefix, as one consistent snapshot
//! ([contract §3](kvstore_core::contract#3-operations) "Any size", §5 "No silent loss").
//!
//! A prefix is read in pages ([`PAGE_KEYS`] keys or [`PAGE_BYTES`] of keys and values,
//! whichever comes first), each one `range` script call, so a list of 100,000 keys
//! blocks the server for one page at a time instead of for its whole length. Each page
//! is atomic and returns the store's revision. When the revision moved between two
//! pages, the change log entries in between are read (`XRANGE`, as a watcher catches up)
//! and the changes to keys the earlier pages already returned are applied to them: the
//! pages read so far then hold the range as it was at the newer revision, and the result
//! is exactly the range at the last page's revision, whatever was written meanwhile.
//! (Keys after the last page's end need nothing: later pages read them as they are.)
//!
//! When that log is not there to read (trimmed past the revision, malformed, written by
//! another history after a rollback, more than [`MAX_LOG_ENTRIES`] entries) or the data's
//! epoch changed, the read starts again, at most [`MAX_RESTARTS`] times, then falls back
//! to reading the whole range in one script call, as before paging.
//!
//! A single key outside a watch ([`RedisStore::read_key`]) needs no script: one `HMGET`.

use std::collections::BTreeMap;

use bytes::Bytes;
use kvstore_core::backend::WatchTarget;
use kvstore_core::{Key, KvPair, LeaseId, Prefix, Result, WatchEvent};
use redis::Value;
use redis::streams::StreamRangeReply;

use crate::BACKEND;
use crate::error::{from_redis, unexpected};
use crate::layout;
use crate::scripts::Reply;
use crate::store::RedisStore;
use crate::watch::{Decoded, Pending, decode};

/// Most keys one page of a prefix read holds.
pub(crate) const PAGE_KEYS: usize = 1000;
/// Most bytes of keys and values one page holds (a page holds at least one key, so a
/// page of values at the size limit holds a few).
pub(crate) const PAGE_BYTES: usize = 4 << 20;
/// Change log entries read at once between pages (each carries its value).
const LOG_READ_COUNT: usize = 256;
/// Change log entries one read applies at most, over all its pages, before it starts
/// again: past that, the writes outpace the read.
pub(crate) const MAX_LOG_ENTRIES: usize = 100_000;
/// Paged attempts after the first before reading the range in one script call.
pub(crate) const MAX_RESTARTS: usize = 3;

/// What [`RedisStore::read`] returns.
pub(crate) struct RangeRead {
    pub pairs: Vec<KvPair>,
    pub revision: u64,
    pub epoch: String,
    /// The tip of the change log entries of `revision` ('' when none is logged).
    pub tip: String,
    /// How it was read.
    pub how: ReadStats,
}

/// How a read went: for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadStats {
    /// Script calls of the attempt that succeeded.
    pub pages: usize,
    /// Change log entries that attempt read between its pages.
    pub log_entries: usize,
    /// Keys at or before an earlier page's end that changed after that page was read,
    /// whose changes were applied from the log.
    pub rolled_forward: usize,
    /// Paged attempts given up before.
    pub restarts: usize,
    /// Whether the range was read in one script call (a key, or the fallback).
    pub one_shot: bool,
}

/// One `range` script call's answer.
struct Page {
    revision: u64,
    epoch: String,
    tip: String,
    /// The key the page ended with when the range may go on after it.
    next: Option<String>,
    pairs: Vec<KvPair>,
}

impl Page {
    fn into_read(self, how: ReadStats) -> RangeRead {
        RangeRead {
            pairs: self.pairs,
            revision: self.revision,
            epoch: self.epoch,
            tip: self.tip,
            how,
        }
    }
}

/// Why a paged attempt was given up.
#[derive(Debug)]
enum Restart {
    /// The data's epoch changed between pages: it was lost and written again.
    EpochChanged,
    /// The revision went backwards between pages: the server rolled back.
    RolledBack,
    /// The change log between two pages is incomplete or from another history.
    LogGap,
    /// More than [`MAX_LOG_ENTRIES`] entries to apply.
    TooManyChanges,
}

impl RedisStore {
    /// A read needs no script: one `HMGET`, and only for a key on a lease a check that
    /// the lease is still alive by the server's clock, so an expired key is never
    /// returned even before the reaper has deleted it.
    pub(crate) async fn read_key(&self, key: &Key) -> Result<Option<KvPair>> {
        self.lifecycle.ensure_open(BACKEND)?;
        let timeout = self.config.request_timeout;
        let read = &redis::cmd("HMGET")
            .arg(layout::key(&self.config.namespace, self.area, key.as_str()))
            .arg(&["value", "revision", "create_revision", "lease"])
            .clone();
        let (value, revision, create_revision, lease): (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
        ) = self
            .connection
            .run_idempotent(|mut connection| async move { read.query_async(&mut connection).await })
            .await
            .map_err(|e| from_redis("get", e, timeout))?;
        let (Some(value), Some(revision), Some(create_revision)) =
            (value, revision, create_revision)
        else {
            return Ok(None);
        };
        if let Some(lease) = lease
            && !self.lease_alive("get", lease).await?
        {
            return Ok(None);
        }
        Ok(Some(KvPair {
            key: key.to_string(),
            value: Bytes::from(value),
            revision,
            create_revision,
            lease: lease.map(LeaseId),
        }))
    }

    /// Read a key, or everything below a prefix, as of one revision: the pairs, that
    /// revision, its tip and the data's epoch. A prefix is read in pages (module docs).
    pub(crate) async fn read(&self, target: &WatchTarget) -> Result<RangeRead> {
        match target {
            WatchTarget::Key(key) => {
                let page = self.page("key", key.as_str(), "", 0, 0).await?;
                Ok(page.into_read(ReadStats {
                    pages: 1,
                    one_shot: true,
                    ..ReadStats::default()
                }))
            }
            WatchTarget::Prefix(prefix) => self.read_prefix(prefix).await,
        }
    }

    async fn read_prefix(&self, prefix: &Prefix) -> Result<RangeRead> {
        let start = prefix.key_start();
        for restarts in 0..=MAX_RESTARTS {
            match self.read_pages(prefix, &start).await? {
                Ok(mut read) => {
                    read.how.restarts = restarts;
                    if read.how.pages > 1 {
                        tracing::trace!(
                            prefix = prefix.as_str(),
                            pages = read.how.pages,
                            log_entries = read.how.log_entries,
                            rolled_forward = read.how.rolled_forward,
                            restarts,
                            "read a prefix in pages"
                        );
                    }
                    return Ok(read);
                }
                Err(why) => {
                    tracing::debug!(prefix = prefix.as_str(), ?why, "paged read starts again");
                }
            }
        }
        tracing::debug!(
            prefix = prefix.as_str(),
            "paged reads kept failing; reading the range in one call"
        );
        let page = self.page("prefix", &start, "", 0, 0).await?;
        Ok(page.into_read(ReadStats {
            pages: 1,
            restarts: MAX_RESTARTS + 1,
            one_shot: true,
            ..ReadStats::default()
        }))
    }

    /// One paged attempt: `Ok(Err(why))` when it must start again.
    async fn read_pages(
        &self,
        prefix: &Prefix,
        start: &str,
    ) -> Result<std::result::Result<RangeRead, Restart>> {
        let target = WatchTarget::Prefix(prefix.clone());
        let mut page = self
            .page("prefix", start, "", PAGE_KEYS, PAGE_BYTES)
            .await?;
        let mut how = ReadStats {
            pages: 1,
            ..ReadStats::default()
        };
        let mut pairs = Vec::new();
        // Changes, logged after their page was read, to keys the pages before returned.
        let mut changed: BTreeMap<String, Option<KvPair>> = BTreeMap::new();
        loop {
            pairs.append(&mut page.pairs);
            let Some(after) = page.next.take() else {
                break;
            };
            let next = self
                .page("prefix", start, &after, PAGE_KEYS, PAGE_BYTES)
                .await?;
            how.pages += 1;
            if next.epoch != page.epoch {
                return Ok(Err(Restart::EpochChanged));
            }
            if next.revision < page.revision {
                return Ok(Err(Restart::RolledBack));
            }
            if next.revision > page.revision {
                let caught_up = self
                    .roll_forward(&page, next.revision, &target, &after, &mut changed)
                    .await?;
                match caught_up {
                    Ok(entries) => how.log_entries += entries,
                    Err(why) => return Ok(Err(why)),
                }
                if how.log_entries > MAX_LOG_ENTRIES {
                    return Ok(Err(Restart::TooManyChanges));
                }
            }
            page = next;
        }
        how.rolled_forward = changed.len();
        page.pairs = merge(pairs, changed);
        Ok(Ok(page.into_read(how)))
    }

    /// Record in `changed` every change of the change log after `from`'s revision up to
    /// `to` to a key of `target` up to `last_read` (the keys the pages so far returned).
    /// Returns the number of entries read, or why the log cannot tell.
    async fn roll_forward(
        &self,
        from: &Page,
        to: u64,
        target: &WatchTarget,
        last_read: &str,
        changed: &mut BTreeMap<String, Option<KvPair>>,
    ) -> Result<std::result::Result<usize, Restart>> {
        let timeout = self.config.request_timeout;
        let stream = self.stream_key();
        let end = format!("{to}-{}", u64::MAX);
        let mut first = format!("({}-{}", from.revision, u64::MAX);
        let mut position = from.revision;
        let mut pending = Pending::default();
        let mut read = 0;
        loop {
            let range = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&first)
                .arg(&end)
                .arg("COUNT")
                .arg(LOG_READ_COUNT)
                .clone();
            let reply: StreamRangeReply = if read == 0 {
                // With the first read, the first entry of `from`'s revision: its tip
                // tells whether the log is still the history the page was read from.
                let reading = &redis::pipe()
                    .cmd("XRANGE")
                    .arg(&stream)
                    .arg(format!("{}-0", from.revision))
                    .arg(format!("{}-0", from.revision))
                    .add_command(range)
                    .clone();
                let (at_from, reply): (StreamRangeReply, StreamRangeReply) = self
                    .connection
                    .run_idempotent(|mut link| async move { reading.query_async(&mut link).await })
                    .await
                    .map_err(|e| from_redis("list", e, timeout))?;
                let tip = at_from.ids.first().and_then(|e| e.get::<String>("tip"));
                if tip.is_some_and(|tip| !from.tip.is_empty() && tip != from.tip) {
                    return Ok(Err(Restart::LogGap));
                }
                reply
            } else {
                let reading = &range;
                self.connection
                    .run_idempotent(|mut link| async move { reading.query_async(&mut link).await })
                    .await
                    .map_err(|e| from_redis("list", e, timeout))?
            };
            read += reply.ids.len();
            let entries: Vec<Decoded> = reply.ids.into_iter().map(decode).collect();
            for decoded in &entries {
                let (entry, event) = match decoded.read(self.area, target) {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, "a malformed change log entry; reading again");
                        return Ok(Err(Restart::LogGap));
                    }
                };
                if !pending.continues(entry, position) {
                    return Ok(Err(Restart::LogGap));
                }
                let Some(events) = pending.push(entry, event) else {
                    continue;
                };
                position = entry.id.revision;
                for event in events {
                    let (key, pair) = match event {
                        WatchEvent::Put(pair) => (pair.key.clone(), Some(pair)),
                        WatchEvent::Delete { key, .. } => (key, None),
                        _ => continue,
                    };
                    if key.as_str() <= last_read {
                        changed.insert(key, pair);
                    }
                }
            }
            match entries.last() {
                Some(last) if entries.len() == LOG_READ_COUNT && read <= MAX_LOG_ENTRIES => {
                    first = format!("({}", last.id);
                }
                _ => break,
            }
        }
        if position == to && pending.is_empty() {
            Ok(Ok(read))
        } else if read > MAX_LOG_ENTRIES {
            Ok(Err(Restart::TooManyChanges))
        } else {
            Ok(Err(Restart::LogGap))
        }
    }

    /// One `range` call: a key (`mode` "key"), or up to `most_keys` keys and about
    /// `most_bytes` (0: no bound) of the range of keys starting with `start`, after the
    /// key `after` ('' from the beginning).
    async fn page(
        &self,
        mode: &str,
        start: &str,
        after: &str,
        most_keys: usize,
        most_bytes: usize,
    ) -> Result<Page> {
        let (most_keys, most_bytes) = (most_keys.to_string(), most_bytes.to_string());
        let reply = self
            .run(
                "range",
                &self.scripts.range,
                &[
                    self.area.as_bytes(),
                    mode.as_bytes(),
                    start.as_bytes(),
                    after.as_bytes(),
                    most_keys.as_bytes(),
                    most_bytes.as_bytes(),
                ],
            )
            .await?;
        parse_page(&reply).ok_or_else(|| unexpected("range", format!("unexpected reply {reply:?}")))
    }
}

/// A `range` reply: `{revision, epoch, tip, next, pair...}`.
fn parse_page(reply: &Value) -> Option<Page> {
    let items = reply.items()?;
    let revision = u64::try_from(items.first()?.int()?).ok()?;
    let next = items.get(3)?.text()?;
    Some(Page {
        revision,
        epoch: items.get(1)?.text()?,
        tip: items.get(2)?.text()?,
        next: (!next.is_empty()).then_some(next),
        pairs: items.iter().skip(4).filter_map(parse_pair).collect(),
    })
}

/// A pair from a script's `{key, value, revision, create_revision, lease}`.
fn parse_pair(value: &Value) -> Option<KvPair> {
    let items = value.items()?;
    let lease = items.get(4)?.int().filter(|l| *l != 0).map(LeaseId);
    Some(KvPair {
        key: items.first()?.text()?,
        value: Bytes::from(items.get(1)?.bytes()?),
        revision: u64::try_from(items.get(2)?.int()?).ok()?,
        create_revision: u64::try_from(items.get(3)?.int()?).ok()?,
        lease,
    })
}

/// `pairs` (sorted by key, each key once) with `changed` applied: a pair replaces the
/// one of its key or is added in key order, `None` removes the key.
fn merge(pairs: Vec<KvPair>, changed: BTreeMap<String, Option<KvPair>>) -> Vec<KvPair> {
    if changed.is_empty() {
        return pairs;
    }
    let mut out = Vec::with_capacity(pairs.len() + changed.len());
    let mut changes = changed.into_iter().peekable();
    for pair in pairs {
        while let Some((_, change)) = changes.next_if(|(key, _)| *key < pair.key) {
            out.extend(change);
        }
        match changes.next_if(|(key, _)| *key == pair.key) {
            Some((_, change)) => out.extend(change),
            None => out.push(pair),
        }
    }
    out.extend(changes.filter_map(|(_, change)| change));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use kvstore_core::{PutOptions, Store, Txn, TxnOp, WatchFrom};
    use kvstore_testkit::server::shared_redis;
    use kvstore_testsuite::{WAIT, next_item, unique_namespace};

    use crate::RedisConfig;

    fn pair(key: &str, revision: u64) -> KvPair {
        KvPair {
            key: key.to_owned(),
            value: Bytes::from(format!("{key}@{revision}")),
            revision,
            create_revision: revision,
            lease: None,
        }
    }

    #[test]
    fn merge_replaces_adds_and_removes_in_key_order() {
        let pairs = vec![pair("a", 1), pair("c", 1), pair("e", 1)];
        let changed = BTreeMap::from([
            ("0".to_owned(), Some(pair("0", 2))),
            ("b".to_owned(), Some(pair("b", 3))),
            ("c".to_owned(), None),
            ("e".to_owned(), Some(pair("e", 4))),
            ("f".to_owned(), None),
            ("g".to_owned(), Some(pair("g", 5))),
        ]);
        let merged = merge(pairs, changed);
        let got: Vec<(&str, u64)> = merged
            .iter()
            .map(|p| (p.key.as_str(), p.revision))
            .collect();
        assert_eq!(
            got,
            [("0", 2), ("a", 1), ("b", 3), ("e", 4), ("g", 5)],
            "changes applied in key order"
        );
    }

    async fn store(history_capacity: usize) -> RedisStore {
        let mut config = RedisConfig::new(shared_redis().url());
        config.namespace = unique_namespace();
        config.history_capacity = history_capacity;
        RedisStore::connect(config).await.unwrap()
    }

    fn prefix(name: &str) -> WatchTarget {
        WatchTarget::Prefix(Prefix::new(name).unwrap())
    }

    /// Write `count` keys `{name}/00000`… in transactions of 100 puts.
    async fn fill(store: &RedisStore, name: &str, count: usize, value: &[u8]) {
        let batches: Vec<Txn> = (0..count)
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|chunk| {
                Txn::new().and_then(chunk.iter().map(|i| {
                    TxnOp::put(
                        format!("{name}/{i:05}"),
                        Bytes::copy_from_slice(value),
                        PutOptions::default(),
                    )
                }))
            })
            .collect();
        futures::stream::iter(batches)
            .map(|txn| store.txn(txn))
            .buffer_unordered(8)
            .for_each(|done| async move {
                done.unwrap();
            })
            .await;
    }

    /// Every change the log holds for `target`, in order, with its revision.
    async fn history(store: &RedisStore, target: &WatchTarget) -> Vec<(u64, WatchEvent)> {
        let mut link = store
            .endpoint
            .connect(crate::connection::Purpose::Requests)
            .await
            .unwrap();
        let mut changes = Vec::new();
        let mut first = "-".to_owned();
        loop {
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(store.stream_key())
                .arg(&first)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut link)
                .await
                .unwrap();
            let entries: Vec<Decoded> = reply.ids.into_iter().map(decode).collect();
            for decoded in &entries {
                let (entry, event) = decoded.read(store.area, target).unwrap();
                if let Some(event) = event {
                    changes.push((entry.id.revision, event));
                }
            }
            match entries.last() {
                Some(last) => first = format!("({}", last.id),
                None => return changes,
            }
        }
    }

    /// Apply `event` to `state`.
    fn apply(state: &mut BTreeMap<String, KvPair>, event: WatchEvent) {
        match event {
            WatchEvent::Put(pair) => {
                state.insert(pair.key.clone(), pair);
            }
            WatchEvent::Delete { key, .. } => {
                state.remove(&key);
            }
            other => panic!("not a change: {other:?}"),
        }
    }

    /// A list of 20,000 keys is read in pages of at most [`PAGE_KEYS`] while two writers
    /// update, create and delete keys in it (and write elsewhere) as fast as they can;
    /// every read is exactly the prefix as the change log has it at the read's revision
    /// (every pair, and no other, existed as returned at that revision), and at least
    /// one read had to roll keys it had already returned forward. A watch started in the
    /// middle of it (its snapshot is such a read) plus its events ends at the final state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_20k_key_prefix_is_read_in_pages_at_one_revision_while_writers_write() {
        const KEYS: usize = 20_000;
        let store = store(10_000_000).await;
        fill(&store, "big", KEYS, b"initial").await;
        let target = prefix("big");

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let i = rand::random_range(0..KEYS + KEYS / 4);
                        let value = Bytes::from(format!("w{writer}-{n}"));
                        let written = match n % 4 {
                            0 => store.delete(&format!("big/{i:05}")).await,
                            1 => store
                                .put(&format!("other/{i}"), value, PutOptions::default())
                                .await
                                .map(drop),
                            _ => store
                                .put(&format!("big/{i:05}"), value, PutOptions::default())
                                .await
                                .map(drop),
                        };
                        written.unwrap();
                    }
                    n
                })
            })
            .collect();

        let mut watch = store
            .watch_prefix_events("big", WatchFrom::Snapshot)
            .await
            .unwrap();
        let mut reads = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reads.iter().any(|r: &RangeRead| r.how.rolled_forward > 0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no read had to roll forward within {WAIT:?}"
            );
            let read = store.read(&target).await.unwrap();
            let how = read.how;
            assert!(
                !how.one_shot
                    && how.pages > 1
                    && how.pages * PAGE_KEYS + how.rolled_forward >= read.pairs.len(),
                "read in pages of at most {PAGE_KEYS} keys: {how:?}, {} pairs",
                read.pairs.len()
            );
            reads.push(read);
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            assert!(writer.await.unwrap() > 0);
        }

        let changes = history(&store, &target).await;
        reads.sort_by_key(|r| r.revision);
        let mut state = BTreeMap::new();
        let mut changes = changes.into_iter().peekable();
        for read in &reads {
            while let Some((_, event)) = changes.next_if(|(revision, _)| *revision <= read.revision)
            {
                apply(&mut state, event);
            }
            let expected: Vec<&KvPair> = state.values().collect();
            let got: Vec<&KvPair> = read.pairs.iter().collect();
            assert!(
                got == expected,
                "the read at revision {} ({:?}) is not the prefix at that revision: {} pairs, expected {}",
                read.revision,
                read.how,
                got.len(),
                expected.len()
            );
        }
        // Everything after the last read, then the watch: its snapshot and events end
        // at the final state.
        for (_, event) in changes {
            apply(&mut state, event);
        }
        let last_change = state.values().map(|p| p.revision).max().unwrap_or(0);
        let mut watched = BTreeMap::new();
        let mut at = 0;
        let final_revision = history(&store, &target)
            .await
            .last()
            .map_or(0, |(revision, _)| *revision);
        assert!(final_revision >= last_change);
        while at < final_revision {
            match next_item(&mut watch, "the watch catches up").await {
                WatchEvent::Snapshot(snapshot) => {
                    at = snapshot.revision;
                    watched = snapshot
                        .pairs
                        .into_iter()
                        .map(|p| (p.key.clone(), p))
                        .collect();
                }
                event @ (WatchEvent::Put(_) | WatchEvent::Delete { .. }) => {
                    at = match &event {
                        WatchEvent::Put(pair) => pair.revision,
                        WatchEvent::Delete { revision, .. } => *revision,
                        _ => at,
                    };
                    apply(&mut watched, event);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(watched == state, "the watch ends at the final state");
    }

    /// Rolling forward applies exactly the logged changes to keys already read, and
    /// gives up when the log no longer tells: another history's tip at the page's
    /// revision, or entries trimmed away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolling_forward_applies_changes_to_read_keys_and_detects_gaps() {
        let store = store(1_000).await;
        let target = prefix("p");
        for key in ["p/a", "p/c", "p/x"] {
            store
                .put(key, Bytes::from("0"), PutOptions::default())
                .await
                .unwrap();
        }
        let page = store.page("prefix", "p/", "", PAGE_KEYS, 0).await.unwrap();
        store.delete("p/a").await.unwrap();
        let b = store
            .put("p/b", Bytes::from("1"), PutOptions::default())
            .await
            .unwrap();
        store
            .put("q/b", Bytes::from("elsewhere"), PutOptions::default())
            .await
            .unwrap();
        let last = store
            .put(
                "p/y",
                Bytes::from("after the keys read"),
                PutOptions::default(),
            )
            .await
            .unwrap();

        let mut changed = BTreeMap::new();
        let entries = store
            .roll_forward(&page, last.revision, &target, "p/m", &mut changed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entries, 4, "every entry after the page's revision is read");
        assert_eq!(
            changed,
            BTreeMap::from([("p/a".to_owned(), None), ("p/b".to_owned(), Some(b))]),
            "only changes to keys up to p/m"
        );

        let other_history = Page {
            tip: "another-call".to_owned(),
            ..store.page("prefix", "p/", "", PAGE_KEYS, 0).await.unwrap()
        };
        store
            .put("p/z", Bytes::from("1"), PutOptions::default())
            .await
            .unwrap();
        let mut changed = BTreeMap::new();
        let rolled = store
            .roll_forward(
                &other_history,
                other_history.revision + 1,
                &target,
                "p/m",
                &mut changed,
            )
            .await
            .unwrap();
        assert!(matches!(rolled, Err(Restart::LogGap)), "{rolled:?}");

        let _: () = redis::cmd("XTRIM")
            .arg(store.stream_key())
            .arg("MAXLEN")
            .arg(0)
            .query_async(
                &mut store
                    .endpoint
                    .connect(crate::connection::Purpose::Requests)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        let rolled = store
            .roll_forward(&page, last.revision, &target, "p/m", &mut BTreeMap::new())
            .await
            .unwrap();
        assert!(matches!(rolled, Err(Restart::LogGap)), "{rolled:?}");
    }

    /// A page holds at most [`PAGE_BYTES`] of keys and values (and at least one key), so
    /// large values make more, smaller pages, and a prefix read still returns them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_are_bounded_in_bytes() {
        let store = store(1_000).await;
        let value = vec![7u8; 1 << 20];
        for i in 0..10 {
            store
                .put(
                    &format!("large/{i}"),
                    Bytes::from(value.clone()),
                    PutOptions::default(),
                )
                .await
                .unwrap();
        }
        let read = store.read(&prefix("large")).await.unwrap();
        assert_eq!(read.pairs.len(), 10);
        assert_eq!(
            read.how.pages, 3,
            "4 MiB pages of 1 MiB values: {:?}",
            read.how
        );
        let keys: Vec<&str> = read.pairs.iter().map(|p| p.key.as_str()).collect();
        let expected: Vec<String> = (0..10).map(|i| format!("large/{i}")).collect();
        assert_eq!(keys, expected);
    }
}
