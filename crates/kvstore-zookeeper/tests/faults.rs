//! Fault tests against real ZooKeeper processes: a restart, the loss of an ensemble
//! member, a paused server, an unreachable ensemble, trimmed history and timely expiry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{Error, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_testkit::server::free_port;
use kvstore_testkit::zookeeper::{ZooKeeperEnsemble, ZooKeeperServer, shared_zookeeper};
use kvstore_testsuite::{next_item, put_retrying, unique_namespace};
use kvstore_zookeeper::{ZooKeeperConfig, ZooKeeperStore};

fn config(hosts: String, namespace: &str) -> ZooKeeperConfig {
    let mut config = ZooKeeperConfig::new(hosts);
    config.namespace = namespace.to_owned();
    config
}

async fn connect(config: ZooKeeperConfig) -> Arc<dyn Store> {
    Arc::new(ZooKeeperStore::connect(config).await.unwrap())
}

/// The next `Put`s of `events` until `count` arrived; panics on anything else.
async fn puts(
    events: &mut (impl futures::Stream<Item = kvstore_core::Result<WatchEvent>> + Unpin),
    count: usize,
) -> Vec<kvstore_core::KvPair> {
    let mut received = Vec::new();
    while received.len() < count {
        match next_item(events, "puts").await {
            WatchEvent::Put(pair) => received.push(pair),
            other => panic!("expected a put, got {other:?}"),
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_the_data_and_watchers_resume_losing_nothing() {
    let mut server = ZooKeeperServer::start().unwrap();
    let store = connect(config(server.address(), &unique_namespace())).await;
    let mut events = store
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(put_retrying(&store, &format!("jobs/{i}"), "before").await);
    }
    server.kill();
    server.restart().unwrap();
    for i in 5..10 {
        written.push(put_retrying(&store, &format!("jobs/{i}"), "after").await);
    }
    assert_eq!(
        puts(&mut events, 10).await,
        written,
        "every write once, in order"
    );
    assert_eq!(store.get("jobs/0").await.unwrap().value, "before");
    let extra = futures::FutureExt::now_or_never(events.next());
    assert!(extra.is_none(), "nothing is delivered twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_that_loses_its_leader_keeps_serving_and_watching() {
    let mut ensemble = ZooKeeperEnsemble::start().unwrap();
    let store = connect(config(ensemble.connect_string(), &unique_namespace())).await;
    let first = put_retrying(&store, "svc/a", "1").await;
    let mut events = store
        .watch_prefix_events("svc", WatchFrom::After(first.revision))
        .await
        .unwrap();
    let leader = ensemble.leader_index().expect("the ensemble has a leader");
    ensemble.kill(leader);
    let second = put_retrying(&store, "svc/b", "2").await;
    assert!(second.revision > first.revision, "revisions never go back");
    assert_eq!(store.get("svc/a").await.unwrap().value, "1");
    assert_eq!(puts(&mut events, 1).await, vec![second]);
    ensemble.restart(leader).unwrap();
    let third = put_retrying(&store, "svc/c", "3").await;
    assert_eq!(puts(&mut events, 1).await, vec![third]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_makes_calls_fail_within_the_request_timeout() {
    let server = ZooKeeperServer::start().unwrap();
    let mut config = config(server.address(), &unique_namespace());
    config.request_timeout = Duration::from_secs(1);
    let store = connect(config).await;
    put_retrying(&store, "k", "v").await;
    server.pause();
    let started = std::time::Instant::now();
    let put = store
        .put("k", Bytes::from("w"), PutOptions::default())
        .await;
    let get = store.get("k").await;
    server.resume();
    assert!(put.as_ref().is_err_and(Error::is_retryable), "{put:?}");
    assert!(get.as_ref().is_err_and(Error::is_retryable), "{get:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_ensemble_is_unavailable_within_the_connect_timeout() {
    let mut config = ZooKeeperConfig::new(format!("127.0.0.1:{}", free_port().unwrap()));
    config.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let result = ZooKeeperStore::connect(config).await;
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

/// A watcher that is not polled while more operations happen than the log keeps gets a
/// `Resync` with the current state, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trimmed_past_a_watcher_that_fell_behind_yields_resync() {
    let mut config = config(shared_zookeeper().address(), &unique_namespace());
    config.history_capacity = 5;
    let store = Arc::new(ZooKeeperStore::connect(config).await.unwrap());
    let dyn_store: Arc<dyn Store> = store.clone();
    let mut events = dyn_store
        .watch_prefix_events("cfg", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let first = put_retrying(&dyn_store, "cfg/a", "1").await;
    assert_eq!(
        next_item(&mut events, "first").await,
        WatchEvent::Put(first)
    );
    for i in 0..20 {
        put_retrying(&dyn_store, "noise", &i.to_string()).await;
    }
    put_retrying(&dyn_store, "cfg/b", "2").await;
    dyn_store.delete("cfg/a").await.unwrap();
    store.trim_log(5).await.unwrap();
    match next_item(&mut events, "resync").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["cfg/b"]);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let live = put_retrying(&dyn_store, "cfg/c", "3").await;
    assert_eq!(next_item(&mut events, "live").await, WatchEvent::Put(live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_reaches_watchers_within_a_second_of_the_deadline() {
    let store = connect(config(shared_zookeeper().address(), &unique_namespace())).await;
    let ttl = Duration::from_secs(2);
    let mut states = store.watch("session").await.unwrap();
    assert_eq!(next_item(&mut states, "current").await, None);
    let written_at = std::time::Instant::now();
    store
        .put("session", Bytes::from("x"), PutOptions::with_ttl(ttl))
        .await
        .unwrap();
    assert!(next_item(&mut states, "put").await.is_some());
    assert_eq!(next_item(&mut states, "expiry").await, None);
    let took = written_at.elapsed();
    assert!(
        took >= ttl - Duration::from_millis(50),
        "expired early: {took:?}"
    );
    assert!(
        took <= ttl + Duration::from_secs(1),
        "expiry arrived {took:?} after the write"
    );
}

/// Someone deletes the whole namespace (`zkCli.sh deleteall`): the next write recreates
/// its znodes, and a watcher resyncs to the new data instead of hanging or replaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_under_the_store_is_recreated_and_watchers_resync() {
    let namespace = unique_namespace();
    let store = connect(config(shared_zookeeper().address(), &namespace)).await;
    put_retrying(&store, "svc/a", "1").await;
    let mut events = store
        .watch_prefix_events("svc", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    shared_zookeeper()
        .zk_cli(&["deleteall", &format!("/{namespace}")])
        .unwrap();
    let fresh = put_retrying(&store, "svc/b", "2").await;
    loop {
        match next_item(&mut events, "resync to the new data").await {
            WatchEvent::Resync(snapshot) => {
                let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
                if keys == ["svc/b"] {
                    break;
                }
                assert!(keys.is_empty(), "{keys:?}");
            }
            WatchEvent::Put(pair) if pair == fresh => {}
            other => panic!("expected a resync, got {other:?}"),
        }
    }
    let live = put_retrying(&store, "svc/c", "3").await;
    assert_eq!(next_item(&mut events, "live").await, WatchEvent::Put(live));
}
