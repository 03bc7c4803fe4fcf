//! [`RedisStore`]: the contract's primitives as Lua scripts on Redis.
//!
//! The struct, its constructor and the [`Backend`] impl; each method calls into the
//! module of what it does: `read.rs` (keys and consistent ranges), `write.rs` (puts and
//! deletes), `txn.rs`, `lease.rs`, `watch.rs`, on the plumbing of `scripts.rs` (script
//! calls), `connection.rs` and `layout.rs` (key names).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{
    Backend, Condition, EventBatchStream, LeaseGrant, Lifecycle, WatchTarget,
};
use kvstore_core::{Capabilities, Key, KvPair, LeaseId, Prefix, Result, WatchFrom};
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::RedisConfig;
use crate::connection::{Connection, Endpoint};
use crate::error::unexpected;
use crate::feed::Feed;
use crate::layout;
use crate::scripts::Scripts;
use crate::write::Written;

/// A store on Redis. Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) connection: Arc<Connection>,
    pub(crate) config: Arc<RedisConfig>,
    pub(crate) scripts: Arc<Scripts>,
    /// `{namespace}:rev`, the first key of every script.
    pub(crate) revision_key: Arc<str>,
    pub(crate) area: &'static str,
    /// The one reader of the change stream that all watches of this store share.
    pub(crate) feed: Arc<Feed>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.config.namespace)
            .field("area", &self.area)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connect to Redis, check that it answers, and start the lease reaper.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration or URL; [`Error::Unavailable`] when
    /// the server does not answer within `connect_timeout`; [`Error::Auth`] for rejected
    /// credentials.
    ///
    /// [`Error::Config`]: kvstore_core::Error::Config
    /// [`Error::Unavailable`]: kvstore_core::Error::Unavailable
    /// [`Error::Auth`]: kvstore_core::Error::Auth
    pub async fn connect(config: RedisConfig) -> Result<RedisStore> {
        config.validate()?;
        let endpoint = Arc::new(Endpoint::open(&config)?);
        let connection = Arc::new(Connection::new(endpoint.clone()));
        connection.check(&config).await?;
        let store = RedisStore {
            endpoint,
            connection,
            revision_key: layout::revision(&config.namespace).into(),
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
            area: layout::USER_AREA,
            feed: Arc::new(Feed::default()),
            lifecycle: Arc::new(Lifecycle::new()),
        };
        store.start_reaper();
        Ok(store)
    }

    /// The Redis key (a hash) holding `key`: `{namespace}:kv:k:{key}`. Read it with
    /// `redis-cli HGET '{namespace}:kv:k:KEY' value`.
    pub fn redis_key(&self, key: &str) -> String {
        layout::key(&self.config.namespace, self.area, key)
    }

    /// The change stream of this store: `{namespace}:log`.
    pub fn stream_key(&self) -> String {
        layout::log(&self.config.namespace)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }
}

#[async_trait]
impl Backend for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all(self.config.max_value_size)
    }

    fn lock_area(&self) -> Option<Self> {
        Some(RedisStore {
            area: layout::LOCK_AREA,
            ..self.clone()
        })
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        self.read_key(key).await
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Ok(self.read(&WatchTarget::Prefix(prefix.clone())).await?.pairs)
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        match self.put_script(key, value, condition, lease, None).await? {
            Written::Pair(pair) => Ok(pair),
            // Only a new lease can be taken.
            Written::LeaseTaken => Err(unexpected("put", "lease id taken".to_owned())),
        }
    }

    async fn put_with_ttl(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        ttl: Duration,
    ) -> Result<KvPair> {
        self.put_on_new_lease(key, value, condition, ttl).await
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        self.delete_script(key, revision).await
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        self.delete_prefix_script(prefix).await
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
        self.revoke(lease).await?;
        self.lifecycle.forget_lease(lease);
        Ok(())
    }

    async fn txn(&self, txn: &kvstore_core::Txn) -> Result<kvstore_core::TxnResponse> {
        self.txn_script(txn).await
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
