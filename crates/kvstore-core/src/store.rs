//! [`Store`]: the user-facing API (libkv's `Store`, in Rust), implemented once for every
//! [`Backend`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::backend::{Backend, Condition, unsupported};
use crate::capabilities::Capabilities;
use crate::election::{Election, ElectionOptions};
use crate::error::{Error, Result};
use crate::key::{Key, Prefix, is_valid_key};
use crate::lease::{Lease, LeaseId};
use crate::lock::Locker;
use crate::options::{LockOptions, PutOptions, check_ttl_range};
use crate::pair::KvPair;
use crate::txn::{Txn, TxnOp, TxnResponse};
use crate::watch::{self, WatchEvent, WatchFrom, WatchTarget};

/// A coordination store: keys, values, revisions, leases, watches and locks, with the
/// same semantics on every backend ([contract §1–§7](crate::contract#1-keys-values-and-namespaces)). Hold it as `Arc<dyn Store>`.
///
/// Keys are `/`-separated paths relative to the store's namespace; invalid keys and
/// oversize values are rejected with [`Error::InvalidKey`] / [`Error::ValueTooLarge`]
/// before any I/O. After [`Store::close`] every call returns [`Error::Closed`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's short name (`"memory"`, `"etcd"`, `"redis"`, `"zookeeper"`).
    fn backend(&self) -> &'static str;

    /// What the backend supports and its limits.
    fn capabilities(&self) -> Capabilities;

    /// Write `value` at `key`, creating or replacing it (libkv `Put`). With
    /// `options.ttl` the key expires after that long unless rewritten; with
    /// `options.lease` it is deleted when the lease ends.
    ///
    /// # Errors
    /// `InvalidKey`, `ValueTooLarge`, `InvalidArgument` (both ttl and lease, a zero ttl or one over [`crate::MAX_TTL`]),
    /// `Unsupported` (ttl/lease without lease support), `LeaseLost` (unknown lease), or the
    /// backend's I/O errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not: once the request has
    /// left, the server applies it whether or not anyone waits for the answer. Read
    /// the key to learn which. Nothing is undone.
    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair>;

    /// The pair at `key` (libkv `Get`).
    ///
    /// # Errors
    /// `KeyNotFound` when absent or expired; `InvalidKey`.
    async fn get(&self, key: &str) -> Result<KvPair>;

    /// Whether `key` exists (and has not expired).
    ///
    /// # Errors
    /// `InvalidKey`, or the backend's I/O errors.
    async fn exists(&self, key: &str) -> Result<bool>;

    /// Delete `key`. Idempotent: deleting an absent key succeeds and writes nothing.
    ///
    /// # Errors
    /// `InvalidKey`, or the backend's I/O errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not: once the request has
    /// left, the server applies it whether or not anyone waits for the answer. Read
    /// the key to learn which. Nothing is undone.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Every pair strictly below `prefix`, recursively, sorted by key; empty when none
    /// (differs from libkv, which errored). `list("svc")` never returns `svc` or `svcX/..`.
    ///
    /// # Errors
    /// `InvalidKey` for a malformed prefix, or the backend's I/O errors.
    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>>;

    /// Delete every key strictly below `prefix` atomically, at one revision.
    ///
    /// # Errors
    /// `InvalidKey`, or the backend's I/O errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not: once the request has
    /// left, the server applies it whether or not anyone waits for the answer. Read
    /// the key to learn which. Nothing is undone.
    async fn delete_tree(&self, prefix: &str) -> Result<()>;

    /// Compare-and-swap (libkv `AtomicPut`). With `previous == None` the key is created
    /// only if absent (etcd `Txn` with `CreateRevision == 0`); with `Some(prev)` it is
    /// replaced only if its revision still equals `prev.revision` (etcd `ModRevision`).
    ///
    /// # Errors
    /// `KeyExists` (create on a present key), `KeyNotFound` (replace on an absent key),
    /// `KeyModified` (revision differs), plus those of [`Store::put`].
    ///
    /// # Cancel safety
    /// As [`Store::put`]: a dropped call may have applied; nothing is undone.
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair>;

    /// Delete `key` only if its revision equals `previous.revision` (libkv
    /// `AtomicDelete`).
    ///
    /// # Errors
    /// `KeyNotFound` when absent, `KeyModified` when the revision differs, `InvalidKey`.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not: once the request has
    /// left, the server applies it whether or not anyone waits for the answer. Read
    /// the key to learn which. Nothing is undone.
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()>;

    /// libkv `Watch`: the key's current value (`None` if absent: watching a missing key is
    /// allowed), then its value after every change, `None` after a delete or expiry. A
    /// rewrite of the same value is a change. Never misses a change: after a gap it
    /// yields the current state. Ends when dropped or when the store closes.
    ///
    /// # Errors
    /// `InvalidKey`, `Unsupported` without watch support; later failures arrive as `Err`
    /// items.
    async fn watch(&self, key: &str) -> Result<BoxStream<'static, Result<Option<KvPair>>>>;

    /// libkv `WatchTree`: the full sorted list below `prefix` now, then after every
    /// revision that changed it (differs from libkv's etcd v3, which sent deltas).
    ///
    /// # Errors
    /// As [`Store::watch`].
    async fn watch_tree(&self, prefix: &str) -> Result<BoxStream<'static, Result<Vec<KvPair>>>>;

    /// The event-level watch of everything below `prefix`: `Put` / `Delete` events in
    /// revision order, starting with a [`WatchEvent::Snapshot`] or after a revision
    /// ([`WatchFrom`]), with [`WatchEvent::Resync`] when history was lost.
    ///
    /// # Errors
    /// As [`Store::watch`].
    async fn watch_prefix_events(
        &self,
        prefix: &str,
        from: WatchFrom,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>>;

    /// A [`Locker`] for `key` (libkv `NewLock`); nothing is written until
    /// [`Locker::lock`].
    ///
    /// # Errors
    /// `InvalidKey`, `InvalidArgument` (a zero TTL or one over [`crate::MAX_TTL`]), `Unsupported` without lock support.
    fn new_lock(&self, key: &str, options: LockOptions) -> Result<Locker>;

    /// An [`Election`] named `name` (etcd `concurrency.NewElection`,
    /// [contract §11](crate::contract#11-leader-election)); nothing is written until
    /// [`Election::campaign`].
    ///
    /// # Errors
    /// `InvalidKey` for a malformed name, `InvalidArgument` (a zero TTL or one over
    /// [`crate::MAX_TTL`]), `Unsupported` without lock support.
    fn new_election(&self, name: &str, options: ElectionOptions) -> Result<Election>;

    /// Grant a lease of `ttl` (rounded up to the backend's granularity) and keep it alive
    /// in the background every `ttl / 3` while the returned handle lives.
    ///
    /// # Errors
    /// `InvalidArgument` for a zero TTL or one over [`crate::MAX_TTL`], `Unsupported` without lease support, I/O errors.
    ///
    /// # Cancel safety
    /// A dropped call may have granted a lease that no handle holds: it is not kept
    /// alive, so it expires after `ttl` (and is revoked when this store closes).
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Refresh `lease` once (as `etcdctl lease keep-alive --once`); returns its TTL from
    /// now.
    ///
    /// # Errors
    /// `LeaseLost` if the lease no longer exists.
    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration>;

    /// Revoke `lease` now: its keys are deleted at one revision. Revoking a lease that no
    /// longer exists succeeds.
    ///
    /// # Errors
    /// The backend's I/O errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write applied or not: once the request has
    /// left, the server applies it whether or not anyone waits for the answer. Read
    /// the key to learn which. Nothing is undone.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Apply a transaction (etcd `Txn`, [contract §10](crate::contract#10-transactions)): if every comparison holds,
    /// the `and_then` operations, otherwise the `or_else` ones, atomically at one
    /// revision; watchers see the branch's writes as one batch.
    ///
    /// # Errors
    /// `InvalidArgument` past [`crate::MAX_TXN_OPS`] comparisons or operations in a branch,
    /// for a key written twice in one branch, or for bad put options; `InvalidKey`,
    /// `ValueTooLarge`; `Unsupported` without transaction support; `LeaseLost` for a put
    /// on an unknown lease; the backend's I/O errors. Nothing is applied on an error,
    /// except one that [`Error::may_have_applied`] (the answer was lost): then the
    /// transaction may have been applied as a whole, and it is not undone.
    ///
    /// # Cancel safety
    /// As [`Store::put`]: a dropped transaction may have been applied, as a whole or
    /// not at all; the leases granted for its TTL puts are left to expire after their
    /// TTL.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Stop every background task and revoke this store's leases; every later call
    /// returns [`Error::Closed`]. Cloned handles share the store and are closed too.
    ///
    /// # Errors
    /// The backend's I/O errors while revoking.
    ///
    /// # Cancel safety
    /// The store is closing from the first poll: dropping the future leaves it closing,
    /// the leases not yet revoked expire after their TTLs.
    async fn close(&self) -> Result<()>;
}

