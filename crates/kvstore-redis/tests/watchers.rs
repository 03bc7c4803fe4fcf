//! All watchers of a store share one reader of its change stream: ten thousand watchers
//! cost two connections (requests and the reader), not ten thousand.

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::RedisServer;
use kvstore_testsuite::{WAIT, next_item, unique_namespace};

const WATCHERS: usize = 10_000;

/// The client connections the server has now, other than the one asking.
async fn connections(url: &str) -> usize {
    let mut admin = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    list.lines().count() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_of_one_store_share_its_connections() {
    let server = RedisServer::start().unwrap();
    let mut config = RedisConfig::new(server.url());
    config.namespace = unique_namespace();
    let store = RedisStore::connect(config).await.unwrap();

    let mut watchers = futures::stream::iter(0..WATCHERS)
        .map(|_| store.watch_prefix_events("jobs", WatchFrom::Snapshot))
        .buffer_unordered(64)
        .map(|watch| watch.unwrap())
        .collect::<Vec<_>>()
        .await;
    for events in &mut watchers {
        next_item(events, "snapshot").await;
    }
    let written = store
        .put("jobs/1", Bytes::from("run"), PutOptions::default())
        .await
        .unwrap();
    let delivered = futures::future::join_all(
        watchers
            .iter_mut()
            .map(|events| tokio::time::timeout(WAIT, events.next())),
    )
    .await;
    for item in delivered {
        match item {
            Ok(Some(Ok(WatchEvent::Put(pair)))) => assert_eq!(pair, written),
            other => panic!("every watcher gets the put: {other:?}"),
        }
    }
    let open = connections(&server.url()).await;
    assert!(
        open <= 2,
        "{WATCHERS} watchers hold {open} connections; expected the store's two"
    );
}
