//! A lease's remaining life is counted from when its last successful keep-alive was
//! *sent* (docs/CONTRACT.md §4): a server that answers slowly must make `lost()` fire
//! earlier, never later, than the server can have expired the lease.
//!
//! The backend is the real memory store with one thing changed: keep-alive answers
//! arrive late, as over a slow network. Time is tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{Backend, Condition, LeaseGrant, Lifecycle};
use kvstore_core::{Capabilities, Key, KvPair, LeaseId, LeaseLoss, Prefix, Result, Store};
use kvstore_memory::MemoryStore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The memory store behind a slow network: a keep-alive takes `delay` to reach the
/// server and `delay` again for its answer to come back; keep-alives sent after
/// `stop_at` are never answered (the server is gone).
#[derive(Clone)]
struct SlowAnswers {
    inner: MemoryStore,
    delay: Duration,
    stop_at: Instant,
}

/// Only keys, values and leases: watches, locks and transactions keep the trait's
/// `Unsupported` defaults, as a minimal third-party backend would.
#[async_trait]
impl Backend for SlowAnswers {
    fn backend(&self) -> &'static str {
        "slow-answers"
    }
    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new(Backend::capabilities(&self.inner).max_value_size);
        capabilities.leases = true;
        capabilities
    }
    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        Backend::get(&self.inner, key).await
    }
    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Backend::list(&self.inner, prefix).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        Backend::put(&self.inner, key, value, condition, lease).await
    }
    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        Backend::delete(&self.inner, key, revision).await
    }
    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        Backend::delete_tree(&self.inner, prefix).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        Backend::grant_lease(&self.inner, ttl).await
    }
    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        if Instant::now() >= self.stop_at {
            // The server is gone: the request is never answered.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        let ttl = Backend::keep_alive_lease(&self.inner, lease).await?;
        tokio::time::sleep(self.delay).await;
        Ok(ttl)
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        Backend::revoke_lease(&self.inner, lease).await
    }
    async fn close(&self) -> Result<()> {
        Backend::close(&self.inner).await
    }
}

#[tokio::test(start_paused = true)]
async fn lost_fires_no_later_than_the_server_expires_the_lease_when_answers_are_slow() {
    const TTL: Duration = Duration::from_secs(9);
    let memory = MemoryStore::new();
    let start = Instant::now();
    let store: Arc<dyn Store> = Arc::new(SlowAnswers {
        inner: memory.clone(),
        // A round trip takes two thirds of a keep-alive interval.
        delay: Duration::from_secs(1),
        stop_at: start + Duration::from_secs(20),
    });
    let lease = store.grant_lease(TTL).await.unwrap();
    let key = "holder";
    // The memory store as users see it, beside the slow handle on the same data.
    let memory: Arc<dyn Store> = Arc::new(memory);
    memory
        .put(
            key,
            Bytes::from("me"),
            kvstore_core::PutOptions::with_lease(lease.id()),
        )
        .await
        .unwrap();

    let reason = tokio::time::timeout(Duration::from_secs(120), lease.lost())
        .await
        .expect("lost() fires once keep-alives stop");
    let lost_at = Instant::now();
    assert_eq!(reason, LeaseLoss::KeepAliveFailed);
    // The last keep-alive was sent at 18 s, refreshed the lease at 19 s (so the server
    // expires it at 28 s) and was answered at 20 s. Counting from the send, lost()
    // fires at 27 s, while the server still holds the lease; counting from the answer
    // it would fire at 29 s, after a second holder could have taken the lock.
    assert!(
        memory.exists(key).await.unwrap(),
        "lost() fired at {:?}, after the server expired the lease",
        lost_at - start
    );
}

/// How long `lost()` may take once the store is closed: it must not wait for the next
/// keep-alive (a third of the TTL away), so on the paused clock no time passes at all.
const AT_ONCE: Duration = Duration::from_millis(1);

/// Closing the store ends its leases (docs/CONTRACT.md §3, §4): `lost()` resolves at
/// once with `StoreClosed`, not at the next keep-alive, whichever handle closed it.
#[tokio::test(start_paused = true)]
async fn lost_fires_at_once_with_store_closed_when_the_store_is_closed() {
    const TTL: Duration = Duration::from_secs(30);
    let memory = MemoryStore::new();
    let store: Arc<dyn Store> = Arc::new(memory.clone());
    let lease = store.grant_lease(TTL).await.unwrap();
    // Between keep-alives: the next one is 9 s away.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(lease.loss(), None);

    // Another handle on the same store closes it.
    let other: Arc<dyn Store> = Arc::new(memory);
    other.close().await.unwrap();
    let reason = tokio::time::timeout(AT_ONCE, lease.lost())
        .await
        .expect("lost() resolves as soon as the store is closed");
    assert_eq!(reason, LeaseLoss::StoreClosed);
    assert_eq!(lease.loss(), Some(LeaseLoss::StoreClosed));
}

/// A lock holder learns at once that its lock is gone when the store is closed, with
/// the reason.
#[tokio::test(start_paused = true)]
async fn a_lock_guard_is_lost_at_once_when_the_store_is_closed() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let guard = store
        .new_lock("jobs/nightly", kvstore_core::LockOptions::default())
        .unwrap()
        .lock()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.close().await.unwrap();
    let reason = tokio::time::timeout(AT_ONCE, guard.lost())
        .await
        .expect("the guard's lost() resolves as soon as the store is closed");
    assert_eq!(reason, LeaseLoss::StoreClosed);
}

