//! [`PrefixLayer`]: a store seen below one key (object_store's `PrefixStore`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::Layer;
use crate::capabilities::Capabilities;
use crate::election::{Election, ElectionOptions};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::lease::{Lease, LeaseId};
use crate::lock::Locker;
use crate::options::{LockOptions, PutOptions};
use crate::pair::KvPair;
use crate::store::Store;
use crate::txn::{Compare, Txn, TxnOp, TxnResponse, TxnResult};
use crate::watch::{Snapshot, WatchEvent, WatchFrom};

/// Puts every key of a store below `prefix`: `put("a")` writes `prefix/a`, `list("")`
/// lists `prefix/...`, and keys come back without the prefix, in pairs, watch events,
/// transaction results and errors. A cheap tenant separation inside one namespace (a
/// namespace, set when the store is opened, is the stronger one: it also separates
/// leases' keys and lock areas).
///
/// Keys stay valid keys of the inner store, so the longest key is [`crate::MAX_KEY_LEN`]
/// minus the prefix and a `/`. `new_lock` and `new_election` pass the prefixed key to the
/// inner store, so [`Locker::key`] shows it.
#[derive(Clone, Debug)]
pub struct PrefixLayer {
    prefix: Key,
}

impl PrefixLayer {
    /// Keys below `prefix` (itself a valid key: `tenant-a`, `apps/billing`).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when `prefix` is not a valid key.
    pub fn new(prefix: &str) -> Result<PrefixLayer> {
        Ok(PrefixLayer {
            prefix: Key::new(prefix)?,
        })
    }
}

impl Layer for PrefixLayer {
    fn layer(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(PrefixStore {
            inner: store,
            prefix: Arc::from(self.prefix.as_str()),
        })
    }
}

impl std::fmt::Debug for PrefixStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixStore")
            .field("backend", &self.inner.backend())
            .finish_non_exhaustive()
    }
}

/// The store [`PrefixLayer`] makes.
pub struct PrefixStore {
    inner: Arc<dyn Store>,
    prefix: Arc<str>,
}

impl PrefixStore {
    fn key(&self, key: &str) -> Result<String> {
        Ok(format!("{}/{}", self.prefix, Key::new(key)?.as_str()))
    }

    fn prefix(&self, prefix: &str) -> Result<String> {
        let prefix = Prefix::new(prefix)?;
        Ok(if prefix.as_str().is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}/{}", self.prefix, prefix.as_str())
        })
    }

    fn strip(prefix: &str, key: String) -> String {
        match key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            Some(rest) => rest.to_owned(),
            None => key,
        }
    }

    fn pair(prefix: &str, mut pair: KvPair) -> KvPair {
        pair.key = PrefixStore::strip(prefix, pair.key);
        pair
    }

    fn pairs(prefix: &str, pairs: Vec<KvPair>) -> Vec<KvPair> {
        pairs
            .into_iter()
            .map(|pair| PrefixStore::pair(prefix, pair))
            .collect()
    }

    fn event(prefix: &str, event: WatchEvent) -> WatchEvent {
        let snapshot = |snapshot: Snapshot| Snapshot {
            revision: snapshot.revision,
            pairs: PrefixStore::pairs(prefix, snapshot.pairs),
        };
        match event {
            WatchEvent::Snapshot(s) => WatchEvent::Snapshot(snapshot(s)),
            WatchEvent::Resync(s) => WatchEvent::Resync(snapshot(s)),
            WatchEvent::Put(pair) => WatchEvent::Put(PrefixStore::pair(prefix, pair)),
            WatchEvent::Delete { key, revision } => WatchEvent::Delete {
                key: PrefixStore::strip(prefix, key),
                revision,
            },
        }
    }

    /// Errors name keys as the caller wrote them.
    fn error(&self, error: Error) -> Error {
        let strip = |key: String| PrefixStore::strip(&self.prefix, key);
        match error {
            Error::KeyNotFound { key } => Error::KeyNotFound { key: strip(key) },
            Error::KeyExists { key } => Error::KeyExists { key: strip(key) },
            Error::KeyModified {
                key,
                expected,
                actual,
            } => Error::KeyModified {
                key: strip(key),
                expected,
                actual,
            },
            Error::ValueTooLarge { key, size, limit } => Error::ValueTooLarge {
                key: strip(key),
                size,
                limit,
            },
            other => other,
        }
    }

    fn op(&self, op: &TxnOp) -> Result<TxnOp> {
        Ok(match op {
            TxnOp::Put {
                key,
                value,
                options,
            } => TxnOp::put(self.key(key)?, value.clone(), options.clone()),
            TxnOp::Delete { key } => TxnOp::delete(self.key(key)?),
            TxnOp::Get { key } => TxnOp::get(self.key(key)?),
        })
    }
}