fn check_value<B: Backend>(backend: &B, key: &Key, value: &Bytes) -> Result<()> {
    let limit = Backend::capabilities(backend).max_value_size;
    if value.len() > limit {
        return Err(Error::ValueTooLarge {
            key: key.to_string(),
            size: value.len(),
            limit,
        });
    }
    Ok(())
}

fn require<B: Backend>(backend: &B, supported: bool, operation: &'static str) -> Result<()> {
    if supported {
        Ok(())
    } else {
        Err(unsupported(backend, operation))
    }
}

fn check_ttl<B: Backend>(backend: &B, ttl: Duration, operation: &'static str) -> Result<()> {
    require(backend, Backend::capabilities(backend).leases, operation)?;
    check_ttl_range(ttl, operation)
}

/// Validated write with options: a TTL becomes a fresh lease that is not kept alive
/// (as libkv's etcd v3 store did), written by [`Backend::put_with_ttl`].
async fn write_with_options<B: Backend>(
    backend: &B,
    operation: &'static str,
    key: &str,
    value: Bytes,
    condition: Condition,
    options: PutOptions,
) -> Result<KvPair> {
    let key = Key::new(key)?;
    check_value(backend, &key, &value)?;
    options.validate(operation)?;
    if options.lease.is_some() {
        require(backend, Backend::capabilities(backend).leases, operation)?;
    }
    let Some(ttl) = options.ttl else {
        return Backend::put(backend, &key, value, condition, options.lease).await;
    };
    check_ttl(backend, ttl, operation)?;
    Backend::put_with_ttl(backend, &key, value, condition, ttl).await
}

