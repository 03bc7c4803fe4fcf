//! [contract §6](kvstore_core::contract#6-locks): locks.

use std::sync::Arc;

use kvstore_core::{LockOptions, PutOptions, Store};

use crate::leases::let_server_time_pass;
use crate::{Harness, WAIT, fresh_store, value};

fn options(harness: &dyn Harness, holder: &str) -> LockOptions {
    LockOptions {
        value: value(holder),
        ttl: harness.ttl(),
    }
}

fn locks_supported(store: &Arc<dyn Store>) -> bool {
    crate::claims(store.capabilities().locks, "locks")
}

/// While held, `get(key)` returns the lock's value; after unlock the key is gone; a
/// released locker can lock again.
pub async fn lock_value_is_visible_while_held_and_gone_after_unlock(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let locker = store
        .new_lock("locks/a", options(harness, "holder-1"))
        .unwrap();
    for round in 0..2 {
        let guard = locker.lock().await.unwrap();
        assert_eq!(
            store.get("locks/a").await.unwrap().value,
            "holder-1",
            "round {round}"
        );
        guard.unlock().await.unwrap();
        assert!(!store.exists("locks/a").await.unwrap(), "round {round}");
    }
}

/// Lock bookkeeping (waiter keys) never shows in `list`/`watch_tree` of user keys.
pub async fn lock_bookkeeping_is_invisible(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let guard = store
        .new_lock("jobs/leader", options(harness, "me"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["jobs/leader"]);
    assert!(store.list("jobs/leader").await.unwrap().is_empty());
    guard.unlock().await.unwrap();
    assert!(store.list("").await.unwrap().is_empty());
}

/// A store whose namespace contains another's (`ns` and `ns/app`) never lists or watches
/// the inner store's lock bookkeeping: reads return valid keys only ([contract §1](kvstore_core::contract#1-keys-values-and-namespaces))
///, whatever the backend keeps beside a namespace.
pub async fn nested_namespace_lock_bookkeeping_is_never_read(harness: &dyn Harness) {
    let (namespace, outer) = fresh_store(harness).await;
    if !locks_supported(&outer) {
        return;
    }
    let inner = harness
        .open(&format!("{namespace}/app"))
        .await
        .unwrap_or_else(|e| panic!("the harness could not open a store: {e}"));
    let mut tree = outer.watch_tree("").await.unwrap();
    let first = crate::next_item(&mut tree, "first list").await;
    assert!(first.is_empty(), "{first:?}");
    let guard = inner
        .new_lock("jobs/leader", options(harness, "me"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let marker = outer
        .put("zz-marker", value("x"), PutOptions::default())
        .await
        .unwrap();
    let valid = |key: &str| kvstore_core::Key::new(key).is_ok_and(|k| k.as_str() == key);
    for pair in outer.list("").await.unwrap() {
        assert!(valid(&pair.key), "{:?}", pair.key);
    }
    // The tree view reaches the marker without ever showing an invalid key.
    loop {
        let list = crate::next_item(&mut tree, "tree after lock").await;
        for pair in &list {
            assert!(valid(&pair.key), "{:?}", pair.key);
        }
        if list.iter().any(|p| p.revision == marker.revision) {
            break;
        }
    }
    guard.unlock().await.unwrap();
}

/// A held lock renews its lease: it is still held well past its TTL.
pub async fn lock_is_renewed_past_its_ttl(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let guard = store
        .new_lock("renewed", options(harness, "me"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let_server_time_pass(&store, harness.ttl() * 3).await;
    assert_eq!(store.get("renewed").await.unwrap().value, "me");
    let contender = store
        .new_lock("renewed", options(harness, "other"))
        .unwrap();
    let attempt = tokio::time::timeout(harness.ttl(), contender.lock()).await;
    assert!(
        attempt.is_err(),
        "the lock is still held by the first guard"
    );
    guard.unlock().await.unwrap();
}

/// A second locker (on another handle) waits until the first releases, then gets it.
pub async fn second_locker_waits_until_release(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let other = harness.open(&namespace).await.unwrap();
    let first = store
        .new_lock("queue", options(harness, "first"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let second_locker = other.new_lock("queue", options(harness, "second")).unwrap();
    let waiting = tokio::spawn(async move {
        let guard = second_locker.lock().await.unwrap();
        (guard, second_locker)
    });
    let_server_time_pass(&store, harness.ttl()).await;
    assert!(!waiting.is_finished(), "the second locker must wait");
    assert_eq!(store.get("queue").await.unwrap().value, "first");
    first.unlock().await.unwrap();
    let (second, _locker) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the second locker gets the lock after release")
        .unwrap();
    assert_eq!(store.get("queue").await.unwrap().value, "second");
    second.unlock().await.unwrap();
}

/// A holder that dies without unlocking is replaced once its TTL runs out.
pub async fn dead_holder_is_replaced_after_ttl(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let dead = store
        .new_lock("fragile", options(harness, "dead"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let dead_token = dead.fencing_token();
    dead.abandon();
    let other = harness.open(&namespace).await.unwrap();
    let successor = other
        .new_lock("fragile", options(harness, "alive"))
        .unwrap();
    let guard = tokio::time::timeout(WAIT, successor.lock())
        .await
        .expect("the dead holder is replaced within the TTL")
        .unwrap();
    assert!(guard.fencing_token() > dead_token);
    assert_eq!(other.get("fragile").await.unwrap().value, "alive");
    guard.unlock().await.unwrap();
}

/// Successive holders of a key get strictly increasing fencing tokens.
pub async fn fencing_tokens_increase(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    let locker = store.new_lock("fenced", options(harness, "me")).unwrap();
    let mut last = 0;
    for _ in 0..5 {
        let guard = locker.lock().await.unwrap();
        assert!(
            guard.fencing_token() > last,
            "{} <= {last}",
            guard.fencing_token()
        );
        last = guard.fencing_token();
        store
            .put("unrelated", value("bump"), PutOptions::default())
            .await
            .unwrap();
        guard.unlock().await.unwrap();
    }
}

/// Tasks on separate handles do a non-atomic read-modify-write under the lock: no
/// update is lost, and the tokens of the holders all differ.
pub async fn locks_exclude_under_contention(harness: &dyn Harness) {
    const TASKS: usize = 4;
    const ROUNDS: usize = 5;
    let (namespace, store) = fresh_store(harness).await;
    if !locks_supported(&store) {
        return;
    }
    store
        .put("count", value("0"), PutOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let handle = harness.open(&namespace).await.unwrap();
        let opts = options(harness, &format!("task-{task}"));
        tasks.push(tokio::spawn(async move {
            let locker = handle.new_lock("mutex", opts).unwrap();
            let mut tokens = Vec::new();
            for _ in 0..ROUNDS {
                let guard = locker.lock().await.unwrap();
                tokens.push(guard.fencing_token());
                let current = handle.get("count").await.unwrap();
                let n: usize = std::str::from_utf8(&current.value)
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::task::yield_now().await;
                handle
                    .put("count", value(&(n + 1).to_string()), PutOptions::default())
                    .await
                    .unwrap();
                guard.unlock().await.unwrap();
            }
            tokens
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(
            tokio::time::timeout(WAIT * 2, task)
                .await
                .expect("no deadlock")
                .unwrap(),
        );
    }
    assert_eq!(
        store.get("count").await.unwrap().value,
        (TASKS * ROUNDS).to_string()
    );
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        TASKS * ROUNDS,
        "every holder had its own token"
    );
}
