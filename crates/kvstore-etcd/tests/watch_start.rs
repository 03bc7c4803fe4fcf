//! How a watch with a snapshot starts (docs/CONTRACT.md §5 "No silent loss"): the etcd
//! watch is created first, at the server's current revision, and the snapshot is read
//! at that revision, so the first event after the snapshot is the very next write, and
//! watches started while other clients write neither lose nor repeat an event.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testkit::server::shared_etcd;
use kvstore_testsuite::{WAIT, next_item, unique_namespace};
use tokio::sync::Mutex;

async fn open(namespace: &str) -> Arc<EtcdStore> {
    let mut config = EtcdConfig::new([shared_etcd().address()]);
    config.namespace = namespace.to_owned();
    Arc::new(EtcdStore::connect(config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_event_after_the_snapshot_is_the_next_write() {
    let namespace = unique_namespace();
    let store = open(&namespace).await;
    let first = store
        .put("jobs/a", Bytes::from_static(b"1"), PutOptions::default())
        .await
        .unwrap();

    let mut events = store
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    let snapshot = match next_item(&mut events, "the snapshot").await {
        WatchEvent::Snapshot(snapshot) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    // Other tests write to the same etcd: the snapshot is at or after the write.
    assert!(snapshot.revision >= first.revision, "{snapshot:?}");
    assert_eq!(snapshot.pairs, vec![first.clone()]);

    let second = store
        .put("jobs/b", Bytes::from_static(b"2"), PutOptions::default())
        .await
        .unwrap();
    assert!(second.revision > snapshot.revision);
    match next_item(&mut events, "the next write").await {
        WatchEvent::Put(pair) => {
            assert_eq!(pair, second);
            assert_eq!(pair.revision, second.revision);
        }
        other => panic!("expected the put of jobs/b, got {other:?}"),
    }
}

/// Watches started one after another while a writer keeps writing: each one's snapshot
/// plus its events is exactly the writer's history from the snapshot on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_started_during_writes_lose_and_repeat_nothing() {
    const WRITES: usize = 200;
    const WATCHES: usize = 20;
    const KEYS: usize = 7;
    let namespace = unique_namespace();
    let store = open(&namespace).await;

    // Every write's revision, key and value, in order.
    let written: Arc<Mutex<Vec<(u64, String, Bytes)>>> = Arc::default();
    let writer = {
        let (store, written) = (Arc::clone(&store), Arc::clone(&written));
        tokio::spawn(async move {
            for i in 0..WRITES {
                let key = format!("cfg/k{}", i % KEYS);
                let value = Bytes::from(format!("v{i}"));
                let pair = store
                    .put(&key, value.clone(), PutOptions::default())
                    .await
                    .unwrap();
                written.lock().await.push((pair.revision, key, value));
            }
        })
    };

    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        // Start while the writer is writing (each start takes at least a round trip).
        watches.push(
            store
                .watch_prefix_events("cfg", WatchFrom::Snapshot)
                .await
                .unwrap(),
        );
    }
    writer.await.unwrap();
    let written = written.lock().await.clone();
    let last = written.last().unwrap().0;
    let expected: BTreeMap<String, Bytes> = store
        .list("cfg")
        .await
        .unwrap()
        .into_iter()
        .map(|pair| (pair.key, pair.value))
        .collect();
    assert_eq!(expected.len(), KEYS);

    for (index, mut events) in watches.into_iter().enumerate() {
        let snapshot = match next_item(&mut events, "the snapshot").await {
            WatchEvent::Snapshot(snapshot) => snapshot,
            other => panic!("watch {index}: expected a snapshot, got {other:?}"),
        };
        let mut state: BTreeMap<String, Bytes> = snapshot
            .pairs
            .iter()
            .map(|pair| (pair.key.clone(), pair.value.clone()))
            .collect();
        // The snapshot is the writer's state at its revision.
        let mut at_snapshot = BTreeMap::new();
        for (revision, key, value) in &written {
            if *revision <= snapshot.revision {
                at_snapshot.insert(key.clone(), value.clone());
            }
        }
        assert_eq!(state, at_snapshot, "watch {index}: snapshot {snapshot:?}");

        // Then every later write, once each, in order.
        let mut seen = HashSet::new();
        let mut revisions = Vec::new();
        let mut previous = snapshot.revision;
        while previous < last {
            let event = tokio::time::timeout(WAIT, events.next())
                .await
                .unwrap_or_else(|_| panic!("watch {index}: no event after revision {previous}"))
                .expect("the stream goes on")
                .unwrap();
            match event {
                WatchEvent::Put(pair) => {
                    assert!(
                        pair.revision > previous,
                        "watch {index}: {pair:?} after {previous}"
                    );
                    assert!(seen.insert(pair.revision), "watch {index}: {pair:?} twice");
                    previous = pair.revision;
                    revisions.push(pair.revision);
                    state.insert(pair.key, pair.value);
                }
                other => panic!("watch {index}: unexpected {other:?}"),
            }
        }
        let later: Vec<u64> = written
            .iter()
            .map(|(revision, _, _)| *revision)
            .filter(|revision| *revision > snapshot.revision)
            .collect();
        assert_eq!(revisions, later, "watch {index}");
        assert_eq!(state, expected, "watch {index}");
    }
}
