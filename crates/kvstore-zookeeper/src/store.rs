//! [`ZooKeeperStore`]: the contract's primitives as reads and `multi` requests.
//!
//! Every write is one `multi`: the checks it depends on (node versions), the key
//! znodes it changes, the lease memberships, one change-log entry holding every change,
//! and a `setData` of the revision node. ZooKeeper applies a `multi` atomically with one
//! zxid, which is the operation's revision. A `multi` that fails on a version check was
//! not applied at all, so a write that lost a race reads again and retries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{
    Backend, Condition, EventBatchStream, LeaseGrant, Lifecycle, WatchTarget,
};
use kvstore_core::{Capabilities, Error, Key, KvPair, LeaseId, Prefix, Result, WatchFrom};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::BACKEND;
use crate::config::ZooKeeperConfig;
use crate::error::{from_zk, unexpected};
use crate::layout::{self, Area, Change, Op, Paths};
use crate::session::Session;

/// How often the background reaper expires leases and trims the change log, so
/// watchers see TTL expiry within about this long of the deadline.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Attempts of one write that lost races against other writers, before giving up with
/// a retryable error (the request timeout bounds the call too).
const MAX_CONFLICTS: usize = 1000;

/// The share of a `multi` request left for key paths, values and log entries: well under
/// ZooKeeper's default `jute.maxbuffer` (1 MiB), so batched deletes always fit.
pub(crate) const MULTI_BUDGET: usize = 512 * 1024;

/// Most operations in one `multi` of a batched delete.
pub(crate) const MULTI_MAX_OPS: usize = 2000;

/// A store on a ZooKeeper ensemble. Cloning gives another handle on the same session.
#[derive(Clone)]
pub struct ZooKeeperStore {
    pub(crate) session: Arc<Session>,
    pub(crate) config: Arc<ZooKeeperConfig>,
    pub(crate) paths: Arc<Paths>,
    pub(crate) area: Area,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for ZooKeeperStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperStore")
            .field("hosts", &self.config.hosts)
            .field("namespace", &self.config.namespace)
            .field("area", &self.area)
            .finish_non_exhaustive()
    }
}

/// The outcome of one `multi`: applied at a revision, or refused.
pub(crate) enum Committed {
    /// Applied; the revision and the server time it was stamped with.
    Applied { revision: u64 },
    /// A check or a create/delete found the ensemble changed since it was read:
    /// nothing was applied; read again.
    Conflict,
}

impl ZooKeeperStore {
    /// Establish a session, create the namespace's znodes if missing, and start the
    /// lease reaper.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Unavailable`] when no
    /// member of the ensemble gives a session within `connect_timeout`; [`Error::Auth`]
    /// when the namespace's ACLs refuse the credentials.
    pub async fn connect(config: ZooKeeperConfig) -> Result<ZooKeeperStore> {
        config.validate()?;
        let config = Arc::new(config);
        let session = Arc::new(Session::connect(config.clone()).await?);
        let store = ZooKeeperStore {
            session,
            paths: Arc::new(Paths::new(&config.namespace)),
            config,
            area: Area::Kv,
            lifecycle: Arc::new(Lifecycle::new()),
        };
        let timeout = store.config.connect_timeout;
        tokio::time::timeout(timeout, store.ensure_structure())
            .await
            .map_err(|_| Error::Unavailable {
                backend: BACKEND,
                operation: "connect",
                message: format!("the namespace's znodes could not be read within {timeout:?}"),
                source: None,
            })??;
        // Expire leases and trim the change log even when nobody writes. The reaper's
        // handle has a lifecycle of its own, so it keeps none of the store's alive.
        let reaper = ZooKeeperStore {
            lifecycle: Arc::new(Lifecycle::new()),
            ..store.clone()
        };
        store.lifecycle.every(REAP_INTERVAL, move || {
            let reaper = reaper.clone();
            async move {
                let work = async {
                    reaper.reap_leases().await?;
                    reaper.trim_log(reaper.config.history_capacity).await
                };
                if let Err(error) = reaper.bounded("reap", work).await {
                    tracing::debug!(%error, "zookeeper reaper failed; retrying");
                }
            }
        });
        Ok(store)
    }

