//! Watches that never lose an event: start the etcd watch at the current revision and
//! read the snapshot at that revision; on a dropped stream (connection reset, server
//! restart, member killed) re-create the watch from the last delivered revision + 1 with backoff; when
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
use crate::client::Resend;
use crate::read::revision;
use crate::store::EtcdStore;

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
            return self.snapshot().await.map(Some);
        }
        let Some(stream) = self.stream.as_mut() else {
            self.stream = Some(self.open(Some(self.next), self.store.deadline()).await?);
            return Ok(None);
        };
        let response = stream
            .message()
            .await
            .map_err(|e| crate::error::from_etcd("watch", e))?;
        match response {
            None => {
                self.stream = None;
                Err(stream_ended())
            }
            Some(response) => self.handle(response).await,
        }
    }

    fn reset(&mut self) {
        self.stream = None;
    }
}

impl Watcher {
    /// Start the watch and read the snapshot it starts from, both within one request
    /// timeout; returns the `Snapshot` (or `Resync`) to deliver.
    ///
    /// The watch is created first, at etcd's current revision W (the `created`
    /// response's header), and the snapshot is read at W: later events follow it with
    /// no gap and no duplicate. A watch created at a revision that has already passed
    /// would be served by etcd's catch-up pass, which runs only every 100 ms.
    async fn snapshot(&mut self) -> Result<Vec<WatchEvent>> {
        let deadline = self.store.deadline();
        let after = self.store.request_timeout();
        let timed_out = || Error::Timeout {
            operation: "watch",
            after,
        };
        let (stream, created) = loop {
            let mut stream = self.open(None, deadline).await?;
            let created = loop {
                let response = tokio::time::timeout_at(deadline, stream.message())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| crate::error::from_etcd("watch", e))?;
                match response {
                    Some(response) if response.created() || response.canceled() => {
                        break response;
                    }
                    Some(_) => {}
                    None => return Err(stream_ended()),
                }
            };
            if !created.canceled() {
                break (stream, created);
            }
            // Refused (e.g. an expired token on etcd 3.4): authenticate again and
            // create it once more; a second refusal is an error.
            let reason = created.cancel_reason().to_owned();
            tokio::time::timeout_at(deadline, self.cancelled(&reason))
                .await
                .map_err(|_| timed_out())??;
        };
        self.refreshed = false;
        // Without a header (never seen from etcd) the read is at the current revision,
        // which is no older than the watch's.
        let created_at = created.header().map_or(0, |h| revision(h.revision()));
        let (pairs, read_at) = self
            .store
            .read_until(
                &self.target,
                (created_at > 0).then_some(created_at),
                deadline,
            )
            .await?;
        if read_at < created_at {
            // Only a read at the current revision (after a compaction of W) can differ,
            // and a linearizable read is never older than a watch already created.
            return Err(Error::Unavailable {
                backend: BACKEND,
                operation: "watch",
                message: format!(
                    "etcd read the snapshot at revision {read_at}, before the watch's {created_at}"
                ),
                source: None,
            });
        }
        // The watch delivers every event after W; if the snapshot had to be read at a
        // newer revision (W compacted meanwhile), the events it already holds are skipped.
        self.next = read_at + 1;
        // The watch is running before the snapshot is handed out, so a consumer that
        // has the snapshot is already being sent every later change.
        self.stream = Some(stream);
        let snapshot = Snapshot {
            revision: read_at,
            pairs,
        };
        let mut batch = vec![match std::mem::replace(&mut self.start, Start::Events) {
            Start::Snapshot => WatchEvent::Snapshot(snapshot),
            _ => WatchEvent::Resync(snapshot),
        }];
        batch.extend(self.events(&created));
        if let Some(last) = batch.last().map(WatchEvent::revision) {
            self.next = self.next.max(last + 1);
        }
        Ok(batch)
    }

    /// Open a watch from revision `from`, or from etcd's current revision if `None`.
    async fn open(&self, from: Option<u64>, deadline: tokio::time::Instant) -> Result<WatchStream> {
        let mut options = WatchOptions::new();
        if let Some(from) = from {
            options = options.with_start_revision(i64::try_from(from).unwrap_or(i64::MAX));
        }
        let (key, options) = match &self.target {
            WatchTarget::Key(key) => (self.store.etcd_key(key.as_str()), options),
            WatchTarget::Prefix(prefix) => (
                self.store.etcd_key(&prefix.key_start()),
                options.with_prefix(),
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
        let events = self.events(&response);
        let Some(last) = events.last().map(WatchEvent::revision) else {
            return Ok(None);
        };
        self.next = last + 1;
        self.refreshed = false;
        Ok(Some(events))
    }

    /// The events of `response` not delivered yet (from revision `next` on).
    fn events(&self, response: &WatchResponse) -> Vec<WatchEvent> {
        response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                if revision(kv.mod_revision()) < self.next {
                    return None;
                }
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
            .collect()
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

fn stream_ended() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        operation: "watch",
        message: "the watch stream ended".into(),
        source: None,
    }
}
