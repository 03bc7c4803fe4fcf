//! The raw side of the contract, for those who write a backend: the [`Backend`] trait
//! and the machinery every backend shares (its [`Lifecycle`], the resuming watch loop,
//! retry delays).
//!
//! Users never need this module: they call [`crate::Store`], which every `Backend` gets
//! for free. Key validation, value-size checks, option checks, TTL puts, the libkv
//! `watch` / `watch_tree` views, lease keep-alive, locks, elections and transaction
//! validation are written once in core, so every backend behaves the same. A backend
//! only talks to its server, and receives keys that are already validated ([`Key`],
//! [`Prefix`]) and relative to its namespace. Calls go one way, core → backend: a
//! backend never calls back into [`crate::Store`].
//!
//! The methods have the names of the [`crate::Store`] methods they serve (`get`, `list`,
//! `put`, `delete`, `delete_tree`, `watch`, `grant_lease`, …), on validated arguments.
//! Only plain keys and values are required; leases, watches, locks and transactions
//! default to [`crate::Error::Unsupported`] and are switched on by implementing them and
//! saying so in [`Backend::capabilities`]. docs/writing-a-backend.md walks through a
//! backend, and `kvstore_testsuite::conformance_tests!` checks one.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::lease::LeaseId;
use crate::pair::KvPair;
use crate::txn::{Txn, TxnResponse};

pub use crate::lease::LeaseGrant;
pub use crate::lifecycle::{CLOSE_REVOKES_IN_FLIGHT, Lifecycle};
pub use crate::retry::backoff;
pub use crate::store_url::{StoreUrl, invalid as invalid_url, parse_millis};
pub use crate::watch::{
    EventBatchStream, RESUME_MAX_DELAY, RESUME_MIN_DELAY, WatchSource, WatchTarget, resuming,
};

/// The precondition of a [`Backend::put`], checked atomically by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No precondition.
    Always,
    /// The key must be absent (etcd `Txn` comparing `CreateRevision == 0`); otherwise the
    /// backend returns [`crate::Error::KeyExists`].
    Absent,
    /// The key must exist with this mod revision (etcd `Txn` comparing `ModRevision`);
    /// otherwise [`crate::Error::KeyNotFound`] when absent or [`crate::Error::KeyModified`]
    /// when the revision differs.
    Revision(u64),
}

