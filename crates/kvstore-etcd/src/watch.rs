//! Watches that never lose an event: read a snapshot and start the etcd watch at the
//! revision after it; on a dropped stream (connection reset, server restart, member
//! killed) re-create the watch from the last delivered revision + 1 with backoff; when
//! etcd reports the start revision compacted, read the current state and yield it as a
//! `Resync`.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use futures::StreamExt;
use kvstore_core::{Error, EventBatchStream, Result, Snapshot, WatchEvent, WatchFrom, WatchTarget};
use std::time::Duration;

use crate::store::{EtcdStore, revision};

/// First delay before re-creating a failed watch.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts to re-create a failed watch.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(3);

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

struct Watcher {
    store: EtcdStore,
    target: WatchTarget,
    /// What to deliver first, before any event.
    start: Start,
    /// The first revision not yet delivered.
    next: u64,
    stream: Option<WatchStream>,
    retry: ExponentialBackoff,
}

#[derive(PartialEq)]
enum Start {
    Snapshot,
    Resync,
    Events,
}

pub(crate) fn subscribe(
    store: EtcdStore,
    target: WatchTarget,
    from: WatchFrom,
) -> EventBatchStream {
    let (start, next) = match from {
        WatchFrom::Snapshot => (Start::Snapshot, 0),
        WatchFrom::After(revision) => (Start::Events, revision + 1),
    };
    let watcher = Watcher {
        store,
        target,
        start,
        next,
        stream: None,
        retry: backoff(),
    };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let batch = watcher.next_batch().await?;
        Some((batch, watcher))
    })
    .boxed()
}

impl Watcher {
    /// The next batch, or `None` once the store is closed.
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        let shutdown = self.store.shutdown_token().clone();
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                attempt = self.step() => attempt,
            };
            match attempt {
                Ok(Some(batch)) => {
                    self.retry = backoff();
                    return Some(Ok(batch));
                }
                Ok(None) => {}
                Err(error) => {
                    self.stream = None;
                    let unrecoverable = matches!(error, Error::Auth { .. });
                    tracing::debug!(%error, next = self.next, "etcd watch failed; resuming");
                    let delay = self.retry.next().unwrap_or(RETRY_MAX_DELAY);
                    if unrecoverable {
                        // Say so, then keep trying: credentials may be restored.
                        tokio::select! {
                            () = shutdown.cancelled() => return None,
                            () = tokio::time::sleep(delay) => {}
                        }
                        return Some(Err(error));
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One step: a snapshot, a (re)connect, or one response. `Ok(None)` means nothing
    /// to deliver yet.
    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        if self.start != Start::Events {
            let (pairs, read_at) = self.store.read(&self.target).await?;
            let snapshot = Snapshot {
                revision: read_at,
                pairs,
            };
            self.next = read_at + 1;
            self.stream = None;
            let event = match std::mem::replace(&mut self.start, Start::Events) {
                Start::Snapshot => WatchEvent::Snapshot(snapshot),
                _ => WatchEvent::Resync(snapshot),
            };
            return Ok(Some(vec![event]));
        }
        let Some(stream) = self.stream.as_mut() else {
            self.stream = Some(self.open().await?);
            return Ok(None);
        };
        let response = stream
            .message()
            .await
            .map_err(|e| crate::error::from_etcd("watch", e))?;
        match response {
            None => {
                self.stream = None;
                Err(Error::Unavailable {
                    backend: crate::BACKEND,
                    operation: "watch",
                    message: "the watch stream ended".into(),
                    source: None,
                })
            }
            Some(response) => Ok(self.handle(response)),
        }
    }

    async fn open(&self) -> Result<WatchStream> {
        let start = i64::try_from(self.next).unwrap_or(i64::MAX);
        let (key, options) = match &self.target {
            WatchTarget::Key(key) => (
                self.store.etcd_key(key.as_str()),
                WatchOptions::new().with_start_revision(start),
            ),
            WatchTarget::Prefix(prefix) => (
                self.store.etcd_key(&prefix.key_start()),
                WatchOptions::new().with_start_revision(start).with_prefix(),
            ),
        };
        self.store
            .call("watch", |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.watch(key, Some(options)).await }
            })
            .await
    }

    fn handle(&mut self, response: WatchResponse) -> Option<Vec<WatchEvent>> {
        if response.compact_revision() > 0 {
            // History we have not delivered is gone: resync from the current state.
            self.start = Start::Resync;
            self.stream = None;
            return None;
        }
        if response.canceled() {
            self.stream = None;
            return None;
        }
        let events: Vec<WatchEvent> = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                match event.event_type() {
                    EventType::Put => self.store.pair(kv).map(WatchEvent::Put),
                    EventType::Delete => {
                        let pair = self.store.pair(kv)?;
                        Some(WatchEvent::Delete {
                            key: pair.key,
                            revision: revision(kv.mod_revision()),
                        })
                    }
                }
            })
            .collect();
        let last = events.last()?.revision();
        self.next = last + 1;
        Some(events)
    }
}
