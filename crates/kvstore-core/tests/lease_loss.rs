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
use kvstore_core::backend::{Backend, Condition, LeaseGrant};
use kvstore_core::{Capabilities, Key, KvPair, LeaseId, LeaseLoss, Prefix, Result, Store};
use kvstore_memory::MemoryStore;
use tokio::time::Instant;

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