#[async_trait]
impl Store for PrefixStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        let full = self.key(key)?;
        match self.inner.put(&full, value, options).await {
            Ok(pair) => Ok(PrefixStore::pair(&self.prefix, pair)),
            Err(error) => Err(self.error(error)),
        }
    }

    async fn get(&self, key: &str) -> Result<KvPair> {
        match self.inner.get(&self.key(key)?).await {
            Ok(pair) => Ok(PrefixStore::pair(&self.prefix, pair)),
            Err(error) => Err(self.error(error)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(&self.key(key)?).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.key(key)?).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        let pairs = self.inner.list(&self.prefix(prefix)?).await?;
        Ok(PrefixStore::pairs(&self.prefix, pairs))
    }

    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        self.inner.delete_tree(&self.prefix(prefix)?).await
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let full = self.key(key)?;
        match self.inner.atomic_put(&full, value, previous, options).await {
            Ok(pair) => Ok(PrefixStore::pair(&self.prefix, pair)),
            Err(error) => Err(self.error(error)),
        }
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let full = self.key(key)?;
        self.inner
            .atomic_delete(&full, previous)
            .await
            .map_err(|error| self.error(error))
    }

    async fn watch(&self, key: &str) -> Result<BoxStream<'static, Result<Option<KvPair>>>> {
        let stream = self.inner.watch(&self.key(key)?).await?;
        let prefix = self.prefix.clone();
        Ok(stream
            .map(move |item| item.map(|pair| pair.map(|pair| PrefixStore::pair(&prefix, pair))))
            .boxed())
    }

    async fn watch_tree(&self, prefix: &str) -> Result<BoxStream<'static, Result<Vec<KvPair>>>> {
        let stream = self.inner.watch_tree(&self.prefix(prefix)?).await?;
        let prefix = self.prefix.clone();
        Ok(stream
            .map(move |item| item.map(|pairs| PrefixStore::pairs(&prefix, pairs)))
            .boxed())
    }

    async fn watch_prefix_events(
        &self,
        prefix: &str,
        from: WatchFrom,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
        let stream = self
            .inner
            .watch_prefix_events(&self.prefix(prefix)?, from)
            .await?;
        let prefix = self.prefix.clone();
        Ok(stream
            .map(move |item| item.map(|event| PrefixStore::event(&prefix, event)))
            .boxed())
    }

    fn new_lock(&self, key: &str, options: LockOptions) -> Result<Locker> {
        self.inner.new_lock(&self.key(key)?, options)
    }

    fn new_election(&self, name: &str, options: ElectionOptions) -> Result<Election> {
        self.inner.new_election(&self.key(name)?, options)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.inner.keep_alive_lease(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let compares = txn
            .compares()
            .iter()
            .map(|compare| {
                Ok(Compare {
                    key: self.key(&compare.key)?,
                    ..compare.clone()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let success = txn
            .success()
            .iter()
            .map(|op| self.op(op))
            .collect::<Result<Vec<_>>>()?;
        let failure = txn
            .failure()
            .iter()
            .map(|op| self.op(op))
            .collect::<Result<Vec<_>>>()?;
        let txn = Txn::new().when(compares).and_then(success).or_else(failure);
        let mut response = self
            .inner
            .txn(txn)
            .await
            .map_err(|error| self.error(error))?;
        for result in &mut response.results {
            match result {
                TxnResult::Put(pair) | TxnResult::Get(Some(pair)) => {
                    pair.key = PrefixStore::strip(&self.prefix, std::mem::take(&mut pair.key));
                }
                TxnResult::Get(None) | TxnResult::Delete { .. } => {}
            }
        }
        Ok(response)
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