    /// The znode holding `key` (escaped into one name): `/{namespace}/kv/{escaped key}`,
    /// so `zkCli.sh get /kvstore/kv/config%2Fmode` reads the key `config/mode`.
    pub fn znode_path(&self, key: &str) -> String {
        self.paths.key(self.area, key)
    }

    /// The change log's parent znode, `/{namespace}/log`.
    pub fn log_path(&self) -> String {
        self.paths.log()
    }

    /// The ACLs of every znode the store creates.
    pub(crate) fn acls(&self) -> zk::Acls<'static> {
        if self.config.credentials.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    /// Run `future` within the request timeout.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.lifecycle.ensure_open(BACKEND)?;
        let after = self.config.request_timeout;
        tokio::time::timeout(after, future)
            .await
            .map_err(|_| Error::Timeout { operation, after })?
    }

    /// Create the namespace's znodes that are missing (its root and parents, the key
    /// areas, the revision node, the log and the leases' parent).
    pub(crate) async fn ensure_structure(&self) -> Result<()> {
        let client = self.session.client().await?;
        let acls = self.acls();
        let options = zk::CreateMode::Persistent.with_acls(acls);
        let mut path = String::new();
        let mut nodes: Vec<String> = Vec::new();
        for segment in self.config.namespace.split('/') {
            path.push('/');
            path.push_str(segment);
            nodes.push(path.clone());
        }
        nodes.extend(self.paths.structure());
        let timeout = self.config.request_timeout;
        for node in nodes {
            match client.create(&node, b"", &options).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(error) => return Err(from_zk("connect", error, timeout)),
            }
        }
        Ok(())
    }

    /// Commit `writer` (which must end with a `setData` of the revision node). A version
    /// check or create/delete that failed is a [`Committed::Conflict`]; a failure on the
    /// namespace's own znodes (deleted under the store) recreates them first.
    pub(crate) async fn commit(
        &self,
        operation: &'static str,
        mut writer: zk::MultiWriter<'_>,
        structural_from: usize,
    ) -> Result<Committed> {
        let sent = Instant::now();
        let timeout = self.config.request_timeout;
        match writer.commit().await {
            Ok(results) => match results.last() {
                Some(zk::MultiWriteResult::SetData { stat }) => {
                    self.session.observe_clock(stat.mtime, sent);
                    Ok(Committed::Applied {
                        revision: revision(stat.mzxid),
                    })
                }
                other => Err(unexpected(
                    operation,
                    format!("a multi answered {other:?} for the revision node"),
                )),
            },
            Err(zk::MultiWriteError::OperationFailed { index, source })
                if index >= structural_from && source == zk::Error::NoNode =>
            {
                tracing::warn!(
                    operation,
                    "the namespace's znodes are missing; recreating them"
                );
                self.ensure_structure().await?;
                Ok(Committed::Conflict)
            }
            Err(zk::MultiWriteError::OperationFailed {
                source:
                    zk::Error::BadVersion
                    | zk::Error::NoNode
                    | zk::Error::NodeExists
                    | zk::Error::NotEmpty,
                ..
            }) => Ok(Committed::Conflict),
            Err(zk::MultiWriteError::OperationFailed { source, .. })
            | Err(zk::MultiWriteError::RequestFailed { source }) => {
                Err(from_zk(operation, source, timeout))
            }
        }
    }

    /// Add the change-log entry of `changes` and the revision bump to `writer`.
    pub(crate) fn add_log(
        &self,
        writer: &mut zk::MultiWriter<'_>,
        changes: &[Change],
        operation: &'static str,
    ) -> Result<()> {
        let sequential = zk::CreateMode::PersistentSequential.with_acls(self.acls());
        let bad = |e: zk::Error| unexpected(operation, e.to_string());
        // An operation that changed no key (a lease without keys ended) moves the
        // revision but logs nothing.
        if !changes.is_empty() {
            writer
                .add_create(
                    &self.paths.log_entry_prefix(),
                    &layout::encode_entry(changes),
                    &sequential,
                )
                .map_err(bad)?;
        }
        writer
            .add_set_data(&self.paths.rev(), b"", None)
            .map_err(bad)?;
        Ok(())
    }

    /// Read the znode of `key` in `area`: its data and stat, `None` when absent.
    pub(crate) async fn read_key(
        &self,
        area: Area,
        key: &str,
        operation: &'static str,
    ) -> Result<Option<(Vec<u8>, zk::Stat)>> {
        let path = self.paths.key(area, key);
        self.session
            .read(operation, |client| {
                let path = path.clone();
                async move {
                    match client.get_data(&path).await {
                        Ok(found) => Ok(Some(found)),
                        Err(zk::Error::NoNode) => Ok(None),
                        Err(error) => Err(error),
                    }
                }
            })
            .await
    }

    async fn write_once(
        &self,
        key: &Key,
        value: &Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Option<KvPair>> {
        const OPERATION: &str = "put";
        let existing = self.read_key(self.area, key.as_str(), OPERATION).await?;
        let current = existing.as_ref().map(|(data, stat)| {
            let (_, old_lease) = layout::decode_record(data.clone());
            (stat, old_lease)
        });
        match (condition, &current) {
            (Condition::Absent, Some(_)) => {
                return Err(Error::KeyExists {
                    key: key.to_string(),
                });
            }
            (Condition::Revision(_), None) => {
                return Err(Error::KeyNotFound {
                    key: key.to_string(),
                });
            }
            (Condition::Revision(expected), Some((stat, _)))
                if revision(stat.mzxid) != expected =>
            {
                return Err(Error::KeyModified {
                    key: key.to_string(),
                    expected,
                    actual: revision(stat.mzxid),
                });
            }
            _ => {}
        }
        let lease_version = match lease {
            Some(lease) => Some(self.live_lease_version(lease, OPERATION).await?),
            None => None,
        };
        let client = self.session.client().await?;
        let mut writer = client.new_multi_writer();
        let bad = |e: zk::Error| unexpected(OPERATION, e.to_string());
        let path = self.paths.key(self.area, key.as_str());
        if let (Some(lease), Some(version)) = (lease, lease_version) {
            writer
                .add_check_version(&self.paths.lease(lease), version)
                .map_err(bad)?;
        }
        let data = layout::encode_record(value, lease);
        let options = zk::CreateMode::Persistent.with_acls(self.acls());
        match &current {
            Some((stat, _)) => writer
                .add_set_data(&path, &data, Some(stat.version))
                .map_err(bad)?,
            None => writer.add_create(&path, &data, &options).map_err(bad)?,
        }
        let old_lease = current.as_ref().and_then(|(_, l)| *l);
        if old_lease != lease {
            if let Some(old) = old_lease {
                writer
                    .add_delete(&self.paths.member(old, self.area, key.as_str()), None)
                    .map_err(bad)?;
            }
            if let Some(new) = lease {
                writer
                    .add_create(
                        &self.paths.member(new, self.area, key.as_str()),
                        b"",
                        &options,
                    )
                    .map_err(bad)?;
            }
        }
        let create_revision = current.as_ref().map(|(stat, _)| revision(stat.czxid));
        let changes = [Change {
            area: self.area,
            key: key.to_string(),
            op: Op::Put {
                value: value.clone(),
                create_revision,
                lease,
            },
        }];
        let structural_from = writer_len(
            lease_version.is_some(),
            old_lease != lease,
            old_lease,
            lease,
        );
        self.add_log(&mut writer, &changes, OPERATION)?;
        match self.commit(OPERATION, writer, structural_from).await? {
            Committed::Conflict => Ok(None),
            Committed::Applied { revision } => Ok(Some(KvPair {
                key: key.to_string(),
                value: value.clone(),
                revision,
                create_revision: create_revision.unwrap_or(revision),
                lease,
            })),
        }
    }

    async fn remove_once(&self, key: &Key, condition: Condition) -> Result<Option<Option<u64>>> {
        const OPERATION: &str = "delete";
        let Some((data, stat)) = self.read_key(self.area, key.as_str(), OPERATION).await? else {
            return match condition {
                Condition::Revision(_) => Err(Error::KeyNotFound {
                    key: key.to_string(),
                }),
                _ => Ok(Some(None)),
            };
        };
        if let Condition::Revision(expected) = condition
            && revision(stat.mzxid) != expected
        {
            return Err(Error::KeyModified {
                key: key.to_string(),
                expected,
                actual: revision(stat.mzxid),
            });
        }
        let (_, lease) = layout::decode_record(data);
        let client = self.session.client().await?;
        let mut writer = client.new_multi_writer();
        let bad = |e: zk::Error| unexpected(OPERATION, e.to_string());
        writer
            .add_delete(&self.paths.key(self.area, key.as_str()), Some(stat.version))
            .map_err(bad)?;
        if let Some(lease) = lease {
            writer
                .add_delete(&self.paths.member(lease, self.area, key.as_str()), None)
                .map_err(bad)?;
        }
        let changes = [Change {
            area: self.area,
            key: key.to_string(),
            op: Op::Delete,
        }];
        let structural_from = 1 + usize::from(lease.is_some());
        self.add_log(&mut writer, &changes, OPERATION)?;
        match self.commit(OPERATION, writer, structural_from).await? {
            Committed::Conflict => Ok(None),
            Committed::Applied { revision } => Ok(Some(Some(revision))),
        }
    }

    /// Delete the keys of `victims` (area, key, version, lease) in as few `multi`s as
    /// fit the request budget; `extra` ops (a lease's own deletion) go into the last.
    /// Returns the revision of the last applied batch, or `None` on a conflict (read
    /// again) or when there was nothing to do.
    pub(crate) async fn delete_batched(
        &self,
        operation: &'static str,
        victims: &[Victim],
        last: Option<(&str, Option<i32>)>,
        guard: Option<(&str, i32)>,
    ) -> Result<Batched> {
        let mut applied = None;
        let mut start = 0;
        loop {
            let mut size = 0;
            let mut end = start;
            while end < victims.len() && end - start < MULTI_MAX_OPS / 3 {
                let cost = 3 * (self.paths.root.len() + 64) + 3 * victims[end].key.len();
                if end > start && size + cost > MULTI_BUDGET {
                    break;
                }
                size += cost;
                end += 1;
            }
            let batch = &victims[start..end];
            let final_batch = end == victims.len();
            if batch.is_empty() && !(final_batch && last.is_some()) {
                return Ok(Batched::Done(applied));
            }
            let client = self.session.client().await?;
            let mut writer = client.new_multi_writer();
            let bad = |e: zk::Error| unexpected(operation, e.to_string());
            let mut ops = 0;
            if let Some((path, version)) = guard {
                writer.add_check_version(path, version).map_err(bad)?;
                ops += 1;
            }
            let mut changes = Vec::new();
            for victim in batch {
                if let Some(version) = victim.version {
                    writer
                        .add_delete(&self.paths.key(victim.area, &victim.key), Some(version))
                        .map_err(bad)?;
                    ops += 1;
                    changes.push(Change {
                        area: victim.area,
                        key: victim.key.clone(),
                        op: Op::Delete,
                    });
                }
                if let Some(lease) = victim.membership {
                    writer
                        .add_delete(&self.paths.member(lease, victim.area, &victim.key), None)
                        .map_err(bad)?;
                    ops += 1;
                }
            }
            if final_batch && let Some((path, version)) = last {
                writer.add_delete(path, version).map_err(bad)?;
                ops += 1;
            }
            self.add_log(&mut writer, &changes, operation)?;
            match self.commit(operation, writer, ops).await? {
                Committed::Conflict => return Ok(Batched::Conflict),
                Committed::Applied { revision } => {
                    if !changes.is_empty() {
                        applied = Some(revision);
                    }
                }
            }
            if final_batch {
                return Ok(Batched::Done(applied));
            }
            start = end;
        }
    }

    /// After every few conflicts in a row, make sure the namespace's znodes exist: a
    /// create whose parent area was deleted under the store fails like a lost race.
    async fn recover_after(&self, attempt: usize) -> Result<()> {
        /// Conflicts in a row before checking the namespace's znodes.
        const CHECK_EVERY: usize = 8;
        if attempt % CHECK_EVERY == CHECK_EVERY - 1 {
            self.ensure_structure().await?;
        }
        Ok(())
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }
}

