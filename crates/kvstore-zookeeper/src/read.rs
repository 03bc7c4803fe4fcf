//! Reads: one key, and consistent snapshots of a prefix at one revision.
//!
//! A prefix is read as a listing of the key area and `getData` of the matching keys,
//! in `multi` reads of [`READ_CHUNK`] znodes, bracketed by reads of the revision node.
//! When no write happened in between (the revision node is unchanged) the pairs are the
//! state at that revision. Otherwise the change-log entries written in between are
//! applied on top, which gives the state at the closing revision: every key changed
//! meanwhile takes the value of its last entry, and every other key was not changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kvstore_core::backend::WatchTarget;
use kvstore_core::{Error, Key, KvPair, LeaseId, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::BACKEND;
use crate::layout::{self, Op};
use crate::store::{ZooKeeperStore, revision};

/// Znodes read by one `multi` read.
pub(crate) const READ_CHUNK: usize = 500;
/// Attempts at a consistent snapshot (each fails only if the log was trimmed past the
/// read while it ran).
const SNAPSHOT_ATTEMPTS: usize = 10;
/// How long a reading of the server's clock is trusted before another write takes a
/// fresh one.
pub(crate) const CLOCK_MAX_AGE: Duration = Duration::from_secs(10);

/// A snapshot of a target: its pairs at `revision`, and the identity of the data it was
/// read from.
pub(crate) struct SnapshotRead {
    pub revision: u64,
    pub pairs: Vec<KvPair>,
    pub epoch: Epoch,
}

/// The identity of a namespace's data: the creation zxids of its root and its log. A
/// namespace deleted and created again (or a log reset by hand) has another epoch, and
/// watchers resync.
pub(crate) type Epoch = (i64, i64);

/// A lease as stored: its TTL and when (server clock) it was last refreshed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseState {
    pub ttl_ms: i64,
    pub refreshed_ms: i64,
    pub version: i32,
}

impl LeaseState {
    pub(crate) fn parse(data: &[u8], stat: &zk::Stat) -> LeaseState {
        let ttl_ms = std::str::from_utf8(data)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        LeaseState {
            ttl_ms,
            refreshed_ms: stat.mtime,
            version: stat.version,
        }
    }

    /// When the lease expires, on the server's clock.
    pub(crate) fn deadline_ms(&self) -> i64 {
        self.refreshed_ms.saturating_add(self.ttl_ms)
    }
}

impl ZooKeeperStore {
    /// `(earliest, latest)` bounds on the server's clock now, writing the clock node for
    /// a fresh reading when the last one is too old.
    pub(crate) async fn server_now(&self) -> Result<(i64, i64)> {
        if let Some(bounds) = self.session.server_now(CLOCK_MAX_AGE) {
            return Ok(bounds);
        }
        let client = self.session.client().await?;
        let sent = Instant::now();
        let timeout = self.config.request_timeout;
        let stat = match client.set_data(&self.paths.clock(), b"", None).await {
            Ok(stat) => stat,
            Err(zk::Error::NoNode) => {
                self.ensure_structure().await?;
                client
                    .set_data(&self.paths.clock(), b"", None)
                    .await
                    .map_err(|e| crate::error::from_zk("clock", e, timeout))?
            }
            Err(error) => return Err(crate::error::from_zk("clock", error, timeout)),
        };
        self.session.observe_clock(stat.mtime, sent);
        self.session
            .server_now(CLOCK_MAX_AGE)
            .ok_or_else(|| crate::error::unexpected("clock", "no clock reading".into()))
    }

    /// The pair at `key`, `None` when absent or on an expired lease.
    pub(crate) async fn read_one(&self, key: &Key) -> Result<Option<KvPair>> {
        let Some((data, stat)) = self.read_key(self.area, key.as_str(), "get").await? else {
            return Ok(None);
        };
        let (value, lease) = layout::decode_record(data);
        let pair = KvPair {
            key: key.to_string(),
            value,
            revision: revision(stat.mzxid),
            create_revision: revision(stat.czxid),
            lease,
        };
        Ok(self.without_expired(vec![pair]).await?.pop())
    }

    /// The names of the key area's znodes whose keys `target` watches, decoded.
    async fn matching_names(&self, target: &WatchTarget, listed: Vec<String>) -> Vec<String> {
        let mut keys: Vec<String> = listed
            .into_iter()
            .filter_map(|name| layout::unescape(&name))
            .filter(|key| target.matches(key))
            .collect();
        keys.sort();
        keys
    }

