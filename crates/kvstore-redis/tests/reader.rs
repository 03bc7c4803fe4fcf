//! The store's one stream reader (shared by all its watchers) on a server that rolled
//! back, and on a server that refuses its reads: watchers keep receiving the new history,
//! and a failing reader backs off instead of reconnecting in a loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testsuite::proxy::TcpProxy;
use kvstore_testsuite::server::RedisServer;
use kvstore_testsuite::{next_item, put_retrying, unique_namespace};

/// A store on `url` in `namespace` with short timeouts.
async fn connect(url: String, namespace: &str) -> RedisStore {
    let mut config = RedisConfig::new(url);
    config.namespace = namespace.to_owned();
    config.connect_timeout = Duration::from_secs(2);
    config.response_timeout = Duration::from_secs(2);
    RedisStore::connect(config).await.unwrap()
}

/// After a rollback that keeps the data epoch (a restart from an older RDB), the reader
/// starts again from the stream's new top: a write of the new history, at a revision the
/// old history also had, reaches a watcher that already resynced, without waiting for
/// the revisions to pass the old top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_the_new_history_reaches_watchers_at_once() {
    let mut server = RedisServer::start().unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = TcpProxy::start(target).unwrap();
    let namespace = unique_namespace();
    let writer = connect(server.url(), &namespace).await;
    let watcher = connect(format!("redis://{}", proxy.address()), &namespace).await;

    put_retrying(
        &(Arc::new(writer.clone()) as Arc<dyn Store>),
        "cfg/base",
        "0",
    )
    .await;
    let mut events = watcher
        .watch_prefix_events("cfg", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut raw).await.unwrap();
    // Three revisions the rollback will lose; the shared reader's last id moves past them.
    for i in 0..3 {
        writer
            .put(
                &format!("cfg/lost-{i}"),
                Bytes::from("x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        next_item(&mut events, "write before the rollback").await;
    }

    proxy.refuse();
    server.kill();
    server.restart().unwrap();
    let writer = connect(server.url(), &namespace).await;
    proxy.restore();

    match next_item(&mut events, "after the rollback").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["cfg/base"]);
        }
        other => panic!("expected a resync, got {other:?}"),
    }

    // Let the watcher finish catching up and wait on the shared reader (nothing is
    // written meanwhile, so nothing may arrive).
    let quiet = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(quiet.is_err(), "nothing was written: {quiet:?}");
    // A write of the new history, at a revision the old history also had.
    let pair = writer
        .put("cfg/after", Bytes::from("y"), PutOptions::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    match got {
        Ok(Some(Ok(WatchEvent::Put(seen)))) => assert_eq!(seen, pair),
        Ok(other) => panic!(
            "expected the put at revision {}, got {other:?}",
            pair.revision
        ),
        Err(_) => panic!(
            "the put at revision {} was not delivered within 10 s: the reader still reads \
             after the top before the rollback",
            pair.revision
        ),
    }
}

/// Connections the server at `url` accepted so far (`INFO stats`).
async fn connections_received(url: &str) -> u64 {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A reader whose reads keep failing on a connection that was made fine (an ACL that
/// denies `XREAD`; `-LOADING` while a restarted server loads its data) tries again after
/// the resume backoff, not at once in a loop of new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_reads_fail_backs_off() {
    let server = RedisServer::start().unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noxread", "on", ">pw", "~*", "&*", "+@all", "-xread",
        ])
        .query_async(&mut raw)
        .await
        .unwrap();
    let url = format!("redis://noxread:pw@127.0.0.1:{}", server.port());
    let mut config = RedisConfig::new(url);
    config.namespace = unique_namespace();
    let store = RedisStore::connect(config).await.unwrap();
    let mut events = store
        .watch_prefix_events("cfg", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;

    let before = connections_received(&server.url()).await;
    // Keep the watch polled for two seconds: nothing is written.
    let _ = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
    let made = connections_received(&server.url()).await - before;
    // With the resume backoff (50 ms doubling to 3 s) a failing reader would connect a
    // handful of times in two seconds.
    assert!(
        made < 50,
        "{made} connections in 2 s: the reader reconnects without backoff"
    );
}