/// One key a batched delete removes: its znode (when `version` is known) and its lease
/// membership (when it has one).
#[derive(Clone, Debug)]
pub(crate) struct Victim {
    pub area: Area,
    pub key: String,
    /// The key znode's version, `None` when only the membership is left to delete.
    pub version: Option<i32>,
    pub membership: Option<LeaseId>,
}

/// The outcome of [`ZooKeeperStore::delete_batched`].
pub(crate) enum Batched {
    /// Done; the revision of the last batch that deleted keys.
    Done(Option<u64>),
    /// A batch found the ensemble changed: read again and retry.
    Conflict,
}

/// How many ops of a put's `multi` come before its log entry.
fn writer_len(
    lease_check: bool,
    lease_changed: bool,
    old: Option<LeaseId>,
    new: Option<LeaseId>,
) -> usize {
    let memberships = if lease_changed {
        usize::from(old.is_some()) + usize::from(new.is_some())
    } else {
        0
    };
    usize::from(lease_check) + 1 + memberships
}

/// A zxid as a revision (zxids of applied transactions are positive).
pub(crate) fn revision(zxid: i64) -> u64 {
    u64::try_from(zxid).unwrap_or(0)
}

#[async_trait]
impl Backend for ZooKeeperStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // No transactions yet: ZooKeeper's `multi` could carry them.
        let mut capabilities = Capabilities::all(self.config.max_value_size);
        capabilities.transactions = false;
        capabilities
    }

    fn lock_area(&self) -> Option<Self> {
        Some(ZooKeeperStore {
            area: Area::Lock,
            ..self.clone()
        })
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        self.bounded("get", self.read_one(key)).await
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        let target = WatchTarget::Prefix(prefix.clone());
        self.bounded("list", async { Ok(self.snapshot(&target).await?.pairs) })
            .await
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        self.bounded("put", async {
            for attempt in 0..MAX_CONFLICTS {
                self.recover_after(attempt).await?;
                if let Some(pair) = self.write_once(key, &value, condition, lease).await? {
                    return Ok(pair);
                }
            }
            Err(conflicted("put"))
        })
        .await
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        self.bounded("delete", async {
            for attempt in 0..MAX_CONFLICTS {
                self.recover_after(attempt).await?;
                if let Some(outcome) = self.remove_once(key, condition).await? {
                    return Ok(outcome);
                }
            }
            Err(conflicted("delete"))
        })
        .await
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        const OPERATION: &str = "delete_tree";
        let target = WatchTarget::Prefix(prefix.clone());
        self.bounded(OPERATION, async {
            for attempt in 0..MAX_CONFLICTS {
                self.recover_after(attempt).await?;
                let found = self.read_raw(&target, OPERATION).await?;
                let victims: Vec<Victim> = found
                    .into_iter()
                    .map(|(key, stat, lease)| Victim {
                        area: self.area,
                        key,
                        version: Some(stat.version),
                        membership: lease,
                    })
                    .collect();
                match self.delete_batched(OPERATION, &victims, None, None).await? {
                    Batched::Done(revision) => return Ok(revision),
                    Batched::Conflict => continue,
                }
            }
            Err(conflicted(OPERATION))
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        self.bounded("grant_lease", self.grant(ttl)).await
    }

    fn detach_lease(&self, lease: LeaseId) {
        self.lifecycle.forget_lease(lease);
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.bounded("keep_alive_lease", self.keep_alive(lease))
            .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.bounded("revoke_lease", self.end_lease(lease, None, "revoke_lease"))
            .await?;
        self.lifecycle.forget_lease(lease);
        Ok(())
    }

    async fn watch(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        self.lifecycle.ensure_open(BACKEND)?;
        crate::watch::subscribe(self.clone(), target, from).await
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle
            .close_revoking(|lease| async move {
                let after = self.config.request_timeout;
                tokio::time::timeout(after, self.end_lease(lease, None, "close"))
                    .await
                    .map_err(|_| Error::Timeout {
                        operation: "close",
                        after,
                    })?
            })
            .await;
        self.session.close().await;
        Ok(())
    }

    fn closing(&self) -> Option<CancellationToken> {
        Some(self.lifecycle.closing().clone())
    }
}

/// A write that lost every race it ran: retryable.
fn conflicted(operation: &'static str) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        operation,
        message: format!("lost {MAX_CONFLICTS} races against concurrent writers"),
        source: None,
    }
}
