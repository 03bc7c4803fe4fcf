//! The store's one reader of its change stream, shared by all its watchers.
//!
//! A store (with its clones and its lock area) runs at most one `XREAD BLOCK` loop, on
//! one connection, and broadcasts every batch of entries it reads to the watchers
//! subscribed to it. However many watchers a store has, it holds two connections: the
//! request connection and this one. A watcher reads what it missed (before it
//! subscribed, or after it fell behind the broadcast's buffer) with plain `XRANGE`
//! requests, so nothing is lost; the reader only carries what is new. The reader decodes
//! each entry once for all watchers (see `watch::Decoded`): a watcher copies nothing out
//! of an entry to a key it does not watch.
//!
//! The reader starts with the first subscriber and stops when the last one is gone (or
//! the store is closed). Its connection reads with a response timeout of
//! [`crate::WATCH_BLOCK`] + the request timeout, so a silent server is noticed and the
//! reader reconnects, telling every watcher to check its history again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::connection::{Endpoint, Link, Purpose};
use crate::layout;
use crate::store::RedisStore;
use crate::watch::{Decoded, EntryId, READ_COUNT, WATCH_BLOCK, WATCH_CLIENT_NAME, decode};

/// Batches the broadcast keeps for a watcher that is busy; one that falls further behind
/// catches up with `XRANGE` (losing nothing).
const BUFFERED_BATCHES: usize = 1024;

/// What the reader sends its watchers.
#[derive(Clone)]
pub(crate) enum Delivery {
    /// Entries read from the stream: one batch shared by every watcher.
    Entries(Arc<Batch>),
    /// The reader's connection failed and was made again: entries may have been missed
    /// by the broadcast (never by the stream), so watchers check and catch up.
    Reconnected,
}

/// Entries one read of the stream returned.
pub(crate) struct Batch {
    /// The data epoch read with them.
    pub(crate) epoch: Option<String>,
    /// The entries in stream order, each decoded once here for every watcher, which
    /// only compares its area and key with its own unless the change is to a key it
    /// watches.
    pub(crate) entries: Vec<Decoded>,
}

/// Where a store's reader is, if it runs: a weak sender, so a reader whose last watcher
/// is gone can stop (and a later watch starts a new one).
#[derive(Default)]
pub(crate) struct Feed {
    reader: Mutex<Option<broadcast::WeakSender<Delivery>>>,
}

/// What the reader needs to know of its store.
pub(crate) struct Source {
    /// Where to connect.
    pub(crate) endpoint: Arc<Endpoint>,
    /// The change stream.
    pub(crate) stream_key: String,
    /// The key of the data epoch.
    pub(crate) epoch_key: String,
    /// Cancelled when the store closes.
    pub(crate) shutdown: CancellationToken,
}

