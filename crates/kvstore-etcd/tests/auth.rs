//! Credentials that expire (docs/CONTRACT.md §8 "etcd, long-lived"): etcd's auth tokens
//! expire after `--auth-token-ttl` seconds without use, and a store must authenticate
//! again by itself for requests, new and resumed watches, and lease keep-alives; a
//! permission that is really missing is an `Auth` error, not a hang.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions};
use kvstore_core::{Error, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_etcd::{Credentials, EtcdConfig, EtcdStore};
use kvstore_testkit::proxy::TcpProxy;
use kvstore_testkit::server::EtcdServer;
use kvstore_testsuite::{WAIT, next_item, unique_namespace};

/// etcd's simple-token lifetime in these tests, in seconds.
const TOKEN_TTL_SECS: u64 = 2;

/// An etcd with auth on, a `root` user, and tokens that expire after [`TOKEN_TTL_SECS`].
fn server_with_auth() -> EtcdServer {
    let ttl = TOKEN_TTL_SECS.to_string();
    let server = EtcdServer::start_with_args(&["--auth-token-ttl", &ttl]).unwrap();
    server.etcdctl(&["user", "add", "root:rootpw"]).unwrap();
    server.etcdctl(&["auth", "enable"]).unwrap();
    server
}

fn root_config(address: String, namespace: &str) -> EtcdConfig {
    let mut config = EtcdConfig::new([address]);
    config.namespace = namespace.to_owned();
    config.credentials = Some(Credentials {
        username: "root".into(),
        password: "rootpw".into(),
    });
    config.request_timeout = Duration::from_secs(5);
    config
}

/// Stay idle until a token issued now has certainly expired, and prove that it has: a
/// raw client that authenticated now, without automatic refresh, is refused afterwards.
async fn let_tokens_expire(server: &EtcdServer) {
    let options = ConnectOptions::new().with_user("root", "rootpw");
    let mut witness = Client::connect([server.endpoint()], Some(options))
        .await
        .unwrap();
    // etcd sweeps expired simple tokens about once a second after their TTL.
    tokio::time::sleep(Duration::from_secs(TOKEN_TTL_SECS * 2 + 2)).await;
    let refused = witness.get("any", None).await;
    let message = format!("{refused:?}");
    assert!(
        message.contains("invalid auth token"),
        "the token should have expired by now: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_token_expires_requests_watches_and_leases_still_work() {
    let server = server_with_auth();
    let namespace = unique_namespace();
    let store = EtcdStore::connect(root_config(server.address(), &namespace))
        .await
        .unwrap();
    store
        .put("cfg/a", Bytes::from("1"), PutOptions::default())
        .await
        .unwrap();

    let_tokens_expire(&server).await;

    assert_eq!(store.get("cfg/a").await.unwrap().value, "1");
    let written = store
        .put("cfg/b", Bytes::from("2"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.list("cfg").await.unwrap().len(), 2);

    let_tokens_expire(&server).await;
    let mut events = store
        .watch_prefix_events("cfg", WatchFrom::After(written.revision))
        .await
        .unwrap();
    let_tokens_expire(&server).await;
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    let leased = store
        .put(
            "cfg/c",
            Bytes::from("3"),
            PutOptions::with_lease(lease.id()),
        )
        .await
        .unwrap();
    match next_item(&mut events, "put after expiry").await {
        WatchEvent::Put(pair) => assert_eq!(pair, leased),
        other => panic!("expected a put, got {other:?}"),
    }
    let_tokens_expire(&server).await;
    assert_eq!(lease.loss(), None, "keep-alives went on");
    assert_eq!(
        store.keep_alive_lease(lease.id()).await.unwrap(),
        Duration::from_secs(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_after_the_token_expired_delivers_every_change() {
    let server = server_with_auth();
    let target: SocketAddr = server.address().parse().unwrap();
    let proxy = TcpProxy::start(target).unwrap();
    let namespace = unique_namespace();
    let watcher = EtcdStore::connect(root_config(proxy.address(), &namespace))
        .await
        .unwrap();
    let mut events = watcher
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;

    let_tokens_expire(&server).await;
    // The watch connection drops; the watch must be created again with a fresh token.
    proxy.disconnect();
    let writer = EtcdStore::connect(root_config(server.address(), &namespace))
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..3 {
        let pair = writer
            .put(
                &format!("jobs/{i}"),
                Bytes::from("x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
        written.push(pair);
    }
    for expected in &written {
        match next_item(&mut events, "after resume").await {
            WatchEvent::Put(pair) => assert_eq!(&pair, expected),
            other => panic!("expected a put, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_without_read_permission_is_an_auth_error() {
    let server = server_with_auth();
    server
        .etcdctl(&["--user", "root:rootpw", "user", "add", "guest:guestpw"])
        .unwrap();
    let namespace = unique_namespace();
    let mut config = root_config(server.address(), &namespace);
    config.credentials = Some(Credentials {
        username: "guest".into(),
        password: "guestpw".into(),
    });
    let guest = EtcdStore::connect(config).await.unwrap();

    let refused = tokio::time::timeout(
        WAIT,
        guest.watch_prefix_events("secret", WatchFrom::Snapshot),
    )
    .await
    .expect("the watch answers instead of hanging");
    assert!(
        matches!(refused, Err(Error::Auth { .. })),
        "{:?}",
        refused.err()
    );

    // Started after a revision, the watch has no snapshot to read: etcd's cancel arrives
    // as an error item, and the stream goes on trying with backoff.
    let mut events = guest
        .watch_prefix_events("secret", WatchFrom::After(1))
        .await
        .unwrap();
    let item = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut events))
        .await
        .expect("the cancel arrives");
    assert!(matches!(item, Some(Err(Error::Auth { .. }))), "{item:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_keep_alive_stream_opens_again_after_the_token_expired() {
    use kvstore_core::backend::Backend;
    let server = server_with_auth();
    let target: SocketAddr = server.address().parse().unwrap();
    let proxy = TcpProxy::start(target).unwrap();
    let store = EtcdStore::connect(root_config(proxy.address(), &unique_namespace()))
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let lease = Backend::grant_lease(&store, ttl).await.unwrap().id;

    let_tokens_expire(&server).await;
    // The store's first keep-alive opens its keep-alive stream with an expired token.
    assert_eq!(Backend::keep_alive_lease(&store, lease).await.unwrap(), ttl);

    let_tokens_expire(&server).await;
    // The connection drops under the stream: the next keep-alives open a new one, with
    // an expired token again. Only retryable failures are allowed on the way.
    proxy.disconnect();
    let started = std::time::Instant::now();
    loop {
        match Backend::keep_alive_lease(&store, lease).await {
            Ok(refreshed) => {
                assert_eq!(refreshed, ttl);
                break;
            }
            Err(error) if error.is_retryable() && started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("keep-alive after the token expired: {error:?}"),
        }
    }
}
