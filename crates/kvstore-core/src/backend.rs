//! [`Backend`]: the small set of primitives a backend implements.
//!
//! Everything a user calls lives on [`crate::Store`], which every `Backend` gets for free:
//! key validation, value-size checks, option checks, TTL puts, the libkv `watch` /
//! `watch_tree` views, lease keep-alive and the lock recipe are written once in core, so
//! every backend behaves the same (STYLE: "write semantics once"). A backend only talks to
//! its server, and receives keys that are already validated ([`Key`], [`Prefix`]) and
//! relative to its namespace.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::lease::{LeaseGrant, LeaseId};
use crate::pair::KvPair;
use crate::watch::{EventBatchStream, WatchFrom, WatchTarget};

/// The precondition of a conditional write or delete, checked atomically by the server.
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
/// Every method must honour docs/CONTRACT.md: revisions strictly increase and one call has
/// one revision, a write returns its pair, and after [`Backend::shutdown`] every method
/// returns [`crate::Error::Closed`].
#[async_trait]
pub trait Backend: Clone + Send + Sync + 'static {
    /// The backend's short name (`"memory"`, `"etcd"`, `"redis"`), used in errors.
    fn name(&self) -> &'static str;

    /// What this backend supports and its limits.
    fn capabilities(&self) -> Capabilities;

    /// A handle on the same server and connections whose keys live outside every key this
    /// handle can address (a sibling of its namespace). The lock recipe keeps its waiter
    /// keys there so they are invisible to `get`/`list`/`watch_tree` (docs/CONTRACT.md §6).
    fn lock_area(&self) -> Self;

    /// The pair at `key`, or `None` when absent (or expired).
    async fn fetch(&self, key: &Key) -> Result<Option<KvPair>>;

    /// Every pair strictly below `prefix`, sorted by key.
    async fn fetch_prefix(&self, prefix: &Prefix) -> Result<Vec<KvPair>>;

    /// Write `value` at `key` if `condition` holds, attached to `lease` (or to none: a
    /// write without lease detaches the key from any earlier lease, as in etcd).
    async fn write(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair>;

    /// Delete `key` if `condition` holds. Returns the delete's revision, or `None` when
    /// `condition` is [`Condition::Always`] and the key was absent (nothing written).
    async fn remove(&self, key: &Key, condition: Condition) -> Result<Option<u64>>;

    /// Delete every key strictly below `prefix` at one revision; `None` when there was
    /// nothing to delete.
    async fn remove_prefix(&self, prefix: &Prefix) -> Result<Option<u64>>;

    /// Create a lease of at least `ttl` (rounded up to the backend's granularity).
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant>;

    /// Refresh `lease` once; returns its TTL from now. A lease that no longer exists is
    /// [`crate::Error::LeaseLost`] with [`crate::LeaseLoss::Expired`].
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Stop treating `lease` as owned by this handle, so [`Backend::shutdown`] will not
    /// revoke it. Core calls it for the lease behind a TTL put, which must outlive the
    /// handle that wrote the key (libkv's TTL keys are not tied to a session). The
    /// default does nothing, for backends that do not track their leases.
    fn lease_detach(&self, lease: LeaseId) {
        let _ = lease;
    }

    /// End `lease` now, deleting its keys at one revision. Revoking a lease that no
    /// longer exists succeeds.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()>;

    /// Apply `txn` atomically at one revision (docs/CONTRACT.md §10): evaluate its
    /// comparisons with [`crate::Compare::holds`]'s semantics, apply the chosen branch,
    /// and deliver its writes to watchers as one batch. Core has validated it: keys are
    /// normalised, sizes and limits checked, no key written twice in a branch, and TTL
    /// puts turned into leases (no `ttl` remains). The default is
    /// [`crate::Error::Unsupported`], for backends whose capabilities say no.
    async fn txn(&self, txn: &crate::txn::Txn) -> Result<crate::txn::TxnResponse> {
        let _ = txn;
        Err(crate::Error::Unsupported {
            operation: "txn",
            backend: self.name(),
        })
    }

    /// Watch `target` (docs/CONTRACT.md §5). The stream yields batches, each holding whole
    /// revisions only, in revision order: first a `Snapshot` when `from` is
    /// [`WatchFrom::Snapshot`], then `Put`/`Delete` events, or a `Resync` when history
    /// was lost. It resumes by itself after a dropped connection and ends only when
    /// dropped or when the store is closed.
    async fn subscribe(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream>;

    /// Stop background tasks, revoke the leases this store granted, and make every later
    /// call fail with [`crate::Error::Closed`].
    async fn shutdown(&self) -> Result<()>;
}