impl Feed {
    /// A receiver of everything the store's reader reads from now on, starting the
    /// reader if none runs; a new reader starts after stream id `from` (the subscriber's
    /// position), so nothing between the subscription and the reader's first read can
    /// fall through.
    pub(crate) fn subscribe(
        &self,
        from: &str,
        source: impl FnOnce() -> Source,
    ) -> broadcast::Receiver<Delivery> {
        let mut reader = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = reader.as_ref().and_then(broadcast::WeakSender::upgrade) {
            return sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(BUFFERED_BATCHES);
        *reader = Some(sender.downgrade());
        tokio::spawn(read(source(), from.to_owned(), sender));
        receiver
    }
}

impl RedisStore {
    /// A receiver of the store's shared stream reader (started after stream id `from`
    /// if none runs).
    pub(crate) fn subscribe_feed(&self, from: &str) -> broadcast::Receiver<Delivery> {
        self.feed.subscribe(from, || Source {
            endpoint: self.endpoint.clone(),
            stream_key: layout::log(&self.config.namespace),
            epoch_key: layout::epoch(&self.config.namespace),
            shutdown: self.lifecycle.shutdown().clone(),
        })
    }
}

/// The reader: `XREAD BLOCK` after stream id `from`, broadcasting each batch, until no
/// watcher listens or the store closes.
///
/// On every new connection it reads the stream's top first and starts from there if the
/// top is below where it was (the server rolled back: restarted from an older snapshot,
/// or a lagging replica took over), since entries written again at those ids would
/// otherwise never be read; only then does it tell the watchers to check their history.
/// A failed connect, read or top is tried again after a backoff delay, never at once.
async fn read(source: Source, from: String, sender: broadcast::Sender<Delivery>) {
    let mut delays = fresh_delays();
    let mut last_id: Option<String> = Some(from);
    let mut seen_epoch: Option<String> = None;
    let mut connection: Option<Link> = None;
    // Read the top before the next read (a new connection, or new data).
    let mut check_top = true;
    // Tell the watchers to check their history once the top is read.
    let mut announce = false;
    loop {
        if sender.receiver_count() == 0 || source.shutdown.is_cancelled() {
            return;
        }
        let link = match connection.as_mut() {
            Some(link) => link,
            None => match connect(&source).await {
                Ok(link) => {
                    check_top = true;
                    connection.insert(link)
                }
                Err(error) => {
                    tracing::debug!(%error, "redis watch reader cannot connect; retrying");
                    if !pause(&source, &mut delays).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if check_top || last_id.is_none() {
            match top(link, &source.stream_key).await {
                Ok(top) => {
                    last_id = Some(match last_id.take() {
                        Some(id) if !is_after(&id, &top) => id,
                        _ => top,
                    });
                    check_top = false;
                    if std::mem::take(&mut announce) {
                        // Watchers catch up on whatever fell between the connections.
                        let _ = sender.send(Delivery::Reconnected);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "redis watch reader failed; reconnecting");
                    connection = None;
                    announce = true;
                    if !pause(&source, &mut delays).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(from) = last_id.clone() else {
            continue;
        };
        let pipeline = redis::pipe()
            .cmd("GET")
            .arg(&source.epoch_key)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(WATCH_BLOCK.as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&source.stream_key)
            .arg(&from)
            .clone();
        let reading = pipeline.query_async::<(Option<String>, Option<StreamReadReply>)>(link);
        let read = tokio::select! {
            () = source.shutdown.cancelled() => return,
            read = reading => read,
        };
        match read {
            Ok((epoch, reply)) => {
                delays = fresh_delays();
                if seen_epoch.is_some() && epoch != seen_epoch {
                    // The data was replaced (lost and written again): its stream is a new
                    // one, so start again from its top; watchers see the new epoch.
                    seen_epoch = epoch;
                    last_id = None;
                    announce = true;
                    continue;
                }
                seen_epoch = epoch.clone();
                let entries: Vec<Decoded> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(decode)
                    .collect();
                let Some(last) = entries.last() else {
                    continue;
                };
                last_id = Some(last.id.clone());
                let _ = sender.send(Delivery::Entries(Arc::new(Batch { epoch, entries })));
            }
            Err(error) => {
                tracing::debug!(%error, "redis watch reader failed; reconnecting");
                connection = None;
                announce = true;
                if !pause(&source, &mut delays).await {
                    return;
                }
            }
        }
    }
}

/// The reader's delays between failed attempts, from the start.
fn fresh_delays() -> impl Iterator<Item = Duration> {
    kvstore_core::backend::backoff(
        kvstore_core::backend::RESUME_MIN_DELAY,
        kvstore_core::backend::RESUME_MAX_DELAY,
    )
}

/// Wait the next of `delays`; `false` when the store closed meanwhile.
async fn pause(source: &Source, delays: &mut impl Iterator<Item = Duration>) -> bool {
    let delay = delays
        .next()
        .unwrap_or(kvstore_core::backend::RESUME_MAX_DELAY);
    tokio::select! {
        () = source.shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Whether stream id `id` comes after stream id `other`, compared as Redis orders ids
/// (numerically, revision then place); an id that does not parse is never after.
fn is_after(id: &str, other: &str) -> bool {
    match (EntryId::parse(id), EntryId::parse(other)) {
        (Some(id), Some(other)) => id > other,
        _ => false,
    }
}

async fn connect(source: &Source) -> redis::RedisResult<Link> {
    let mut link = source.endpoint.connect(Purpose::Watch).await?;
    // On a cluster a command without a key goes to an arbitrary node: not worth it.
    if !source.endpoint.is_cluster() {
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(WATCH_CLIENT_NAME)
            .exec_async(&mut link)
            .await?;
    }
    Ok(link)
}

/// The id of the stream's last entry now (`0-0` when it is empty): after the data was
/// replaced, the reader starts again after it; what came before is the watchers' to
/// catch up on.
async fn top(link: &mut Link, stream_key: &str) -> redis::RedisResult<String> {
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream_key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(link)
        .await?;
    Ok(last
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id))
}
