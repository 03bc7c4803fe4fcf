//! Watch events and the libkv views built on them ([contract §5](crate::contract#5-watch)).
//!
//! Backends produce one thing: a stream of [`WatchEvent`] batches for a key or a prefix
//! ([`crate::backend::Backend::watch`]). The user-facing forms are built here, once:
//! [`crate::Store::watch`] (a key's value after each change),
//! [`crate::Store::watch_tree`] (the full list below a prefix after each change) and
//! [`crate::Store::watch_prefix_events`] (the events themselves).

use std::collections::BTreeMap;

use futures::stream::{self, BoxStream, StreamExt};

use crate::error::Result;
use crate::key::{Key, Prefix, is_valid_key};
use crate::pair::KvPair;

/// The full state of a watched key or prefix at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The store revision the snapshot was read at; events that follow are newer.
    pub revision: u64,
    /// Every pair of the target at `revision`, sorted by key.
    pub pairs: Vec<KvPair>,
}

/// One item of an event-level watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The state when the watch started (only with [`WatchFrom::Snapshot`]).
    Snapshot(Snapshot),
    /// History between the last delivered event and now was lost (etcd compaction,
    /// Redis stream trimmed, memory ring overflow): this is the full current state, and
    /// events continue after its revision. Consumers replace what they hold.
    Resync(Snapshot),
    /// A key was created or updated.
    Put(KvPair),
    /// A key was deleted (explicitly, by `delete_tree`, or by lease expiry or revocation).
    Delete {
        /// The deleted key, relative to the store's namespace.
        key: String,
        /// The revision of the delete.
        revision: u64,
    },
}

impl WatchEvent {
    /// The store revision this event brings the watcher to.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Snapshot(s) | WatchEvent::Resync(s) => s.revision,
            WatchEvent::Put(pair) => pair.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// Where an event-level watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// With a [`WatchEvent::Snapshot`] of the current state, read at the same revision
    /// the watch starts from, so nothing falls in between.
    Snapshot,
    /// With the first event whose revision is greater than this one (resuming after the
    /// last revision a consumer saw). If that history is gone the first item is a
    /// [`WatchEvent::Resync`].
    After(u64),
}

/// What a backend watch observes: one key, or every key strictly below a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchTarget {
    /// Exactly this key.
    Key(Key),
    /// Every key strictly below this prefix.
    Prefix(Prefix),
}

impl WatchTarget {
    /// Whether the normalised key `key` is watched by this target.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            WatchTarget::Key(k) => k.as_str() == key,
            WatchTarget::Prefix(p) => p.contains(key),
        }
    }
}

/// A backend's watch: batches that each hold whole revisions, in revision order.
pub type EventBatchStream = BoxStream<'static, Result<Vec<WatchEvent>>>;

/// The batches without events for keys that are not valid as written (another
/// namespace's lock bookkeeping, keys another tool wrote that break the key rules):
/// reads and watches never return them ([contract §1](crate::contract#1-keys-values-and-namespaces)). A batch left empty is
/// dropped.
pub(crate) fn only_valid_keys(batches: EventBatchStream) -> EventBatchStream {
    batches
        .filter_map(|batch| {
            futures::future::ready(match batch {
                Err(e) => Some(Err(e)),
                Ok(mut events) => {
                    events.retain_mut(|event| match event {
                        WatchEvent::Snapshot(s) | WatchEvent::Resync(s) => {
                            s.pairs.retain(|p| is_valid_key(&p.key));
                            true
                        }
                        WatchEvent::Put(pair) => is_valid_key(&pair.key),
                        WatchEvent::Delete { key, .. } => is_valid_key(key),
                    });
                    (!events.is_empty()).then_some(Ok(events))
                }
            })
        })
        .boxed()
}

/// The event-level view: batches flattened into single events.
pub(crate) fn event_view(batches: EventBatchStream) -> BoxStream<'static, Result<WatchEvent>> {
    batches
        .flat_map(|batch| match batch {
            Ok(events) => stream::iter(events.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
}

/// libkv's `Watch`: the key's value now, then after every change (`None` when absent).
pub(crate) fn key_view(batches: EventBatchStream) -> BoxStream<'static, Result<Option<KvPair>>> {
    event_view(batches)
        .map(|event| {
            event.map(|event| match event {
                WatchEvent::Snapshot(s) | WatchEvent::Resync(s) => s.pairs.into_iter().next(),
                WatchEvent::Put(pair) => Some(pair),
                WatchEvent::Delete { .. } => None,
            })
        })
        .boxed()
}

/// libkv's `WatchTree`: the full sorted list now, then after every revision that touched
/// the prefix (one list per revision, however many keys it changed).
pub(crate) fn tree_view(batches: EventBatchStream) -> BoxStream<'static, Result<Vec<KvPair>>> {
    batches
        .scan(BTreeMap::<String, KvPair>::new(), |state, batch| {
            let lists: Vec<Result<Vec<KvPair>>> = match batch {
                Err(e) => vec![Err(e)],
                Ok(events) => {
                    let mut lists = Vec::new();
                    let mut events = events.into_iter().peekable();
                    while let Some(event) = events.next() {
                        let revision = event.revision();
                        apply(state, event);
                        if events.peek().is_none_or(|next| next.revision() != revision) {
                            lists.push(Ok(state.values().cloned().collect()));
                        }
                    }
                    lists
                }
            };
            futures::future::ready(Some(stream::iter(lists)))
        })
        .flatten()
        .boxed()
}

