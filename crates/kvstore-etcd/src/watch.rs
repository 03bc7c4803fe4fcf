//! Watches that never lose an event: read a snapshot and start the etcd watch at the
//! revision after it; on a dropped stream (connection reset, server restart, member
//! killed) re-create the watch from the last delivered revision + 1 with backoff; when
//! etcd reports the start revision compacted, read the current state and yield it as a
//! `Resync`. etcd cancels a watch it will not serve (permission denied, which is also
//! how etcd 3.4 answers a watch sent with an expired auth token): the watcher
//! authenticates again once and retries; a cancel that persists is yielded as an
//! `Auth` error item and retried with backoff, and any other cancel is retried with
//! backoff, never in a tight loop.

use async_trait::async_trait;
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use kvstore_core::backend::{EventBatchStream, WatchSource, WatchTarget, resuming};
use kvstore_core::{Error, Result, Snapshot, WatchEvent, WatchFrom};

use crate::BACKEND;
use crate::store::{EtcdStore, Resend, revision};

struct Watcher {
    store: EtcdStore,
    target: WatchTarget,
    /// What to deliver first, before any event.
    start: Start,
    /// The first revision not yet delivered.
    next: u64,
    stream: Option<WatchStream>,
    /// Whether the token was refreshed for a cancel since the watch last worked.
    refreshed: bool,
}

#[derive(PartialEq)]
enum Start {
    Snapshot,
    Resync,
    Events,
}

pub(crate) async fn subscribe(
    store: EtcdStore,
    target: WatchTarget,
    from: WatchFrom,
) -> Result<EventBatchStream> {
    let (start, next) = match from {
        WatchFrom::Snapshot => (Start::Snapshot, 0),
        WatchFrom::After(revision) => (Start::Events, revision.saturating_add(1)),
    };
    let shutdown = store.shutdown_token().clone();
    let watcher = Watcher {
        store,
        target,
        start,
        next,
        stream: None,
        refreshed: false,
    };
    resuming(watcher, shutdown, BACKEND).await
}

#[async_trait]
impl WatchSource for Watcher {
    /// One step: a snapshot, a (re)connect, or one response. `Ok(None)` means nothing
    /// to deliver yet.
    async fn step(&mut self) -> Result<Option<Vec<WatchEvent>>> {
        if self.start != Start::Events {
            // The snapshot and the watch's start share one request timeout.
            let deadline = self.store.deadline();
            let (pairs, read_at) = self.store.read_until(&self.target, deadline).await?;
            let snapshot = Snapshot {
                revision: read_at,
                pairs,
            };
            self.next = read_at + 1;
            // The watch is running before the snapshot is handed out, so a consumer
            // that has the snapshot is already being sent every later change.
            self.stream = Some(self.open(deadline).await?);
            let event = match std::mem::replace(&mut self.start, Start::Events) {
                Start::Snapshot => WatchEvent::Snapshot(snapshot),
                _ => WatchEvent::Resync(snapshot),
            };
            return Ok(Some(vec![event]));
        }
        let Some(stream) = self.stream.as_mut() else {
            self.stream = Some(self.open(self.store.deadline()).await?);
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
            Some(response) => self.handle(response).await,
        }
    }

    fn reset(&mut self) {
        self.stream = None;
    }
}

impl Watcher {
    async fn open(&self, deadline: tokio::time::Instant) -> Result<WatchStream> {
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
            .call_until("watch", Resend::Read, deadline, |mut clients| {
                let (key, options) = (key.clone(), options.clone());
                async move { clients.watch.watch(key, Some(options)).await }
            })
            .await
    }

    async fn handle(&mut self, response: WatchResponse) -> Result<Option<Vec<WatchEvent>>> {
        if response.compact_revision() > 0 {
            // History we have not delivered is gone: resync from the current state.
            self.start = Start::Resync;
            self.stream = None;
            return Ok(None);
        }
        if response.canceled() {
            self.stream = None;
            return self.cancelled(response.cancel_reason()).await;
        }
        if response.created() {
            self.refreshed = false;
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
        let Some(last) = events.last().map(WatchEvent::revision) else {
            return Ok(None);
        };
        self.next = last + 1;
        self.refreshed = false;
        Ok(Some(events))
    }

    /// etcd cancelled the watch for `reason` (other than compaction). An error makes
    /// [`resuming`] back off before the watch is opened again.
    async fn cancelled(&mut self, reason: &str) -> Result<Option<Vec<WatchEvent>>> {
        let refused = reason.contains("permission denied") || reason.contains("auth");
        if refused {
            // etcd 3.4 checks the token only when a watch is created and reports an
            // expired one as "permission denied": authenticate again on every refusal
            // (the backoff between attempts bounds the rate), so a watch recovers once
            // credentials or permissions are back; the first time, reopen at once.
            let first = !self.refreshed;
            self.refreshed = true;
            self.store.refresh_token().await?;
            if first {
                return Ok(None);
            }
        }
        let message = format!("etcd cancelled the watch: {reason}");
        Err(if refused {
            Error::Auth {
                backend: BACKEND,
                operation: "watch",
                message,
            }
        } else {
            Error::Unavailable {
                backend: BACKEND,
                operation: "watch",
                message,
                source: None,
            }
        })
    }
}
