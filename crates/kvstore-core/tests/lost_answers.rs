//! A write whose answer was lost may have been applied, and must never be undone
//! ([contract §7]): the TTL put and the transaction with a TTL put that core builds
//! from a lease and a write leave the fresh lease alone when the write's outcome is
//! unknown, so a key that was written stays until its TTL and a transaction is never
//! half undone.
//!
//! The backend is the real memory store with one thing changed: while its switch is
//! on, writes apply, then their answer is lost (the caller sees `Unavailable`, as after
//! a connection reset between the server's commit and its reply).
//!
//! [contract §7]: kvstore_core::contract

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};

use kvstore_core::backend::{Backend, Condition, EventBatchStream, LeaseGrant, WatchTarget};
use kvstore_core::{
    Capabilities, ElectionOptions, Error, Key, KvPair, LeaseId, Prefix, PutOptions, Result, Store,
    Txn, TxnOp, TxnResponse, WatchFrom,
};
use kvstore_memory::MemoryStore;
use tokio_util::sync::CancellationToken;

/// The memory store whose write answers are lost after the write applied, while
/// `lose` is on.
#[derive(Clone)]
struct LostAnswers {
    inner: MemoryStore,
    lose: Arc<AtomicBool>,
}

impl LostAnswers {
    fn answer<T>(&self, operation: &'static str, answer: T) -> Result<T> {
        if self.lose.load(Ordering::Relaxed) {
            Err(lost(operation))
        } else {
            Ok(answer)
        }
    }
}

fn lost(operation: &'static str) -> Error {
    Error::Unavailable {
        backend: "lost-answers",
        operation,
        message: "the connection was reset before the answer arrived".into(),
        source: None,
    }
}

#[async_trait]
impl Backend for LostAnswers {
    fn backend(&self) -> &'static str {
        "lost-answers"
    }
    fn capabilities(&self) -> Capabilities {
        Backend::capabilities(&self.inner)
    }
    fn lock_area(&self) -> Option<Self> {
        Some(LostAnswers {
            inner: self.inner.lock_area()?,
            lose: self.lose.clone(),
        })
    }
    async fn watch(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        Backend::watch(&self.inner, target, from).await
    }
    fn closing(&self) -> Option<CancellationToken> {
        Backend::closing(&self.inner)
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
        let written = Backend::put(&self.inner, key, value, condition, lease).await?;
        self.answer("put", written)
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
        Backend::keep_alive_lease(&self.inner, lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        Backend::revoke_lease(&self.inner, lease).await
    }
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        let applied = Backend::txn(&self.inner, txn).await?;
        self.answer("txn", applied)
    }
    async fn close(&self) -> Result<()> {
        Backend::close(&self.inner).await
    }
}

const TTL: Duration = Duration::from_secs(30);

/// A handle that loses its write answers while the switch is on (on from the start),
/// and a plain handle on the same data.
fn switched() -> (Arc<dyn Store>, Arc<dyn Store>, Arc<AtomicBool>) {
    let memory = MemoryStore::new();
    let lose = Arc::new(AtomicBool::new(true));
    let lossy: Arc<dyn Store> = Arc::new(LostAnswers {
        inner: memory.clone(),
        lose: lose.clone(),
    });
    (lossy, Arc::new(memory), lose)
}

fn stores() -> (Arc<dyn Store>, Arc<dyn Store>) {
    let (lossy, direct, _) = switched();
    (lossy, direct)
}

#[tokio::test(start_paused = true)]
async fn a_ttl_put_whose_answer_was_lost_keeps_the_key_it_wrote_until_its_ttl() {
    let (lossy, direct) = stores();
    direct
        .put("cfg", Bytes::from("v1"), PutOptions::default())
        .await
        .unwrap();
    let outcome = lossy
        .put("cfg", Bytes::from("v2"), PutOptions::with_ttl(TTL))
        .await;
    assert!(
        matches!(&outcome, Err(e) if e.may_have_applied()),
        "{outcome:?}"
    );
    assert_eq!(
        direct.get("cfg").await.unwrap().value,
        "v2",
        "the write applied and was not undone"
    );
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        !direct.exists("cfg").await.unwrap(),
        "the TTL key still expires"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transaction_whose_answer_was_lost_is_never_half_undone() {
    let (lossy, direct) = stores();
    let txn = Txn::new().and_then([
        TxnOp::put("a", Bytes::from("1"), PutOptions::with_ttl(TTL)),
        TxnOp::put("b", Bytes::from("2"), PutOptions::default()),
    ]);
    let outcome = lossy.txn(txn).await;
    assert!(
        matches!(&outcome, Err(e) if e.may_have_applied()),
        "{outcome:?}"
    );
    let a = direct.get("a").await.unwrap();
    let b = direct.get("b").await.unwrap();
    assert_eq!((a.value.as_ref(), b.value.as_ref()), (&b"1"[..], &b"2"[..]));
    assert_eq!(a.revision, b.revision, "both at one revision");
}

#[tokio::test(start_paused = true)]
async fn a_ttl_put_that_certainly_failed_writes_nothing() {
    let (lossy, direct) = stores();
    direct
        .put("taken", Bytes::from("x"), PutOptions::default())
        .await
        .unwrap();
    // A create-only put on an existing key: the server refuses it, a definite outcome.
    let outcome = lossy
        .atomic_put("taken", Bytes::from("y"), None, PutOptions::with_ttl(TTL))
        .await;
    assert!(
        matches!(&outcome, Err(Error::KeyExists { .. })),
        "{outcome:?}"
    );
    assert!(!outcome.unwrap_err().may_have_applied());
    assert_eq!(direct.get("taken").await.unwrap().value, "x");
}

/// A leader whose proclaim applied although its answer was lost still leads: the next
/// proclaim succeeds, observers see it, and `lost()` has not fired (before, it failed
/// with `LockLost` while the leader still led).
#[tokio::test(start_paused = true)]
async fn a_leader_whose_proclaim_answer_was_lost_still_proclaims() {
    let (lossy, _direct, lose) = switched();
    lose.store(false, Ordering::Relaxed);
    let election = lossy
        .new_election("leader", ElectionOptions { ttl: TTL })
        .unwrap();
    let leadership = election.campaign(Bytes::from("v1")).await.unwrap();

    lose.store(true, Ordering::Relaxed);
    let lost_answer = leadership.proclaim(Bytes::from("v2")).await;
    assert!(
        matches!(&lost_answer, Err(e) if e.may_have_applied()),
        "{lost_answer:?}"
    );
    lose.store(false, Ordering::Relaxed);

    let pair = leadership.proclaim(Bytes::from("v3")).await.unwrap();
    assert_eq!(pair.value, "v3");
    assert_eq!(election.leader().await.unwrap().unwrap().value, "v3");
    let lost = tokio::time::timeout(Duration::from_millis(1), leadership.lost()).await;
    assert!(lost.is_err(), "lost() fired: {lost:?}");
}
