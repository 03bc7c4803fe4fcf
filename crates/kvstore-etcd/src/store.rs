//! [`EtcdStore`]: the contract's primitives as etcd v3 requests.
//!
//! Each primitive is a call into the module that holds it: the connection and the
//! policy for sending requests again in `client`, reads in `read`, puts and deletes in
//! `write`, transactions in `txn`, leases in `lease` (their shared keep-alive stream in
//! `keepalive`) and watches in `watch`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::Client;
use kvstore_core::backend::{
    Backend, Condition, EventBatchStream, LeaseGrant, Lifecycle, WatchTarget,
};
use kvstore_core::{Capabilities, Key, KvPair, LeaseId, Prefix, Result, WatchFrom};
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::client::{self, Clients};
use crate::config::EtcdConfig;
use crate::keepalive::KeepAlives;

/// The lock area sits beside the namespace: `{namespace}` + this + `/`. A control
/// character cannot appear in a user namespace or key, so nothing a user writes can
/// collide with it, and the range `{namespace}/…` never includes it.
const LOCK_AREA_SUFFIX: &str = "\u{1}locks";

/// A store on etcd v3. Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) client: Client,
    pub(crate) clients: Clients,
    /// `{namespace}/` (or the lock area's root): prepended to every key.
    pub(crate) root: Arc<str>,
    namespace: Arc<str>,
    pub(crate) config: Arc<EtcdConfig>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// The one keep-alive stream every lease of this store is refreshed on.
    pub(crate) keep_alives: Arc<KeepAlives>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to etcd and check that it answers.
    ///
    /// Every endpoint is tried: a member that is down at connect time is skipped, and
    /// connecting fails only when none answers within `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Unavailable`] when no
    /// endpoint answers within `connect_timeout`; [`Error::Auth`] for rejected credentials.
    ///
    /// [`Error::Config`]: kvstore_core::Error::Config
    /// [`Error::Unavailable`]: kvstore_core::Error::Unavailable
    /// [`Error::Auth`]: kvstore_core::Error::Auth
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        config.validate()?;
        let (client, clients) = client::connect(&config).await?;
        let namespace: Arc<str> = config.namespace.trim_matches('/').into();
        Ok(EtcdStore {
            client,
            clients,
            root: format!("{namespace}/").into(),
            namespace,
            config: Arc::new(config),
            lifecycle: Arc::new(Lifecycle::new()),
            keep_alives: Arc::default(),
        })
    }

    /// The etcd key a kvstore key is stored at: `{namespace}/{key}`.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }
}

#[async_trait]
impl Backend for EtcdStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all(self.config.max_value_size)
    }

    fn lock_area(&self) -> Option<Self> {
        Some(EtcdStore {
            root: format!("{}{LOCK_AREA_SUFFIX}/", self.namespace).into(),
            ..self.clone()
        })
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        let (pairs, _) = self.read(&WatchTarget::Key(key.clone())).await?;
        Ok(pairs.into_iter().next())
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Ok(self.read(&WatchTarget::Prefix(prefix.clone())).await?.0)
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        self.write(key, value, condition, lease).await
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        self.remove(key, condition).await
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        self.remove_tree(prefix).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        self.grant(ttl).await
    }

    fn detach_lease(&self, lease: LeaseId) {
        self.lifecycle.forget_lease(lease);
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.revoke(lease).await
    }

    async fn txn(&self, txn: &kvstore_core::Txn) -> Result<kvstore_core::TxnResponse> {
        self.transact(txn).await
    }

    async fn watch(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        self.lifecycle.ensure_open(BACKEND)?;
        crate::watch::subscribe(self.clone(), target, from).await
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle
            .close_revoking(|lease| Backend::revoke_lease(self, lease))
            .await;
        Ok(())
    }

    fn closing(&self) -> Option<CancellationToken> {
        Some(self.lifecycle.closing().clone())
    }
}
