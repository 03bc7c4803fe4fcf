//! [contract §5](kvstore_core::contract#5-watch): watches.

use std::sync::Arc;

use futures::StreamExt;
use kvstore_core::{PutOptions, Store, WatchEvent, WatchFrom};

use crate::{Harness, fresh_store, next_item, value};

fn watch_supported(store: &Arc<dyn Store>) -> bool {
    crate::claims(store.capabilities().watch, "watch")
}

/// `watch` yields the key's current value first.
pub async fn watch_yields_current_value_first(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let pair = store
        .put("w", value("now"), PutOptions::default())
        .await
        .unwrap();
    let mut states = store.watch("w").await.unwrap();
    assert_eq!(next_item(&mut states, "current value").await, Some(pair));
    let next = store
        .put("w", value("next"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(next_item(&mut states, "update").await, Some(next));
}

/// Watching a missing key is allowed: it yields `None`, then the value once created.
pub async fn watch_of_missing_key_yields_none_first(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let mut states = store.watch("later").await.unwrap();
    assert_eq!(next_item(&mut states, "current value").await, None);
    store
        .put("later/child", value("x"), PutOptions::default())
        .await
        .unwrap();
    store
        .put("laterX", value("x"), PutOptions::default())
        .await
        .unwrap();
    store
        .put("later", value("here"), PutOptions::default())
        .await
        .unwrap();
    let created = next_item(&mut states, "creation").await.expect("a value");
    assert_eq!(
        (created.key.as_str(), &created.value[..]),
        ("later", &b"here"[..])
    );
}

/// Rewriting the same value is a change and is delivered.
pub async fn watch_sees_same_value_rewrite_as_a_change(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let first = store
        .put("same", value("v"), PutOptions::default())
        .await
        .unwrap();
    let mut states = store.watch("same").await.unwrap();
    next_item(&mut states, "current value").await;
    let second = store
        .put("same", value("v"), PutOptions::default())
        .await
        .unwrap();
    let seen = next_item(&mut states, "rewrite").await.expect("a value");
    assert_eq!(seen.revision, second.revision);
    assert!(seen.revision > first.revision);
}

/// A delete is delivered as `None`.
pub async fn watch_sees_delete(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    store
        .put("gone", value("v"), PutOptions::default())
        .await
        .unwrap();
    let mut states = store.watch("gone").await.unwrap();
    assert!(next_item(&mut states, "current value").await.is_some());
    store.delete("gone").await.unwrap();
    assert_eq!(next_item(&mut states, "delete").await, None);
}

/// A watch sees writes made through other handles (other clients of the server).
pub async fn watch_observes_writes_from_other_handles(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let writer = harness.open(&namespace).await.unwrap();
    let mut states = store.watch("shared").await.unwrap();
    assert_eq!(next_item(&mut states, "current value").await, None);
    let written = writer
        .put("shared", value("hello"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(next_item(&mut states, "remote write").await, Some(written));
}

/// `watch_tree` yields the full sorted list first and after every change.
pub async fn watch_tree_yields_full_lists(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    store
        .put("dir/b", value("b"), PutOptions::default())
        .await
        .unwrap();
    store
        .put("dirX/a", value("no"), PutOptions::default())
        .await
        .unwrap();
    let mut lists = store.watch_tree("dir").await.unwrap();
    let keys =
        |list: Vec<kvstore_core::KvPair>| list.into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(keys(next_item(&mut lists, "initial list").await), ["dir/b"]);
    store
        .put("dir/a", value("a"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        keys(next_item(&mut lists, "after put").await),
        ["dir/a", "dir/b"]
    );
    store
        .put("dir/c/d", value("d"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        keys(next_item(&mut lists, "after nested put").await),
        ["dir/a", "dir/b", "dir/c/d"]
    );
    store.delete("dir/b").await.unwrap();
    assert_eq!(
        keys(next_item(&mut lists, "after delete").await),
        ["dir/a", "dir/c/d"]
    );
    store.delete_tree("dir").await.unwrap();
    assert!(
        next_item(&mut lists, "after delete_tree").await.is_empty(),
        "one list per revision"
    );
}

/// The event watch starts with a snapshot at a revision, then events after it in order.
pub async fn watch_prefix_events_starts_with_snapshot_then_events(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let existing = store
        .put("ev/a", value("1"), PutOptions::default())
        .await
        .unwrap();
    let mut events = store
        .watch_prefix_events("ev", WatchFrom::Snapshot)
        .await
        .unwrap();
    let WatchEvent::Snapshot(snapshot) = next_item(&mut events, "snapshot").await else {
        panic!("the first event is a snapshot");
    };
    assert_eq!(snapshot.pairs, vec![existing.clone()]);
    assert!(snapshot.revision >= existing.revision);
    let put = store
        .put("ev/b", value("2"), PutOptions::default())
        .await
        .unwrap();
    store.delete("ev/a").await.unwrap();
    assert_eq!(
        next_item(&mut events, "put").await,
        WatchEvent::Put(put.clone())
    );
    match next_item(&mut events, "delete").await {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, "ev/a");
            assert!(revision > put.revision);
        }
        other => panic!("expected a delete, got {other:?}"),
    }
}

/// The event watch from a revision replays every later change, in order.
pub async fn watch_prefix_events_from_revision_replays_history(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let a = store
        .put("h/a", value("1"), PutOptions::default())
        .await
        .unwrap();
    let b = store
        .put("h/b", value("2"), PutOptions::default())
        .await
        .unwrap();
    let a2 = store
        .put("h/a", value("3"), PutOptions::default())
        .await
        .unwrap();
    let mut events = store
        .watch_prefix_events("h", WatchFrom::After(a.revision))
        .await
        .unwrap();
    assert_eq!(next_item(&mut events, "replay b").await, WatchEvent::Put(b));
    assert_eq!(
        next_item(&mut events, "replay a2").await,
        WatchEvent::Put(a2)
    );
    let live = store
        .put("h/c", value("4"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(next_item(&mut events, "live").await, WatchEvent::Put(live));
}

/// Resuming from a revision whose history is gone yields a `Resync` with the full current
/// state, then live events.
pub async fn watch_yields_resync_after_history_loss(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    let old = store
        .put("rs/a", value("1"), PutOptions::default())
        .await
        .unwrap();
    store
        .put("rs/b", value("2"), PutOptions::default())
        .await
        .unwrap();
    store.delete("rs/a").await.unwrap();
    let c = store
        .put("rs/c", value("3"), PutOptions::default())
        .await
        .unwrap();
    harness.compact(&namespace).await.unwrap();
    let mut events = store
        .watch_prefix_events("rs", WatchFrom::After(old.revision))
        .await
        .unwrap();
    match next_item(&mut events, "resync").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["rs/b", "rs/c"]);
            assert!(snapshot.revision >= c.revision);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let live = store
        .put("rs/d", value("4"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        next_item(&mut events, "live after resync").await,
        WatchEvent::Put(live)
    );
}

/// Dropping a watch cancels it; the store and new watches keep working.
pub async fn dropping_a_watch_leaves_the_store_usable(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !watch_supported(&store) {
        return;
    }
    for _ in 0..3 {
        let mut states = store.watch("dropped").await.unwrap();
        next_item(&mut states, "current value").await;
        drop(states);
    }
    store
        .put("dropped", value("x"), PutOptions::default())
        .await
        .unwrap();
    let mut states = store.watch("dropped").await.unwrap();
    assert!(next_item(&mut states, "current value").await.is_some());
    let pending = futures::FutureExt::now_or_never(states.next()).is_none();
    assert!(pending, "no phantom event");
}