#[async_trait]
impl<B: Backend> Store for B {
    fn backend(&self) -> &'static str {
        Backend::backend(self)
    }

    fn capabilities(&self) -> Capabilities {
        Backend::capabilities(self)
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<KvPair> {
        write_with_options(self, "put", key, value, Condition::Always, options).await
    }

    async fn get(&self, key: &str) -> Result<KvPair> {
        let key = Key::new(key)?;
        Backend::get(self, &key)
            .await?
            .ok_or_else(|| Error::KeyNotFound {
                key: key.to_string(),
            })
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(Backend::get(self, &Key::new(key)?).await?.is_some())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        Backend::delete(self, &Key::new(key)?, None).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KvPair>> {
        let mut pairs = Backend::list(self, &Prefix::new(prefix)?).await?;
        pairs.retain(|pair| is_valid_key(&pair.key));
        Ok(pairs)
    }

    async fn delete_tree(&self, prefix: &str) -> Result<()> {
        Backend::delete_tree(self, &Prefix::new(prefix)?).await?;
        Ok(())
    }

    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: PutOptions,
    ) -> Result<KvPair> {
        let condition = match previous {
            None => Condition::Absent,
            Some(previous) => Condition::Revision(previous.revision),
        };
        write_with_options(self, "atomic_put", key, value, condition, options).await
    }

    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let key = Key::new(key)?;
        Backend::delete(self, &key, Some(previous.revision)).await?;
        Ok(())
    }

    async fn watch(&self, key: &str) -> Result<BoxStream<'static, Result<Option<KvPair>>>> {
        let key = Key::new(key)?;
        require(self, Backend::capabilities(self).watch, "watch")?;
        let batches = Backend::watch(self, WatchTarget::Key(key), WatchFrom::Snapshot).await?;
        Ok(watch::key_view(watch::only_valid_keys(batches)))
    }

    async fn watch_tree(&self, prefix: &str) -> Result<BoxStream<'static, Result<Vec<KvPair>>>> {
        let prefix = Prefix::new(prefix)?;
        require(self, Backend::capabilities(self).watch, "watch_tree")?;
        let batches =
            Backend::watch(self, WatchTarget::Prefix(prefix), WatchFrom::Snapshot).await?;
        Ok(watch::tree_view(watch::only_valid_keys(batches)))
    }

    async fn watch_prefix_events(
        &self,
        prefix: &str,
        from: WatchFrom,
    ) -> Result<BoxStream<'static, Result<WatchEvent>>> {
        let prefix = Prefix::new(prefix)?;
        require(
            self,
            Backend::capabilities(self).watch,
            "watch_prefix_events",
        )?;
        let batches = Backend::watch(self, WatchTarget::Prefix(prefix), from).await?;
        Ok(watch::event_view(watch::only_valid_keys(batches)))
    }

    fn new_lock(&self, key: &str, options: LockOptions) -> Result<Locker> {
        let key = Key::new(key)?;
        require(self, Backend::capabilities(self).locks, "new_lock")?;
        check_ttl(self, options.ttl, "new_lock")?;
        check_value(self, &key, &options.value)?;
        let area = self
            .lock_area()
            .ok_or_else(|| unsupported(self, "new_lock"))?;
        Ok(Locker::new(
            Arc::new(self.clone()),
            Arc::new(area),
            key,
            options,
        ))
    }

    fn new_election(&self, name: &str, options: ElectionOptions) -> Result<Election> {
        let name = Key::new(name)?;
        require(self, Backend::capabilities(self).locks, "new_election")?;
        check_ttl(self, options.ttl, "new_election")?;
        let area = self
            .lock_area()
            .ok_or_else(|| unsupported(self, "new_election"))?;
        Ok(Election::new(
            Arc::new(self.clone()),
            Arc::new(area),
            name,
            options,
        ))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        check_ttl(self, ttl, "grant_lease")?;
        let asked = tokio::time::Instant::now();
        let closing = Backend::closing(self);
        let is_closing = || closing.as_ref().is_some_and(|c| c.is_cancelled());
        let closed = || Error::Closed {
            backend: Backend::backend(self),
        };
        // A lease granted once the close has begun would escape it: the close revokes
        // only the leases it took when it began (docs/CONTRACT.md §3).
        if is_closing() {
            return Err(closed());
        }
        let grant = Backend::grant_lease(self, ttl).await?;
        if is_closing() {
            if let Err(error) = Backend::revoke_lease(self, grant.id).await {
                tracing::debug!(lease = %grant.id, %error, "revoking a lease granted during close failed; it expires after its TTL");
            }
            return Err(closed());
        }
        Ok(Lease::keep_alive(
            Arc::new(self.clone()),
            grant,
            asked,
            closing,
        ))
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        require(self, Backend::capabilities(self).leases, "keep_alive_lease")?;
        Backend::keep_alive_lease(self, lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        require(self, Backend::capabilities(self).leases, "revoke_lease")?;
        Backend::revoke_lease(self, lease).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        require(self, Backend::capabilities(self).transactions, "txn")?;
        let mut txn = txn.validated(Backend::capabilities(self).max_value_size)?;
        // A TTL put becomes a fresh lease, as for `put`; the leases of the branch that
        // is not applied (or of a failed call) are revoked again.
        let mut granted = Vec::new();
        for options in txn.ttl_puts_mut() {
            let Some(ttl) = options.ttl else { continue };
            check_ttl(self, ttl, "txn")?;
            let grant = match Backend::grant_lease(self, ttl).await {
                Ok(grant) => grant,
                Err(error) => {
                    for lease in granted {
                        let _ = Backend::revoke_lease(self, lease).await;
                    }
                    return Err(error);
                }
            };
            granted.push(grant.id);
            *options = PutOptions::with_lease(grant.id);
        }
        let outcome = Backend::txn(self, &txn).await;
        let puts_of = |succeeded: bool| -> Vec<LeaseId> {
            txn.branch(succeeded)
                .iter()
                .filter_map(|op| match op {
                    TxnOp::Put { options, .. } => options.lease,
                    _ => None,
                })
                .collect()
        };
        let kept: Vec<LeaseId> = match &outcome {
            Ok(response) => puts_of(response.succeeded),
            // Its answer was lost: either branch may have been applied, and revoking a
            // lease of the applied one would delete half a transaction. Leases of TTL
            // puts expire after their TTL anyway.
            Err(e) if e.may_have_applied() => granted.clone(),
            Err(_) => Vec::new(),
        };
        for lease in granted {
            if kept.contains(&lease) {
                self.detach_lease(lease);
            } else {
                // Best effort: an unused lease expires by itself anyway.
                let _ = Backend::revoke_lease(self, lease).await;
            }
        }
        outcome
    }

    async fn close(&self) -> Result<()> {
        Backend::close(self).await
    }
}
