//! [contract §2–§3](kvstore_core::contract#2-revisions): revisions, listing, delete_tree and compare-and-swap.

use std::time::Duration;

use kvstore_core::{Error, LeaseId, PutOptions, WatchEvent, WatchFrom};

use crate::{Harness, fresh_store, next_item, value};

/// Every write gets a greater revision; `create_revision` survives updates and changes
/// after delete and re-create.
pub async fn revisions_increase_with_every_write(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let first = store
        .put("r", value("1"), PutOptions::default())
        .await
        .unwrap();
    assert!(first.revision > 0);
    assert_eq!(first.create_revision, first.revision);
    let second = store
        .put("r", value("2"), PutOptions::default())
        .await
        .unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(second.create_revision, first.create_revision);
    let other = store
        .put("other", value("x"), PutOptions::default())
        .await
        .unwrap();
    assert!(other.revision > second.revision, "revisions are store-wide");
    store.delete("r").await.unwrap();
    let recreated = store
        .put("r", value("3"), PutOptions::default())
        .await
        .unwrap();
    assert!(recreated.create_revision > second.revision);
    assert_eq!(recreated.create_revision, recreated.revision);
}

/// `list` is recursive and sorted, and `svc` names only keys below `svc/`.
pub async fn list_is_recursive_sorted_and_bounded_by_prefix(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    for key in [
        "svc/b",
        "svc/a/deep",
        "svc/a",
        "svc",
        "svcX/a",
        "sv/c",
        "other",
    ] {
        store
            .put(key, value(key), PutOptions::default())
            .await
            .unwrap();
    }
    let keys: Vec<String> = store
        .list("svc")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["svc/a", "svc/a/deep", "svc/b"]);
    let slash: Vec<String> = store
        .list("/svc/")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(slash, keys, "the prefix is normalised like a key");
    let all = store.list("").await.unwrap();
    assert_eq!(all.len(), 7, "the empty prefix lists the whole namespace");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "sorted by key");
    assert_eq!(store.list("svc/a").await.unwrap()[0].value, "svc/a/deep");
}

/// `list` of a prefix with nothing below it is an empty list, not an error.
pub async fn list_of_missing_prefix_is_empty(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    assert!(store.list("nothing/here").await.unwrap().is_empty());
    store
        .put("leaf", value("x"), PutOptions::default())
        .await
        .unwrap();
    assert!(
        store.list("leaf").await.unwrap().is_empty(),
        "a key is not its own child"
    );
}

