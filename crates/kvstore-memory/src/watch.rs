//! Watches on the memory store: each watcher keeps its position (the last revision it
//! has seen) and reads newer changes from the shared history ring when the revision
//! moves. No per-watcher queue, so a slow watcher costs nothing until it reads; if the
//! ring has dropped changes it has not seen, it gets a `Resync`.

use std::sync::Arc;

use futures::StreamExt;
use kvstore_core::backend::{EventBatchStream, WatchTarget};
use kvstore_core::{KvPair, Result, Snapshot, WatchEvent, WatchFrom};
use tokio::sync::watch;

use crate::state::State;
use crate::store::{MemoryStore, Shared};

struct Watcher {
    shared: Arc<Shared>,
    root: Arc<str>,
    target: WatchTarget,
    /// Revision up to which this watcher has seen everything; `None` before the
    /// snapshot has been sent.
    position: Option<u64>,
    revisions: watch::Receiver<u64>,
}

pub(crate) fn subscribe(
    store: &MemoryStore,
    target: WatchTarget,
    from: WatchFrom,
) -> EventBatchStream {
    let shared = store.shared().clone();
    let revisions = shared.revision.subscribe();
    let watcher = Watcher {
        shared,
        root: store.root().clone(),
        target,
        position: match from {
            WatchFrom::Snapshot => None,
            WatchFrom::After(revision) => Some(revision),
        },
        revisions,
    };
    futures::stream::unfold(watcher, |mut watcher| async move {
        let batch = watcher.next_batch().await?;
        Some((batch, watcher))
    })
    .boxed()
}

impl Watcher {
    /// The next non-empty batch, or `None` once the store is closed.
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        loop {
            self.revisions.borrow_and_update();
            {
                let shared = self.shared.clone();
                let state = shared.lock();
                if state.is_closed() {
                    return None;
                }
                let batch = self.read(&state);
                if !batch.is_empty() {
                    return Some(Ok(batch));
                }
            }
            if self.revisions.changed().await.is_err() {
                return None;
            }
        }
    }

    fn read(&mut self, state: &State) -> Vec<WatchEvent> {
        let current = state.revision();
        let batch = match self.position {
            None => vec![WatchEvent::Snapshot(self.snapshot(state))],
            Some(position) if position < state.compacted() => {
                vec![WatchEvent::Resync(self.snapshot(state))]
            }
            Some(position) => state
                .changes_after(position)
                .filter_map(|change| {
                    let key = change.key.strip_prefix(&*self.root)?;
                    if !self.target.matches(key) {
                        return None;
                    }
                    Some(match &change.entry {
                        Some(entry) => WatchEvent::Put(entry.to_pair(key.to_owned())),
                        None => WatchEvent::Delete {
                            key: key.to_owned(),
                            revision: change.revision,
                        },
                    })
                })
                .collect(),
        };
        self.position = Some(current.max(self.position.unwrap_or(0)));
        batch
    }

    fn snapshot(&self, state: &State) -> Snapshot {
        let pairs: Vec<KvPair> = match &self.target {
            WatchTarget::Key(key) => state
                .get(&format!("{}{key}", self.root))
                .map(|e| e.to_pair(key.to_string()))
                .into_iter()
                .collect(),
            WatchTarget::Prefix(prefix) => {
                let start = format!("{}{}", self.root, prefix.key_start());
                state
                    .range(&start)
                    .map(|(k, e)| e.to_pair(k[self.root.len()..].to_owned()))
                    .collect()
            }
        };
        Snapshot {
            revision: state.revision(),
            pairs,
        }
    }
}
