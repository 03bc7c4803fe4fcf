//! Fault tests against real etcd processes: restarts, compaction, a frozen server and a
//! killed cluster member. Each test starts its own server(s).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{Error, LeaseLoss, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testkit::server::{EtcdCluster, EtcdServer};
use kvstore_testsuite::{WAIT, next_item, put_retrying, unique_namespace};

async fn connect(addresses: Vec<String>, namespace: &str) -> Arc<dyn Store> {
    let mut config = EtcdConfig::new(addresses);
    config.namespace = namespace.to_owned();
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(3);
    Arc::new(EtcdStore::connect(config).await.unwrap())
}

fn expect_put(event: WatchEvent) -> kvstore_core::KvPair {
    match event {
        WatchEvent::Put(pair) => pair,
        other => panic!("expected a put, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_write_after_a_server_restart_once_in_order() {
    let mut server = EtcdServer::start().unwrap();
    let namespace = unique_namespace();
    let store = connect(vec![server.address()], &namespace).await;
    let mut events = store
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let before = put_retrying(&store, "jobs/0", "before").await;
    assert_eq!(
        expect_put(next_item(&mut events, "before restart").await),
        before
    );

    server.kill();
    server.restart().unwrap();
    let mut written = Vec::new();
    for i in 1..=5 {
        written.push(put_retrying(&store, &format!("jobs/{i}"), "after").await);
    }
    for expected in &written {
        assert_eq!(
            &expect_put(next_item(&mut events, "after restart").await),
            expected
        );
    }
    let pending = futures::FutureExt::now_or_never(events.next());
    assert!(pending.is_none(), "nothing is delivered twice: {pending:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_a_disconnected_watcher_yields_resync_with_the_current_state() {
    let mut server = EtcdServer::start().unwrap();
    let namespace = unique_namespace();
    let store = connect(vec![server.address()], &namespace).await;
    let mut events = store
        .watch_prefix_events("cfg", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    put_retrying(&store, "cfg/a", "1").await;
    next_item(&mut events, "first put").await;

    // The watcher is not polled while its connection dies and history moves on.
    server.kill();
    server.restart().unwrap();
    put_retrying(&store, "cfg/b", "2").await;
    let last = put_retrying(&store, "cfg/c", "3").await;
    store.delete("cfg/a").await.unwrap();
    let mut client = etcd_client::Client::connect([server.address()], None)
        .await
        .unwrap();
    let current = client.status().await.unwrap().header().unwrap().revision();
    client.compact(current, None).await.unwrap();

    match next_item(&mut events, "resync").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["cfg/b", "cfg/c"]);
            assert!(snapshot.revision > last.revision);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let live = put_retrying(&store, "cfg/d", "4").await;
    assert_eq!(
        expect_put(next_item(&mut events, "live after resync").await),
        live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_of_a_frozen_server_sees_lost() {
    let server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()], &unique_namespace()).await;
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    server.pause();
    let lost = tokio::time::timeout(WAIT, lease.lost()).await;
    server.resume();
    assert_eq!(
        lost.expect("lost() fires while the server is frozen"),
        LeaseLoss::KeepAliveFailed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_serving_puts_and_watches_when_a_member_dies() {
    let mut cluster = EtcdCluster::start().unwrap();
    let namespace = unique_namespace();
    let store = connect(cluster.addresses(), &namespace).await;
    let mut events = store
        .watch_prefix_events("svc", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    for i in 0..3 {
        let pair = put_retrying(&store, &format!("svc/before/{i}"), "x").await;
        assert_eq!(expect_put(next_item(&mut events, "before").await), pair);
    }
    // Every member serves this client in turn, so killing any one kills a connection
    // it was using.
    cluster.kill(0);
    for i in 0..10 {
        let pair = put_retrying(&store, &format!("svc/after/{i}"), "x").await;
        assert_eq!(expect_put(next_item(&mut events, "after").await), pair);
    }
    assert_eq!(store.list("svc").await.unwrap().len(), 13);
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_within_the_connect_timeout() {
    let port = kvstore_testkit::server::free_port().unwrap();
    let mut config = EtcdConfig::new([format!("127.0.0.1:{port}")]);
    config.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let result = EtcdStore::connect(config).await;
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_skips_an_endpoint_that_is_down() {
    let server = EtcdServer::start().unwrap();
    let dead = format!(
        "127.0.0.1:{}",
        kvstore_testkit::server::free_port().unwrap()
    );
    for endpoints in [
        vec![dead.clone(), server.address()],
        vec![server.address(), dead.clone()],
    ] {
        let store = connect(endpoints, &unique_namespace()).await;
        for i in 0..10 {
            store
                .put(&format!("k{i}"), Bytes::from("v"), PutOptions::default())
                .await
                .unwrap();
            assert_eq!(store.get(&format!("k{i}")).await.unwrap().value, "v");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_ride_through_the_loss_of_the_leader() {
    let mut cluster = EtcdCluster::start().unwrap();
    let store = connect(cluster.addresses(), &unique_namespace()).await;
    let written = put_retrying(&store, "cfg/mode", "blue").await;
    let leader = cluster.wait_for_leader(WAIT).unwrap();
    cluster.kill(leader);
    // Right after the leader dies, linearizable reads meet "leader changed" and "no
    // leader" until a new one is elected: the store retries them, the caller sees none.
    for _ in 0..20 {
        assert_eq!(store.get("cfg/mode").await.unwrap(), written);
        assert_eq!(
            store.list("cfg").await.unwrap(),
            std::slice::from_ref(&written)
        );
        assert!(store.exists("cfg/mode").await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_store_whose_server_is_gone_fails_instead_of_hanging() {
    let mut server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()], &unique_namespace()).await;
    server.kill();
    for from in [WatchFrom::Snapshot, WatchFrom::After(1)] {
        let watch = tokio::time::timeout(WAIT, store.watch_prefix_events("svc", from)).await;
        let watch = watch.expect("the watch answers within its request timeout");
        assert!(
            matches!(
                watch,
                Err(Error::Unavailable { .. } | Error::Timeout { .. })
            ),
            "{:?}",
            watch.err()
        );
    }
    let view = tokio::time::timeout(WAIT, store.watch("svc/a")).await;
    assert!(view.expect("no hang").is_err());
}
