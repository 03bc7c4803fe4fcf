//! The change log: one sequential znode per operation under `/{ns}/log`, written in
//! the operation's `multi`, so it holds every change in revision order. An entry's
//! revision is its `czxid`. The reaper trims the oldest entries beyond `history_capacity`
//! and records the revision of the newest entry it removed (the *trim mark*) as the log
//! znode's data, in the same `multi`: a reader positioned before the mark has lost
//! history and resyncs.

use kvstore_core::Result;
use zookeeper_client as zk;

use crate::error::{from_zk, unexpected};
use crate::layout::{self, Change};
use crate::read::{Epoch, READ_CHUNK};
use crate::store::{MULTI_MAX_OPS, ZooKeeperStore, revision};

/// One operation's entry.
#[derive(Clone, Debug)]
pub(crate) struct LogEntry {
    pub revision: u64,
    /// `None` when the entry does not decode: its changes cannot be known, which is
    /// history lost for whoever reads past it.
    pub changes: Option<Vec<Change>>,
}

/// The log's entries (names, oldest first), its trim mark and the data's epoch.
pub(crate) struct LogListing {
    pub names: Vec<String>,
    pub trimmed_through: u64,
    pub epoch: Epoch,
    pub version: i32,
}

/// Where a revision falls in a listing.
pub(crate) enum Position {
    /// Entries from this index on are newer than the revision.
    From(usize),
    /// An entry was trimmed while it was looked at: list again (and check the mark).
    Trimmed,
}

impl ZooKeeperStore {
    /// List the log, with a watch on its children when `watch` (it fires when an entry
    /// is added or trimmed). The trim mark and epoch are read after the listing, so a
    /// mark at or below a reader's position proves the listing holds every entry after
    /// it.
    pub(crate) async fn list_log(
        &self,
        watch: bool,
    ) -> Result<(LogListing, Option<zk::OneshotWatcher>)> {
        const OPERATION: &str = "watch";
        let log = self.paths.log();
        let client = self.session.client().await?;
        let listed = if watch {
            client
                .get_and_watch_children(&log)
                .await
                .map(|(names, _, watcher)| (names, Some(watcher)))
        } else {
            client.list_children(&log).await.map(|names| (names, None))
        };
        let (mut names, watcher) = match listed {
            Ok(listed) => listed,
            Err(zk::Error::NoNode) => {
                // Deleted under the store: recreate it, so the next look finds a new epoch.
                self.ensure_structure().await?;
                return Err(unexpected(OPERATION, "the change log was deleted".into()));
            }
            Err(error) => return Err(from_zk(OPERATION, error, self.config.request_timeout)),
        };
        names.retain(|name| layout::entry_sequence(name).is_some());
        names.sort_by_key(|name| layout::entry_sequence(name).unwrap_or(i64::MIN));
        let root = self.paths.root.clone();
        let results = self
            .session
            .read(OPERATION, |client| {
                let (root, log) = (root.clone(), log.clone());
                async move {
                    let mut reader = client.new_multi_reader();
                    reader.add_get_data(&root)?;
                    reader.add_get_data(&log)?;
                    reader.commit().await
                }
            })
            .await?;
        let mut stats = results.into_iter().map(|r| match r {
            zk::MultiReadResult::Data { data, stat } => Some((data, stat)),
            _ => None,
        });
        let (Some(Some((_, root))), Some(Some((mark, log)))) = (stats.next(), stats.next()) else {
            // Deleted under the store: recreate them, so the next look finds a new epoch.
            self.ensure_structure().await?;
            return Err(unexpected(
                OPERATION,
                "the namespace's root or log znode is missing".into(),
            ));
        };
        let trimmed_through = std::str::from_utf8(&mark)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok((
            LogListing {
                names,
                trimmed_through,
                epoch: (root.czxid, log.czxid),
                version: log.version,
            },
            watcher,
        ))
    }

    /// The revision of the entry `name`, `None` when it is gone.
    async fn entry_revision(&self, name: &str) -> Result<Option<u64>> {
        let path = self.paths.log_entry(name);
        let stat = self
            .session
            .read("watch", |client| {
                let path = path.clone();
                async move { client.check_stat(&path).await }
            })
            .await?;
        Ok(stat.map(|s| revision(s.czxid)))
    }

