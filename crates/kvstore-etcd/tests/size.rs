//! etcd at production size (docs/CONTRACT.md §3 "Any size"): prefixes of tens of MiB are
//! listed, watched, resynced and deleted, and a watcher catches up on values at the size
//! limit written while it was disconnected, although one etcd response of that much
//! data is far above gRPC's default 4 MiB message limit.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Client, Txn, TxnOp};
use kvstore_core::{KvPair, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_etcd::{DEFAULT_MAX_VALUE_SIZE, EtcdConfig, EtcdStore};
use kvstore_testkit::proxy::TcpProxy;
use kvstore_testkit::server::{EtcdServer, shared_etcd};
use kvstore_testsuite::{next_item, unique_namespace};

/// 20,480 values of 1 KiB: 20 MiB of values, 21 pages of a range read.
const KEYS: usize = 20 * 1024;
const VALUE_SIZE: usize = 1024;
/// etcd's default `--max-txn-ops`.
const PUTS_PER_TXN: usize = 128;

async fn connect(address: String, namespace: &str) -> EtcdStore {
    let mut config = EtcdConfig::new([address]);
    config.namespace = namespace.to_owned();
    EtcdStore::connect(config).await.unwrap()
}

fn big_key(i: usize) -> String {
    format!("big/{i:06}")
}

/// Write [`KEYS`] values of [`VALUE_SIZE`] bytes below `big/` with the raw client, in
/// transactions (one put each would take minutes of fsyncs).
async fn fill(store: &EtcdStore) {
    let mut client = Client::connect([shared_etcd().address()], None)
        .await
        .expect("the raw client connects");
    let value = vec![b'v'; VALUE_SIZE];
    let keys: Vec<usize> = (0..KEYS).collect();
    for chunk in keys.chunks(PUTS_PER_TXN) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(store.etcd_key(&big_key(i)), value.clone(), None))
            .collect();
        client.txn(Txn::new().and_then(puts)).await.unwrap();
    }
}

fn assert_big_prefix(pairs: &[KvPair]) {
    assert_eq!(pairs.len(), KEYS);
    for (i, pair) in pairs.iter().enumerate() {
        assert_eq!(pair.key, big_key(i), "sorted by key, none missing");
        assert_eq!(pair.value.len(), VALUE_SIZE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_a_20_mib_prefix_returns_every_pair_sorted() {
    let store = connect(shared_etcd().address(), &unique_namespace()).await;
    fill(&store).await;
    let pairs = store.list("big").await.unwrap();
    assert_big_prefix(&pairs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_a_20_mib_prefix_is_one_revision_while_writes_go_on() {
    let namespace = unique_namespace();
    let store = connect(shared_etcd().address(), &namespace).await;
    fill(&store).await;

    // A writer adds keys after the big ones while the snapshot's pages are read.
    let writer = connect(shared_etcd().address(), &namespace).await;
    let writing = tokio::spawn(async move {
        let mut written = Vec::new();
        for i in 0..200 {
            let pair = writer
                .put(
                    &format!("big/zz/{i:04}"),
                    Bytes::from("late"),
                    PutOptions::default(),
                )
                .await
                .unwrap();
            written.push(pair);
        }
        written
    });
    let mut events = store
        .watch_prefix_events("big", WatchFrom::Snapshot)
        .await
        .unwrap();
    let snapshot = match next_item(&mut events, "snapshot").await {
        WatchEvent::Snapshot(snapshot) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    let written = writing.await.unwrap();

    // The snapshot holds exactly the late keys written at or before its revision...
    let late_in_snapshot: Vec<&KvPair> = snapshot
        .pairs
        .iter()
        .filter(|p| p.key.starts_with("big/zz/"))
        .collect();
    let late_before: Vec<&KvPair> = written
        .iter()
        .filter(|p| p.revision <= snapshot.revision)
        .collect();
    assert_eq!(late_in_snapshot, late_before);
    assert_big_prefix(&snapshot.pairs[..KEYS]);
    assert!(
        snapshot
            .pairs
            .iter()
            .all(|p| p.revision <= snapshot.revision)
    );
    // ...and the watch delivers exactly the ones after it, in order.
    for expected in written.iter().filter(|p| p.revision > snapshot.revision) {
        match next_item(&mut events, "late write").await {
            WatchEvent::Put(pair) => assert_eq!(&pair, expected),
            other => panic!("expected a put, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tree_of_a_20_mib_prefix_deletes_everything_at_one_revision() {
    let namespace = unique_namespace();
    let store = connect(shared_etcd().address(), &namespace).await;
    fill(&store).await;
    let mut events = store
        .watch_prefix_events("big", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;

    store.delete_tree("big").await.unwrap();
    assert!(store.list("big").await.unwrap().is_empty());
    let mut revisions = std::collections::BTreeSet::new();
    for i in 0..KEYS {
        match next_item(&mut events, "delete").await {
            WatchEvent::Delete { key, revision } => {
                assert_eq!(key, big_key(i));
                revisions.insert(revision);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    assert_eq!(revisions.len(), 1, "one revision for the whole tree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_catches_up_on_values_at_the_limit_written_while_it_was_disconnected() {
    /// 12 values at the limit: about 18 MiB in etcd's one catch-up response.
    const VALUES: usize = 12;
    let server = EtcdServer::start().unwrap();
    let target: SocketAddr = server.address().parse().unwrap();
    let proxy = TcpProxy::start(target).unwrap();
    let namespace = unique_namespace();
    let watcher = Arc::new(connect(proxy.address(), &namespace).await) as Arc<dyn Store>;
    let writer = connect(server.address(), &namespace).await;

    let mut events = watcher
        .watch_prefix_events("blobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;

    // The watcher's connection drops and cannot come back while the values are written.
    proxy.refuse();
    let mut written = Vec::new();
    for i in 0..VALUES {
        let value = Bytes::from(vec![b'a' + i as u8; DEFAULT_MAX_VALUE_SIZE]);
        let pair = writer
            .put(&format!("blobs/{i:02}"), value, PutOptions::default())
            .await
            .unwrap();
        written.push(pair);
    }
    proxy.restore();

    for expected in &written {
        match next_item(&mut events, "catch-up").await {
            WatchEvent::Put(pair) => assert_eq!(&pair, expected),
            other => panic!("expected a put, got {other:?}"),
        }
    }
    // A write afterwards still arrives: the watch is live, not stuck on the catch-up.
    let live = writer
        .put("blobs/live", Bytes::from("x"), PutOptions::default())
        .await
        .unwrap();
    match next_item(&mut events, "live").await {
        WatchEvent::Put(pair) => assert_eq!(pair, live),
        other => panic!("expected a put, got {other:?}"),
    }
}