/// The primitives of one storage server. Implement this; users get [`crate::Store`].
///
/// Every method must honour [the contract](crate::contract): revisions strictly increase and one call has
/// one revision, a write returns its pair, and after [`Backend::close`] every method
/// returns [`crate::Error::Closed`].
#[async_trait]
pub trait Backend: Clone + Send + Sync + 'static {
    /// The backend's short name (`"memory"`, `"etcd"`, `"redis"`, `"zookeeper"`), used in errors and
    /// returned by [`crate::Store::backend`].
    fn backend(&self) -> &'static str;

    /// What this backend supports and its limits.
    fn capabilities(&self) -> Capabilities;

    /// The pair at `key`, or `None` when absent (or expired).
    async fn get(&self, key: &Key) -> Result<Option<KvPair>>;

    /// Every pair strictly below `prefix`, sorted by key.
    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>>;

    /// Write `value` at `key` if `condition` holds, attached to `lease` (or to none: a
    /// write without lease detaches the key from any earlier lease, as in etcd).
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair>;

    /// Delete `key`; with `revision`, only if the key exists with that mod revision
    /// (otherwise [`crate::Error::KeyNotFound`] / [`crate::Error::KeyModified`], as
    /// [`Condition::Revision`]). Returns the delete's revision, or `None` when the key was
    /// absent and `revision` is `None` (nothing written).
    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>>;

    /// Delete every key strictly below `prefix` at one revision; `None` when there was
    /// nothing to delete.
    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>>;

    /// A handle on the same server and connections whose keys live outside every key this
    /// handle can address (a sibling of its namespace). The lock recipe keeps its waiter
    /// keys there so they are invisible to `get`/`list`/`watch_tree` ([contract §6](crate::contract#6-locks)).
    /// `None` (the default) for a backend without locks.
    ///
    /// Requires [`Capabilities::locks`]: a backend that claims locks returns `Some`.
    fn lock_area(&self) -> Option<Self> {
        None
    }

    /// Create a lease of at least `ttl` (rounded up to the backend's granularity).
    /// Default: [`crate::Error::Unsupported`].
    ///
    /// Requires [`Capabilities::leases`] (core calls it only then).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        let _ = ttl;
        Err(unsupported(self, "grant_lease"))
    }

    /// Refresh `lease` once; returns its TTL from now. A lease that no longer exists is
    /// [`crate::Error::LeaseLost`] with [`crate::LeaseLoss::Expired`].
    /// Default: [`crate::Error::Unsupported`].
    ///
    /// Requires [`Capabilities::leases`].
    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        let _ = lease;
        Err(unsupported(self, "keep_alive_lease"))
    }

    /// End `lease` now, deleting its keys at one revision. Revoking a lease that no
    /// longer exists succeeds. Default: [`crate::Error::Unsupported`].
    ///
    /// Requires [`Capabilities::leases`].
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let _ = lease;
        Err(unsupported(self, "revoke_lease"))
    }

    /// Write `value` at `key` if `condition` holds, attached to a fresh lease of `ttl`
    /// (already validated, rounded up to the backend's granularity) that is not kept
    /// alive: a TTL put ([`crate::PutOptions::with_ttl`]), as etcd clientv3's `Grant`
    /// then `Put` with `WithLease`. The returned pair's `lease` is the new lease, which
    /// is detached: not kept alive, and not revoked by [`Backend::close`], as libkv's TTL
    /// keys outlive the session that wrote them. A failed condition (or any error)
    /// leaves no lease behind, or one that expires by itself within `ttl`.
    ///
    /// The default is two round trips: [`Backend::grant_lease`], [`Backend::put`] on
    /// the new lease, then [`Backend::detach_lease`] on success or a best-effort
    /// [`Backend::revoke_lease`] on a definite failure. A backend that can create the lease and
    /// write the key in one request (Redis: one script) overrides it; that is exact
    /// because the lease id is not visible to anyone until the put returns. A put whose
    /// outcome is unknown ([`crate::Error::may_have_applied`]) keeps its lease: the key
    /// may be live, and lease and key expire after `ttl`.
    ///
    /// Requires [`Capabilities::leases`].
    async fn put_with_ttl(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        ttl: Duration,
    ) -> Result<KvPair> {
        let grant = Backend::grant_lease(self, ttl).await?;
        let written = Backend::put(self, key, value, condition, Some(grant.id)).await;
        match &written {
            // A put whose answer was lost may have written the key on this lease:
            // revoking it would delete what may be live. Left alone, the lease (and
            // the key, if written) expires after the TTL, as a TTL key does.
            Err(e) if !e.may_have_applied() => {
                // Best effort: an unused lease expires by itself anyway.
                let _ = Backend::revoke_lease(self, grant.id).await;
            }
            _ => Backend::detach_lease(self, grant.id),
        }
        written
    }

    /// Stop treating `lease` as owned by this handle, so [`Backend::close`] will not
    /// revoke it. The default [`Backend::put_with_ttl`] and core's transactions call it
    /// for the lease behind a TTL put, which must outlive the
    /// handle that wrote the key (libkv's TTL keys are not tied to a session). The
    /// default does nothing, for backends that do not track their leases.
    fn detach_lease(&self, lease: LeaseId) {
        let _ = lease;
    }

    /// Apply `txn` atomically at one revision ([contract §10](crate::contract#10-transactions)): evaluate its
    /// comparisons with [`crate::Compare::holds`]'s semantics, apply the chosen branch,
    /// and deliver its writes to watchers as one batch. Core has validated it: keys are
    /// normalised, sizes and limits checked, no key written twice in a branch, and TTL
    /// puts turned into leases (no `ttl` remains). Default: [`crate::Error::Unsupported`].
    ///
    /// Requires [`Capabilities::transactions`].
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let _ = txn;
        Err(unsupported(self, "txn"))
    }

    /// Watch `target` ([contract §5](crate::contract#5-watch)). The stream yields batches, each holding whole
    /// revisions only, in revision order: first a `Snapshot` when `from` is
    /// [`crate::WatchFrom::Snapshot`], then `Put`/`Delete` events, or a `Resync` when
    /// history was lost. It resumes by itself after a dropped connection ([`resuming`]
    /// does that part) and ends only when dropped or when the store is closed.
    /// Default: [`crate::Error::Unsupported`].
    ///
    /// Requires [`Capabilities::watch`].
    async fn watch(&self, target: WatchTarget, from: crate::WatchFrom) -> Result<EventBatchStream> {
        let _ = (target, from);
        Err(unsupported(self, "watch"))
    }

    /// Stop background tasks, revoke the leases this store granted, and make every later
    /// call fail with [`crate::Error::Closed`].
    async fn close(&self) -> Result<()>;

    /// A token this handle and its clones cancel as soon as one of them starts closing,
    /// before the leases are revoked ([`Lifecycle::closing`] for a backend that keeps a
    /// [`Lifecycle`]). Core's keep-alive of each lease watches it, so the lease's `lost()`
    /// resolves with [`crate::LeaseLoss::StoreClosed`] at once. The default, `None`,
    /// leaves a lease to learn of the close at its next keep-alive, within a third of its
    /// TTL.
    fn closing(&self) -> Option<CancellationToken> {
        None
    }
}

/// [`Error::Unsupported`] for `operation` on `backend`.
pub(crate) fn unsupported<B: Backend>(backend: &B, operation: &'static str) -> Error {
    Error::Unsupported {
        operation,
        backend: backend.backend(),
    }
}