fn apply(state: &mut BTreeMap<String, KvPair>, event: WatchEvent) {
    match event {
        WatchEvent::Snapshot(s) | WatchEvent::Resync(s) => {
            *state = s.pairs.into_iter().map(|p| (p.key.clone(), p)).collect();
        }
        WatchEvent::Put(pair) => {
            state.insert(pair.key.clone(), pair);
        }
        WatchEvent::Delete { key, .. } => {
            state.remove(&key);
        }
    }
}

/// One backend's watch connection, driven by [`resuming`]: each step reads a snapshot,
/// (re)connects, or reads one response.
#[async_trait::async_trait]
pub trait WatchSource: Send + 'static {
    /// One step. `Ok(Some(batch))` is delivered; `Ok(None)` is progress with nothing to
    /// deliver yet; `Err` means the connection failed: [`resuming`] calls
    /// [`WatchSource::reset`], waits with backoff and steps again, resuming after the
    /// last delivered revision.
    ///
    /// The very first step must prove the watch works: read the snapshot (and start the
    /// server-side watch) for [`WatchFrom::Snapshot`], or connect for
    /// [`WatchFrom::After`]. [`resuming`] returns its error to the caller.
    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>>;

    /// Forget the broken connection and anything partly read, keeping the position.
    fn reset(&mut self);
}

/// First delay before resuming a failed watch.
pub const RESUME_MIN_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// Longest delay between attempts to resume a failed watch.
pub const RESUME_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// Start a [`WatchSource`] and return its stream, which never ends on a connection
/// failure afterwards.
///
/// The first step (reading the snapshot, or connecting for a watch that starts after a
/// revision) runs before this returns, and its failure is returned as the error: a
/// watch on an unreachable server fails within the backend's request timeout instead of
/// waiting forever ([contract §7](crate::contract#7-errors) "never hangs"). From then on the stream resumes
/// by itself with jittered backoff ([`RESUME_MIN_DELAY`] to [`RESUME_MAX_DELAY`]) and
/// ends only when dropped or when `shutdown` is cancelled (the store closed).
/// Authentication failures are yielded as `Err` items (§5), and resuming goes on, since
/// credentials may be restored.
///
/// # Errors
/// The first step's error; [`crate::Error::Closed`] when `shutdown` is already cancelled.
pub async fn resuming<S: WatchSource>(
    mut source: S,
    shutdown: tokio_util::sync::CancellationToken,
    backend: &'static str,
) -> Result<EventBatchStream> {
    let first = tokio::select! {
        () = shutdown.cancelled() => return Err(crate::Error::Closed { backend }),
        step = source.step() => step?,
    };
    let rest = resume(source, shutdown, backend);
    Ok(match first {
        Some(batch) => stream::once(async move { Ok(batch) }).chain(rest).boxed(),
        None => rest,
    })
}

fn resume<S: WatchSource>(
    source: S,
    shutdown: tokio_util::sync::CancellationToken,
    backend: &'static str,
) -> EventBatchStream {
    let delays: Box<dyn Iterator<Item = std::time::Duration> + Send + Sync> =
        Box::new(crate::retry::backoff(RESUME_MIN_DELAY, RESUME_MAX_DELAY));
    stream::unfold((source, delays), move |(mut source, mut delays)| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                let step = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    step = source.step() => step,
                };
                match step {
                    Ok(Some(batch)) => {
                        if batch
                            .iter()
                            .any(|event| matches!(event, WatchEvent::Resync(_)))
                        {
                            metrics::counter!("kvstore_watch_resyncs_total", "backend" => backend)
                                .increment(1);
                        }
                        delays =
                            Box::new(crate::retry::backoff(RESUME_MIN_DELAY, RESUME_MAX_DELAY));
                        return Some((Ok(batch), (source, delays)));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(backend, %error, "watch failed; resuming");
                        metrics::counter!("kvstore_watch_reconnects_total", "backend" => backend)
                            .increment(1);
                        source.reset();
                        let delay = delays.next().unwrap_or(RESUME_MAX_DELAY);
                        tokio::select! {
                            () = shutdown.cancelled() => return None,
                            () = tokio::time::sleep(delay) => {}
                        }
                        if matches!(error, crate::Error::Auth { .. }) {
                            return Some((Err(error), (source, delays)));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}
