//! [contract §11](kvstore_core::contract#11-leader-election): leader election.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kvstore_core::{ElectionOptions, Error, KvPair, LockOptions, Store};

use crate::{Harness, WAIT, fresh_store, next_item, value};

fn elections_supported(store: &Arc<dyn Store>) -> bool {
    crate::claims(store.capabilities().locks, "locks")
}

fn options(harness: &dyn Harness) -> ElectionOptions {
    ElectionOptions { ttl: harness.ttl() }
}

/// Candidates on separate connections lead one at a time, in the order they campaigned,
/// with increasing fencing tokens; `leader()` names the one leading.
pub async fn election_has_one_leader_at_a_time_across_connections(harness: &dyn Harness) {
    const CANDIDATES: usize = 3;
    let (namespace, store) = fresh_store(harness).await;
    if !elections_supported(&store) {
        return;
    }
    let leading = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut candidates = Vec::new();
    for i in 0..CANDIDATES {
        let handle = harness
            .open(&namespace)
            .await
            .unwrap_or_else(|e| panic!("the harness could not open a store: {e}"));
        let election = handle.new_election("scheduler", options(harness)).unwrap();
        let (leading, most) = (leading.clone(), most.clone());
        candidates.push(tokio::spawn(async move {
            let leadership = election
                .campaign(value(&format!("node-{i}")))
                .await
                .unwrap();
            let now = leading.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let leader = election.leader().await.unwrap().expect("a leader");
            assert_eq!(leader.value, format!("node-{i}"));
            assert_eq!(leader.create_revision, leadership.fencing_token());
            leading.fetch_sub(1, Ordering::SeqCst);
            let token = leadership.fencing_token();
            leadership.resign().await.unwrap();
            token
        }));
    }
    let mut tokens = Vec::new();
    for candidate in candidates {
        tokens.push(
            tokio::time::timeout(WAIT, candidate)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two leaders at once");
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        CANDIDATES,
        "each leader has its own fencing token"
    );
    let election = store.new_election("scheduler", options(harness)).unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
}

/// A leader that dies without resigning is replaced after its TTL, and the next leader's
/// fencing token is greater; the dead leader can no longer proclaim.
pub async fn killed_leader_is_replaced_within_ttl(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !elections_supported(&store) {
        return;
    }
    let first = store.new_election("primary", options(harness)).unwrap();
    let dead = first.campaign(value("a")).await.unwrap();
    let dead_token = dead.fencing_token();
    let other = harness
        .open(&namespace)
        .await
        .unwrap_or_else(|e| panic!("the harness could not open a store: {e}"));
    let second = other.new_election("primary", options(harness)).unwrap();
    let waiting = tokio::spawn(async move { second.campaign(value("b")).await });
    dead.abandon();
    let next = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the next candidate leads within the TTL")
        .unwrap()
        .unwrap();
    assert!(next.fencing_token() > dead_token);
    assert_eq!(first.leader().await.unwrap().unwrap().value, "b");
}

/// An observer sees every change of leader and of the leader's value, in order.
pub async fn observers_see_every_leader_change_in_order(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !elections_supported(&store) || !crate::claims(store.capabilities().watch, "watch") {
        return;
    }
    let election = store
        .new_election("config-writer", options(harness))
        .unwrap();
    let mut changes = election.observe().await.unwrap();
    assert_eq!(next_item(&mut changes, "nobody leads").await, None);
    let value_of =
        |leader: Option<KvPair>| leader.map(|p| String::from_utf8_lossy(&p.value).into_owned());

    let a = election.campaign(value("a")).await.unwrap();
    assert_eq!(
        value_of(next_item(&mut changes, "a leads").await).as_deref(),
        Some("a")
    );
    a.proclaim(value("a2")).await.unwrap();
    assert_eq!(
        value_of(next_item(&mut changes, "a proclaims").await).as_deref(),
        Some("a2")
    );
    a.resign().await.unwrap();
    assert_eq!(next_item(&mut changes, "a resigns").await, None);
    let b = election.campaign(value("b")).await.unwrap();
    assert_eq!(
        value_of(next_item(&mut changes, "b leads").await).as_deref(),
        Some("b")
    );
    b.resign().await.unwrap();
}

/// A leadership that ended can no longer proclaim: `LockLost`, and nothing is written.
pub async fn proclaim_after_resigning_elsewhere_is_lock_lost(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !elections_supported(&store) {
        return;
    }
    let election = store.new_election("e", options(harness)).unwrap();
    let leadership = election.campaign(value("mine")).await.unwrap();
    let leader = election.leader().await.unwrap().expect("a leader");
    let lease = leader.lease.expect("candidates hold leases");
    store.revoke_lease(lease).await.unwrap();
    let late = leadership.proclaim(value("too late")).await;
    assert!(matches!(late, Err(Error::LockLost { .. })), "{late:?}");
    assert_eq!(election.leader().await.unwrap(), None);
}

/// An election and a lock of the same name are independent queues.
pub async fn elections_and_locks_of_one_name_do_not_meet(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !elections_supported(&store) {
        return;
    }
    let guard = store
        .new_lock(
            "jobs",
            LockOptions {
                value: value("holder"),
                ttl: harness.ttl(),
            },
        )
        .unwrap()
        .lock()
        .await
        .unwrap();
    let election = store.new_election("jobs", options(harness)).unwrap();
    let leadership = tokio::time::timeout(WAIT, election.campaign(value("leader")))
        .await
        .expect("the lock does not block the election")
        .unwrap();
    leadership.resign().await.unwrap();
    guard.unlock().await.unwrap();
}