    /// Every key of `target` with its stat and lease, without any consistency across
    /// chunks (for `delete_tree`, whose deletes check each key's version).
    pub(crate) async fn read_raw(
        &self,
        target: &WatchTarget,
        operation: &'static str,
    ) -> Result<Vec<(String, zk::Stat, Option<LeaseId>)>> {
        let area = self.paths.area(self.area);
        let listed = match target {
            WatchTarget::Key(key) => vec![layout::escape(key.as_str())],
            WatchTarget::Prefix(_) => {
                self.session
                    .read(operation, |client| {
                        let area = area.clone();
                        async move { client.list_children(&area).await }
                    })
                    .await?
            }
        };
        let keys = self.matching_names(target, listed).await;
        let mut found = Vec::new();
        for chunk in keys.chunks(READ_CHUNK) {
            let results = self.read_many(chunk, None, operation).await?.0;
            for (key, result) in chunk.iter().zip(results) {
                if let Some((data, stat)) = result {
                    let (_, lease) = layout::decode_record(data);
                    found.push((key.clone(), stat, lease));
                }
            }
        }
        Ok(found)
    }

    /// `getData` of the znodes of `keys` in one `multi` read, and of `extra` after them.
    #[allow(clippy::type_complexity)]
    async fn read_many(
        &self,
        keys: &[String],
        extra: Option<&str>,
        operation: &'static str,
    ) -> Result<(Vec<Option<(Vec<u8>, zk::Stat)>>, Option<zk::Stat>)> {
        let paths: Vec<String> = keys
            .iter()
            .map(|key| self.paths.key(self.area, key))
            .collect();
        let extra = extra.map(str::to_owned);
        let results = self
            .session
            .read(operation, |client| {
                let paths = paths.clone();
                let extra = extra.clone();
                async move {
                    let mut reader = client.new_multi_reader();
                    for path in paths.iter().chain(extra.iter()) {
                        reader.add_get_data(path)?;
                    }
                    reader.commit().await
                }
            })
            .await?;
        let mut data = Vec::with_capacity(keys.len());
        let mut extra_stat = None;
        for (index, result) in results.into_iter().enumerate() {
            let read = match result {
                zk::MultiReadResult::Data { data, stat } => Some((data, stat)),
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => None,
                zk::MultiReadResult::Error { err } => {
                    return Err(crate::error::from_zk(
                        operation,
                        err,
                        self.config.request_timeout,
                    ));
                }
                other => {
                    return Err(crate::error::unexpected(
                        operation,
                        format!("unexpected multi read result {other:?}"),
                    ));
                }
            };
            if index < keys.len() {
                data.push(read);
            } else {
                extra_stat = read.map(|(_, stat)| stat);
            }
        }
        Ok((data, extra_stat))
    }

