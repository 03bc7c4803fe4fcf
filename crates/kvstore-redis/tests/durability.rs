//! Opt-in durability (`wait_replicas`): a write is acknowledged only once a replica has
//! it (Redis `WAIT`), and fails as `Unavailable` when no replica confirms in time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore_core::{Error, PutOptions, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::RedisServer;
use kvstore_testsuite::{WAIT, unique_namespace};

/// A replica of `primary`, once its replication link is up.
async fn replica_of(primary: &RedisServer) -> RedisServer {
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let mut connection = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut connection)
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            return replica;
        }
        assert!(started.elapsed() < WAIT, "the replica never linked: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_replica_and_fail_when_none_acknowledges() {
    let primary = RedisServer::start().unwrap();
    let mut replica = replica_of(&primary).await;
    let config = RedisConfig::from_url(&format!(
        "{}?namespace={}&wait_replicas=1&wait_timeout=500",
        primary.url(),
        unique_namespace()
    ))
    .unwrap();
    let store = RedisStore::connect(config).await.unwrap();

    let written = store
        .put("orders/1", Bytes::from("paid"), PutOptions::default())
        .await
        .unwrap();
    // Acknowledged means the replica has it.
    let mut on_replica = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value: Option<String> = redis::cmd("HGET")
        .arg(store.redis_key("orders/1"))
        .arg("value")
        .query_async(&mut on_replica)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("paid"));
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();

    replica.kill();
    let unconfirmed = store
        .put("orders/2", Bytes::from("paid"), PutOptions::default())
        .await;
    assert!(
        matches!(unconfirmed, Err(Error::Unavailable { .. })),
        "{unconfirmed:?}"
    );
    let refreshed = store.keep_alive_lease(lease.id()).await;
    assert!(
        matches!(refreshed, Err(Error::Unavailable { .. })),
        "{refreshed:?}"
    );
    assert_eq!(store.get("orders/1").await.unwrap(), written);
}

#[test]
fn a_wait_timeout_not_shorter_than_the_request_timeout_is_refused() {
    let refused = RedisConfig::from_url(
        "redis://127.0.0.1:6379?wait_replicas=1&wait_timeout=5000&request_timeout=5000",
    );
    assert!(matches!(refused, Err(Error::Config { .. })), "{refused:?}");
}