    /// The index of the first entry of `names` newer than `position` (by binary search
    /// on the entries' revisions, which grow with their names).
    pub(crate) async fn position_in(&self, names: &[String], position: u64) -> Result<Position> {
        let (mut low, mut high) = (0, names.len());
        // The common case, a reader that is up to date, costs one look.
        if let Some(last) = names.last() {
            match self.entry_revision(last).await? {
                None => return Ok(Position::Trimmed),
                Some(rev) if rev <= position => return Ok(Position::From(names.len())),
                Some(_) => high = names.len() - 1,
            }
        }
        while low < high {
            let middle = low + (high - low) / 2;
            match self.entry_revision(&names[middle]).await? {
                None => return Ok(Position::Trimmed),
                Some(rev) if rev > position => high = middle,
                Some(_) => low = middle + 1,
            }
        }
        Ok(Position::From(low))
    }

    /// Read the entries `names`, in order; `None` when one of them is gone (trimmed).
    pub(crate) async fn read_entries(&self, names: &[String]) -> Result<Option<Vec<LogEntry>>> {
        let mut entries = Vec::with_capacity(names.len());
        for chunk in names.chunks(READ_CHUNK) {
            let paths: Vec<String> = chunk.iter().map(|n| self.paths.log_entry(n)).collect();
            let results = self
                .session
                .read("watch", |client| {
                    let paths = paths.clone();
                    async move {
                        let mut reader = client.new_multi_reader();
                        for path in &paths {
                            reader.add_get_data(path)?;
                        }
                        reader.commit().await
                    }
                })
                .await?;
            for (name, result) in chunk.iter().zip(results) {
                let zk::MultiReadResult::Data { data, stat } = result else {
                    return Ok(None);
                };
                let changes = layout::decode_entry(data);
                if changes.is_none() {
                    tracing::warn!(entry = %name, "a change log entry does not decode; readers past it resync");
                }
                entries.push(LogEntry {
                    revision: revision(stat.czxid),
                    changes,
                });
            }
        }
        Ok(Some(entries))
    }

    /// The entries with revisions in `(after, upto]`; `None` when some were trimmed or do
    /// not decode.
    pub(crate) async fn log_between(&self, after: u64, upto: u64) -> Result<Option<Vec<LogEntry>>> {
        let (listing, _) = self.list_log(false).await?;
        if listing.trimmed_through > after {
            return Ok(None);
        }
        let start = match self.position_in(&listing.names, after).await? {
            Position::From(start) => start,
            Position::Trimmed => return Ok(None),
        };
        let mut wanted = Vec::new();
        for chunk in listing.names[start..].chunks(READ_CHUNK) {
            let Some(entries) = self.read_entries(chunk).await? else {
                return Ok(None);
            };
            let done = entries.iter().any(|e| e.revision > upto);
            wanted.extend(entries.into_iter().filter(|e| e.revision <= upto));
            if done {
                break;
            }
        }
        // An entry that does not decode is history lost, as a trimmed one.
        if wanted.iter().any(|e| e.changes.is_none()) {
            return Ok(None);
        }
        Ok(Some(wanted))
    }

    /// Remove the oldest entries until at most `keep` remain, moving the trim mark with
    /// every batch. Another client trimming at the same time makes this one stop (the
    /// mark's version check fails); the next round goes on.
    ///
    /// # Errors
    /// The ensemble's errors.
    pub async fn trim_log(&self, keep: usize) -> Result<()> {
        const OPERATION: &str = "trim_log";
        loop {
            let (listing, _) = self.list_log(false).await?;
            if listing.names.len() <= keep {
                return Ok(());
            }
            let excess = listing.names.len() - keep;
            let batch = &listing.names[..excess.min(MULTI_MAX_OPS)];
            let Some(last) = batch.last() else {
                return Ok(());
            };
            let Some(mark) = self.entry_revision(last).await? else {
                return Ok(());
            };
            let client = self.session.client().await?;
            let mut writer = client.new_multi_writer();
            let bad = |e: zk::Error| unexpected(OPERATION, e.to_string());
            writer
                .add_set_data(
                    &self.paths.log(),
                    mark.max(listing.trimmed_through).to_string().as_bytes(),
                    Some(listing.version),
                )
                .map_err(bad)?;
            for name in batch {
                writer
                    .add_delete(&self.paths.log_entry(name), None)
                    .map_err(bad)?;
            }
            match writer.commit().await {
                Ok(_) => {}
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                    ..
                }) => return Ok(()),
                Err(zk::MultiWriteError::OperationFailed { source, .. })
                | Err(zk::MultiWriteError::RequestFailed { source }) => {
                    return Err(from_zk(OPERATION, source, self.config.request_timeout));
                }
            }
        }
    }
}