    /// The state of `target` at one revision (see the module docs), without keys on
    /// expired leases.
    pub(crate) async fn snapshot(&self, target: &WatchTarget) -> Result<SnapshotRead> {
        const OPERATION: &str = "snapshot";
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let Some((opening, epoch, listed)) = self.open_snapshot(target).await? else {
                // The namespace's znodes were deleted under the store: recreated, read again.
                self.ensure_structure().await?;
                continue;
            };
            let keys = self.matching_names(target, listed).await;
            let mut pairs: BTreeMap<String, KvPair> = BTreeMap::new();
            let mut closing = opening;
            let chunks: Vec<&[String]> = keys.chunks(READ_CHUNK).collect();
            for (index, chunk) in chunks.iter().enumerate() {
                let last = index + 1 == chunks.len();
                let rev = self.paths.rev();
                let (results, rev_stat) = self
                    .read_many(chunk, last.then_some(rev.as_str()), OPERATION)
                    .await?;
                for (key, result) in chunk.iter().zip(results) {
                    if let Some((data, stat)) = result {
                        let (value, lease) = layout::decode_record(data);
                        pairs.insert(
                            key.clone(),
                            KvPair {
                                key: key.clone(),
                                value,
                                revision: revision(stat.mzxid),
                                create_revision: revision(stat.czxid),
                                lease,
                            },
                        );
                    }
                }
                if let Some(stat) = rev_stat {
                    closing = revision(stat.mzxid);
                }
            }
            if closing != opening {
                let Some(entries) = self.log_between(opening, closing).await? else {
                    continue;
                };
                for entry in entries {
                    for change in entry.changes.unwrap_or_default() {
                        if change.area != self.area || !target.matches(&change.key) {
                            continue;
                        }
                        match change.op {
                            Op::Delete => {
                                pairs.remove(&change.key);
                            }
                            Op::Put {
                                value,
                                create_revision,
                                lease,
                            } => {
                                pairs.insert(
                                    change.key.clone(),
                                    KvPair {
                                        key: change.key,
                                        value,
                                        revision: entry.revision,
                                        create_revision: create_revision.unwrap_or(entry.revision),
                                        lease,
                                    },
                                );
                            }
                        }
                    }
                }
            }
            let pairs = self.without_expired(pairs.into_values().collect()).await?;
            return Ok(SnapshotRead {
                revision: closing,
                pairs,
                epoch,
            });
        }
        Err(Error::Backend {
            backend: BACKEND,
            operation: OPERATION,
            source: format!(
                "no consistent snapshot in {SNAPSHOT_ATTEMPTS} attempts: the change log is \
                 trimmed faster than a snapshot is read (raise history_capacity)"
            )
            .into(),
        })
    }

    /// The revision, epoch and (for a prefix) the key area's listing, read atomically;
    /// `None` when one of the namespace's own znodes is missing.
    async fn open_snapshot(
        &self,
        target: &WatchTarget,
    ) -> Result<Option<(u64, Epoch, Vec<String>)>> {
        const OPERATION: &str = "snapshot";
        let rev = self.paths.rev();
        let root = self.paths.root.clone();
        let log = self.paths.log();
        let area = self.paths.area(self.area);
        let list = matches!(target, WatchTarget::Prefix(_));
        let results = self
            .session
            .read(OPERATION, |client| {
                let (rev, root, log, area) = (rev.clone(), root.clone(), log.clone(), area.clone());
                async move {
                    let mut reader = client.new_multi_reader();
                    reader.add_get_data(&rev)?;
                    reader.add_get_data(&root)?;
                    reader.add_get_data(&log)?;
                    if list {
                        reader.add_get_children(&area)?;
                    }
                    reader.commit().await
                }
            })
            .await?;
        if results.iter().any(|r| {
            matches!(
                r,
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode
                }
            )
        }) {
            return Ok(None);
        }
        let mut results = results.into_iter();
        let mut stat = |what: &str| match results.next() {
            Some(zk::MultiReadResult::Data { stat, .. }) => Ok(stat),
            other => Err(missing_structure(OPERATION, what, other)),
        };
        let opening = revision(stat("revision node")?.mzxid);
        let epoch = (stat("namespace root")?.czxid, stat("log")?.czxid);
        let listed = match target {
            WatchTarget::Key(key) => vec![layout::escape(key.as_str())],
            WatchTarget::Prefix(_) => match results.next() {
                Some(zk::MultiReadResult::Children { children }) => children,
                other => return Err(missing_structure(OPERATION, "key area", other)),
            },
        };
        Ok(Some((opening, epoch, listed)))
    }

    /// `pairs` without those on leases that are gone or expired by the latest possible
    /// server time (so an expired key is never returned, even before it is reaped).
    pub(crate) async fn without_expired(&self, pairs: Vec<KvPair>) -> Result<Vec<KvPair>> {
        let leases: BTreeSet<LeaseId> = pairs.iter().filter_map(|p| p.lease).collect();
        if leases.is_empty() {
            return Ok(pairs);
        }
        let states = self
            .read_leases(&leases.iter().copied().collect::<Vec<_>>(), "get")
            .await?;
        let (_, latest) = self.server_now().await?;
        let alive: BTreeSet<LeaseId> = leases
            .into_iter()
            .zip(states)
            .filter_map(|(lease, state)| state.filter(|s| s.deadline_ms() > latest).map(|_| lease))
            .collect();
        Ok(pairs
            .into_iter()
            .filter(|p| p.lease.is_none_or(|l| alive.contains(&l)))
            .collect())
    }

    /// The state of each lease (`None` when it does not exist), in `multi` reads.
    pub(crate) async fn read_leases(
        &self,
        leases: &[LeaseId],
        operation: &'static str,
    ) -> Result<Vec<Option<LeaseState>>> {
        let mut states = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(READ_CHUNK) {
            let paths: Vec<String> = chunk.iter().map(|l| self.paths.lease(*l)).collect();
            let results = self
                .session
                .read(operation, |client| {
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
            for result in results {
                states.push(match result {
                    zk::MultiReadResult::Data { data, stat } => {
                        Some(LeaseState::parse(&data, &stat))
                    }
                    _ => None,
                });
            }
        }
        Ok(states)
    }
}

/// One of the namespace's own znodes could not be read.
fn missing_structure(
    operation: &'static str,
    what: &str,
    result: Option<zk::MultiReadResult>,
) -> Error {
    match result {
        Some(zk::MultiReadResult::Error { err }) if err != zk::Error::NoNode => {
            crate::error::from_zk(operation, err, Duration::ZERO)
        }
        other => crate::error::unexpected(
            operation,
            format!("the namespace's {what} cannot be read ({other:?})"),
        ),
    }
}
