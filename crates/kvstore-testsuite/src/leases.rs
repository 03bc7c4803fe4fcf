//! [contract §4](kvstore_core::contract#4-leases-and-ttl): leases and TTL.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{Error, LeaseLoss, PutOptions, Store, WatchEvent, WatchFrom};

use crate::{Harness, WAIT, fresh_store, next_item, value};

/// Wait until `key` is absent, by watching it (bounded by [`WAIT`]).
///
/// # Panics
/// If the key is still there after [`WAIT`].
pub async fn wait_until_absent(store: &Arc<dyn Store>, key: &str) {
    let mut states = store.watch(key).await.unwrap();
    loop {
        if next_item(&mut states, &format!("waiting for {key} to go"))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Let at least `duration` pass on the *server's* clock: write a sentinel key with that
/// TTL and wait for the server to expire it. Used to prove that something did *not*
/// happen over a span of time, without sleeping and hoping.
pub async fn let_server_time_pass(store: &Arc<dyn Store>, duration: Duration) {
    let sentinel = format!("clock/{:016x}", rand::random::<u64>());
    store
        .put(&sentinel, value("tick"), PutOptions::with_ttl(duration))
        .await
        .unwrap();
    wait_until_absent(store, &sentinel).await;
}

fn leases_supported(store: &Arc<dyn Store>) -> bool {
    crate::claims(store.capabilities().leases, "leases")
}

/// A key put with a TTL disappears after it, and a watcher sees a delete.
pub async fn ttl_key_expires_and_watchers_see_the_delete(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    let written = store
        .put("ephemeral", value("x"), PutOptions::with_ttl(harness.ttl()))
        .await
        .unwrap();
    assert!(written.lease.is_some(), "a TTL put is attached to a lease");
    let mut states = store.watch("ephemeral").await.unwrap();
    assert!(next_item(&mut states, "current value").await.is_some());
    assert!(
        next_item(&mut states, "expiry").await.is_none(),
        "expiry is a delete"
    );
    assert!(matches!(
        store.get("ephemeral").await,
        Err(Error::KeyNotFound { .. })
    ));
    assert!(!store.exists("ephemeral").await.unwrap());
    assert!(store.list("").await.unwrap().is_empty());
}

/// Rewriting a TTL key without a TTL detaches it from its lease: it stays.
pub async fn rewriting_ttl_key_without_ttl_keeps_it(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    store
        .put("k", value("1"), PutOptions::with_ttl(harness.ttl()))
        .await
        .unwrap();
    let rewritten = store
        .put("k", value("2"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(rewritten.lease, None);
    let_server_time_pass(&store, harness.ttl() * 2).await;
    assert_eq!(store.get("k").await.unwrap().value, "2");
}

/// Revoking a lease deletes every attached key at one revision, and `lost()` fires.
pub async fn revoking_a_lease_deletes_its_keys_at_one_revision(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    let lease = store.grant_lease(harness.ttl()).await.unwrap();
    for key in ["leased/a", "leased/b", "leased/c"] {
        let pair = store
            .put(key, value(key), PutOptions::with_lease(lease.id()))
            .await
            .unwrap();
        assert_eq!(pair.lease, Some(lease.id()));
    }
    store
        .put("leased/free", value("x"), PutOptions::default())
        .await
        .unwrap();
    let mut events = store
        .watch_prefix_events("leased", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    store.revoke_lease(lease.id()).await.unwrap();
    let mut revisions = Vec::new();
    for _ in 0..3 {
        match next_item(&mut events, "revocation deletes").await {
            WatchEvent::Delete { revision, .. } => revisions.push(revision),
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    assert!(
        revisions.iter().all(|r| *r == revisions[0]),
        "{revisions:?}"
    );
    let lost = tokio::time::timeout(WAIT, lease.lost())
        .await
        .expect("lost() fires");
    assert!(
        matches!(lost, LeaseLoss::Expired | LeaseLoss::Revoked),
        "{lost:?}"
    );
    let left: Vec<String> = store
        .list("leased")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(left, ["leased/free"]);
}

/// A lease revoked by another handle is reported by `lost()` on the holder.
pub async fn lease_lost_fires_when_revoked_elsewhere(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    let other = harness.open(&namespace).await.unwrap();
    let lease = store.grant_lease(harness.ttl()).await.unwrap();
    assert_eq!(lease.loss(), None);
    other.revoke_lease(lease.id()).await.unwrap();
    let lost = tokio::time::timeout(WAIT, lease.lost())
        .await
        .expect("lost() fires");
    assert!(
        matches!(lost, LeaseLoss::Expired | LeaseLoss::Revoked),
        "{lost:?}"
    );
    let keep_alive = other.keep_alive_lease(lease.id()).await;
    assert!(
        matches!(keep_alive, Err(Error::LeaseLost { .. })),
        "{keep_alive:?}"
    );
}

/// A lease whose handle lives is kept alive well past its TTL, with its keys.
pub async fn kept_alive_lease_outlives_its_ttl(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    let lease = store.grant_lease(harness.ttl()).await.unwrap();
    store
        .put("alive", value("x"), PutOptions::with_lease(lease.id()))
        .await
        .unwrap();
    let_server_time_pass(&store, harness.ttl() * 3).await;
    assert!(store.exists("alive").await.unwrap());
    assert_eq!(lease.loss(), None);
    assert!(store.keep_alive_lease(lease.id()).await.unwrap() > Duration::ZERO);
}

/// A lease nobody keeps alive (its holder "crashed") expires with its keys, and a
/// keep-alive afterwards is `LeaseLost`.
pub async fn abandoned_lease_expires_with_its_keys(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !leases_supported(&store) {
        return;
    }
    let lease = store.grant_lease(harness.ttl()).await.unwrap();
    store
        .put("orphan", value("x"), PutOptions::with_lease(lease.id()))
        .await
        .unwrap();
    let id = lease.abandon();
    wait_until_absent(&store, "orphan").await;
    let keep_alive = store.keep_alive_lease(id).await;
    assert!(
        matches!(keep_alive, Err(Error::LeaseLost { .. })),
        "{keep_alive:?}"
    );
    let put = store
        .put("late", value("x"), PutOptions::with_lease(id))
        .await;
    assert!(matches!(put, Err(Error::LeaseLost { .. })), "{put:?}");
    let mut all = store.watch_tree("").await.unwrap();
    assert!(all.next().await.unwrap().unwrap().is_empty());
}