/// Closing one store leaves the leases of every other store alone, even of the same
/// backend: they are still kept alive, and their keys stay.
#[tokio::test(start_paused = true)]
async fn closing_a_store_leaves_the_leases_of_other_stores_alone() {
    const TTL: Duration = Duration::from_secs(3);
    let open: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let closed: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let kept = open.grant_lease(TTL).await.unwrap();
    let ended = closed.grant_lease(TTL).await.unwrap();
    open.put(
        "holder",
        Bytes::from("me"),
        kvstore_core::PutOptions::with_lease(kept.id()),
    )
    .await
    .unwrap();

    closed.close().await.unwrap();
    let reason = tokio::time::timeout(AT_ONCE, ended.lost()).await.unwrap();
    assert_eq!(reason, LeaseLoss::StoreClosed);
    // Several TTLs later the other store's lease still lives.
    let outlived = tokio::time::timeout(TTL * 4, kept.lost()).await;
    assert!(outlived.is_err(), "lost() fired: {outlived:?}");
    assert_eq!(kept.loss(), None);
    assert!(open.exists("holder").await.unwrap());
}

/// A client built like the networked backends, on a server (the memory store) that
/// outlives it: a [`Lifecycle`] that `close` revokes the leases through
/// (`close_revoking`), each revoke followed by `revoke_pause` more of closing (other
/// leases being revoked, a slow server); each keep-alive passes the open check, then
/// takes `keep_alive_delay` to reach the server.
#[derive(Clone)]
struct Networked {
    inner: MemoryStore,
    lifecycle: Arc<Lifecycle>,
    keep_alive_delay: Duration,
    revoke_pause: Duration,
}

impl Networked {
    fn new(keep_alive_delay: Duration, revoke_pause: Duration) -> Networked {
        Networked {
            inner: MemoryStore::new(),
            lifecycle: Arc::new(Lifecycle::new()),
            keep_alive_delay,
            revoke_pause,
        }
    }
}

#[async_trait]
impl Backend for Networked {
    fn backend(&self) -> &'static str {
        "networked"
    }
    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new(Backend::capabilities(&self.inner).max_value_size);
        capabilities.leases = true;
        capabilities
    }
    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        self.lifecycle.ensure_open("networked")?;
        Backend::get(&self.inner, key).await
    }
    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        self.lifecycle.ensure_open("networked")?;
        Backend::list(&self.inner, prefix).await
    }
    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        self.lifecycle.ensure_open("networked")?;
        Backend::put(&self.inner, key, value, condition, lease).await
    }
    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        self.lifecycle.ensure_open("networked")?;
        Backend::delete(&self.inner, key, revision).await
    }
    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        self.lifecycle.ensure_open("networked")?;
        Backend::delete_tree(&self.inner, prefix).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        self.lifecycle.ensure_open("networked")?;
        let grant = Backend::grant_lease(&self.inner, ttl).await?;
        self.lifecycle.track_lease(grant.id);
        Ok(grant)
    }
    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        self.lifecycle.ensure_open("networked")?;
        tokio::time::sleep(self.keep_alive_delay).await;
        Backend::keep_alive_lease(&self.inner, lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.lifecycle.ensure_open("networked")?;
        Backend::revoke_lease(&self.inner, lease).await?;
        self.lifecycle.forget_lease(lease);
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        self.lifecycle
            .close_revoking(|lease| async move {
                let revoked = Backend::revoke_lease(self, lease).await;
                tokio::time::sleep(self.revoke_pause).await;
                revoked
            })
            .await;
        // The server lives on: only this client is closed.
        Ok(())
    }
    fn closing(&self) -> Option<CancellationToken> {
        Some(self.lifecycle.closing().clone())
    }
}

/// A keep-alive that runs while the store is closing (its leases already revoked, the
/// close not finished) is refused as `Closed`: `lost()` says `StoreClosed`, not that
/// the lease expired, and says it before the close even returns.
#[tokio::test(start_paused = true)]
async fn a_keep_alive_during_the_close_reports_store_closed_not_expiry() {
    const TTL: Duration = Duration::from_secs(3);
    let store: Arc<dyn Store> = Arc::new(Networked::new(Duration::ZERO, Duration::from_secs(2)));
    let start = Instant::now();
    let lease = store.grant_lease(TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The close revokes the lease at 0.5 s and returns at 2.5 s; the keep-alive is due
    // at 1 s.
    let closing = tokio::spawn({
        let store = store.clone();
        async move { store.close().await }
    });
    let reason = tokio::time::timeout(TTL, lease.lost())
        .await
        .expect("lost() fires while the store closes");
    assert_eq!(reason, LeaseLoss::StoreClosed);
    assert!(
        !closing.is_finished(),
        "lost() fired at {:?}, after the close returned",
        start.elapsed()
    );
    closing.await.unwrap().unwrap();
}

/// A keep-alive that passed the open check just before the close began reaches the
/// server after the close revoked its lease: the loss is still `StoreClosed`.
#[tokio::test(start_paused = true)]
async fn a_keep_alive_overtaken_by_the_close_reports_store_closed_not_expiry() {
    const TTL: Duration = Duration::from_secs(3);
    let store: Arc<dyn Store> =
        Arc::new(Networked::new(Duration::from_millis(200), Duration::ZERO));
    let lease = store.grant_lease(TTL).await.unwrap();
    // The keep-alive leaves at 1 s and reaches the server at 1.2 s; the close revokes
    // the lease at 1.1 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.close().await.unwrap();
    let reason = tokio::time::timeout(Duration::from_millis(200), lease.lost())
        .await
        .expect("lost() fires when the keep-alive is answered");
    assert_eq!(reason, LeaseLoss::StoreClosed);
}