/// `delete_tree` removes every key below the prefix at one revision, and nothing else.
pub async fn delete_tree_removes_the_subtree_at_one_revision(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    for key in ["tree/a", "tree/b/c", "tree/d", "tree", "treeX/a"] {
        store
            .put(key, value(key), PutOptions::default())
            .await
            .unwrap();
    }
    if !store.capabilities().watch {
        // Without watches, the subtree's deletes at one revision cannot be observed.
        store.delete_tree("tree").await.unwrap();
        assert_subtree_deleted(store.as_ref()).await;
        return;
    }
    let mut events = store
        .watch_prefix_events("", WatchFrom::Snapshot)
        .await
        .unwrap();
    let WatchEvent::Snapshot(snapshot) = next_item(&mut events, "snapshot").await else {
        panic!("the first event is a snapshot");
    };
    store.delete_tree("tree").await.unwrap();
    let mut revisions = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..3 {
        match next_item(&mut events, "delete_tree events").await {
            WatchEvent::Delete { key, revision } => {
                keys.push(key);
                revisions.push(revision);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    keys.sort();
    assert_eq!(keys, ["tree/a", "tree/b/c", "tree/d"]);
    assert!(
        revisions
            .iter()
            .all(|r| *r == revisions[0] && *r > snapshot.revision)
    );
    assert_subtree_deleted(store.as_ref()).await;
}

/// After `delete_tree("tree")`: nothing below `tree`, `tree` and `treeX/a` stay, and a
/// second `delete_tree` of the now empty subtree succeeds.
async fn assert_subtree_deleted(store: &dyn kvstore_core::Store) {
    assert!(store.list("tree").await.unwrap().is_empty());
    assert!(
        store.exists("tree").await.unwrap(),
        "the prefix key itself stays"
    );
    assert!(
        store.exists("treeX/a").await.unwrap(),
        "a sibling prefix stays"
    );
    store.delete_tree("tree").await.unwrap();
}

/// `atomic_put(key, v, None)` creates an absent key.
pub async fn atomic_put_without_previous_creates_a_missing_key(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let created = store
        .atomic_put("new", value("1"), None, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(created.create_revision, created.revision);
    assert_eq!(store.get("new").await.unwrap(), created);
}

/// `atomic_put(key, v, None)` on a present key is `KeyExists`, and changes nothing.
pub async fn atomic_put_without_previous_on_existing_key_fails_with_key_exists(
    harness: &dyn Harness,
) {
    let (_, store) = fresh_store(harness).await;
    let existing = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    let result = store
        .atomic_put("k", value("2"), None, PutOptions::default())
        .await;
    assert!(
        matches!(result, Err(Error::KeyExists { ref key }) if key == "k"),
        "{result:?}"
    );
    assert_eq!(store.get("k").await.unwrap(), existing);
}

/// `atomic_put` with the key's current revision replaces it.
pub async fn atomic_put_with_current_revision_replaces(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let first = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    let second = store
        .atomic_put("k", value("2"), Some(&first), PutOptions::default())
        .await
        .unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(second.create_revision, first.create_revision);
    assert_eq!(store.get("k").await.unwrap().value, "2");
}

/// `atomic_put` with an older revision is `KeyModified` with both revisions.
pub async fn atomic_put_with_stale_revision_fails_with_key_modified(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let first = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    let second = store
        .put("k", value("2"), PutOptions::default())
        .await
        .unwrap();
    match store
        .atomic_put("k", value("3"), Some(&first), PutOptions::default())
        .await
    {
        Err(Error::KeyModified {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(
                (key.as_str(), expected, actual),
                ("k", first.revision, second.revision)
            );
        }
        other => panic!("expected KeyModified, got {other:?}"),
    }
    assert_eq!(store.get("k").await.unwrap().value, "2");
}

/// `atomic_put` with a previous pair on an absent key is `KeyNotFound`.
pub async fn atomic_put_with_previous_on_missing_key_fails_with_key_not_found(
    harness: &dyn Harness,
) {
    let (_, store) = fresh_store(harness).await;
    let first = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    store.delete("k").await.unwrap();
    let result = store
        .atomic_put("k", value("2"), Some(&first), PutOptions::default())
        .await;
    assert!(
        matches!(result, Err(Error::KeyNotFound { .. })),
        "{result:?}"
    );
    assert!(!store.exists("k").await.unwrap());
}

/// `atomic_delete` with the current revision deletes the key.
pub async fn atomic_delete_with_current_revision_deletes(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let pair = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    store.atomic_delete("k", &pair).await.unwrap();
    assert!(!store.exists("k").await.unwrap());
}

/// `atomic_delete` with an older revision is `KeyModified`, and the key stays.
pub async fn atomic_delete_with_stale_revision_fails_with_key_modified(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let first = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    store
        .put("k", value("2"), PutOptions::default())
        .await
        .unwrap();
    let result = store.atomic_delete("k", &first).await;
    assert!(
        matches!(result, Err(Error::KeyModified { .. })),
        "{result:?}"
    );
    assert!(store.exists("k").await.unwrap());
}

/// `atomic_delete` of an absent key is `KeyNotFound`.
pub async fn atomic_delete_of_missing_key_fails_with_key_not_found(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let pair = store
        .put("k", value("1"), PutOptions::default())
        .await
        .unwrap();
    store.delete("k").await.unwrap();
    let result = store.atomic_delete("k", &pair).await;
    assert!(
        matches!(result, Err(Error::KeyNotFound { .. })),
        "{result:?}"
    );
}

/// Five tasks, each on its own handle, increment one counter twenty times each with
/// compare-and-swap retries: the final value is exactly 100.
pub async fn compare_and_swap_race_loses_no_increment(harness: &dyn Harness) {
    const TASKS: usize = 5;
    const INCREMENTS: usize = 20;
    let (namespace, store) = fresh_store(harness).await;
    store
        .put("counter", value("0"), PutOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let handle = harness.open(&namespace).await.unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let current = handle.get("counter").await.unwrap();
                    let n: usize = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    let next = value(&(n + 1).to_string());
                    match handle
                        .atomic_put("counter", next, Some(&current), PutOptions::default())
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::KeyModified { .. }) => continue,
                        Err(e) => panic!("unexpected CAS error: {e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = store.get("counter").await.unwrap();
    assert_eq!(total.value, (TASKS * INCREMENTS).to_string());
}

/// `ttl` with `lease`, and a zero TTL, are `InvalidArgument`; nothing is written.
pub async fn put_options_are_validated(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let both = PutOptions {
        ttl: Some(Duration::from_secs(5)),
        lease: Some(LeaseId(1)),
    };
    let result = store.put("k", value("x"), both).await;
    assert!(
        matches!(result, Err(Error::InvalidArgument { .. })),
        "{result:?}"
    );
    let zero = store
        .put("k", value("x"), PutOptions::with_ttl(Duration::ZERO))
        .await;
    assert!(
        matches!(zero, Err(Error::InvalidArgument { .. })),
        "{zero:?}"
    );
    assert!(!store.exists("k").await.unwrap());
}

/// Absurd TTLs (over [`kvstore_core::MAX_TTL`], up to `Duration::MAX`) are
/// `InvalidArgument` for TTL puts, leases and locks, never a panic or an overflow, and
/// nothing is written.
pub async fn absurd_ttls_are_invalid_arguments(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !crate::claims(store.capabilities().leases, "leases") {
        return;
    }
    for ttl in [
        kvstore_core::MAX_TTL + Duration::from_secs(1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let put = store.put("k", value("x"), PutOptions::with_ttl(ttl)).await;
        assert!(matches!(put, Err(Error::InvalidArgument { .. })), "{put:?}");
        let lease = store.grant_lease(ttl).await;
        assert!(
            matches!(lease, Err(Error::InvalidArgument { .. })),
            "{lease:?}"
        );
        let lock = store.new_lock(
            "l",
            kvstore_core::LockOptions {
                ttl,
                ..Default::default()
            },
        );
        assert!(
            matches!(lock, Err(Error::InvalidArgument { .. })),
            "{:?}",
            lock.err()
        );
    }
    assert!(!store.exists("k").await.unwrap());
}
