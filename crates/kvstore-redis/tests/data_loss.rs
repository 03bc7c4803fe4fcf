//! Redis in production loses or rolls back data (a restart without persistence, an
//! RDB/AOF older than the last writes, a failover to a lagging replica), evicts keys, and
//! goes silent behind load balancers. The store must keep its promises there
//! (docs/CONTRACT.md §4, §5, §8 "redis, in production").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use kvstore_core::{Error, LeaseLoss, LockOptions, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::proxy::TcpProxy;
use kvstore_testkit::server::RedisServer;
use kvstore_testsuite::{WAIT, next_item, put_retrying, unique_namespace};

async fn connect(url: String, namespace: &str) -> RedisStore {
    let mut config = RedisConfig::new(url);
    config.namespace = namespace.to_owned();
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(2);
    RedisStore::connect(config).await.unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `redis://127.0.0.1:PORT` of a proxy.
fn proxy_url(proxy: &TcpProxy) -> String {
    format!("redis://{}", proxy.address())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_learns_it_lost_the_lock_when_redis_restarts_empty() {
    let mut server = RedisServer::start().unwrap();
    let namespace = unique_namespace();
    let holder = connect(server.url(), &namespace).await;
    let options = LockOptions {
        value: Bytes::from("a"),
        ttl: Duration::from_secs(3),
    };
    let guard = holder
        .new_lock("jobs/nightly", options.clone())
        .unwrap()
        .lock()
        .await
        .unwrap();
    let token_before = guard.fencing_token();

    server.kill();
    server.restart().unwrap();
    // Another client takes leases on the empty server (with a counter, the first of
    // them would have had the holder's lease id) and then the lock.
    let other = connect(server.url(), &namespace).await;
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(other.grant_lease(Duration::from_secs(30)).await.unwrap());
    }
    let lost = tokio::time::timeout(WAIT, guard.lost()).await;
    assert!(
        matches!(
            lost,
            Ok(LeaseLoss::Expired | LeaseLoss::KeepAliveFailed | LeaseLoss::Revoked)
        ),
        "the holder must learn its lease is gone: {lost:?}"
    );
    for lease in &leases {
        assert_eq!(
            lease.loss(),
            None,
            "the other client's leases are untouched"
        );
    }
    let second = other
        .new_lock("jobs/nightly", options)
        .unwrap()
        .lock()
        .await
        .unwrap();
    assert!(
        second.fencing_token() > token_before,
        "fencing tokens never go backwards, even after data loss: {} then {}",
        token_before,
        second.fencing_token()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_revoke_of_a_lease_the_server_forgot_do_not_touch_others() {
    let mut server = RedisServer::start().unwrap();
    let namespace = unique_namespace();
    let first = connect(server.url(), &namespace).await;
    let forgotten = first
        .grant_lease(Duration::from_secs(30))
        .await
        .unwrap()
        .abandon();
    server.kill();
    server.restart().unwrap();
    let second = connect(server.url(), &namespace).await;
    let survivor = second.grant_lease(Duration::from_secs(30)).await.unwrap();
    second
        .put("k", Bytes::from("v"), PutOptions::with_lease(survivor.id()))
        .await
        .unwrap();
    let refreshed = first.keep_alive_lease(forgotten).await;
    assert!(
        matches!(refreshed, Err(Error::LeaseLost { .. })),
        "{refreshed:?}"
    );
    first.revoke_lease(forgotten).await.unwrap();
    assert_eq!(second.get("k").await.unwrap().value, "v");
}

/// A fresh server, a proxy to it, a namespace of its own, and two stores in it: a writer
/// connected directly and a watcher connected through the proxy (to cut it off).
async fn behind_proxy() -> (RedisServer, TcpProxy, String, RedisStore, RedisStore) {
    let server = RedisServer::start().unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = TcpProxy::start(target).unwrap();
    let namespace = unique_namespace();
    let writer = connect(server.url(), &namespace).await;
    let watcher = connect(proxy_url(&proxy), &namespace).await;
    (server, proxy, namespace, writer, watcher)
}

/// A watcher of `cfg` on a server about to roll back: it saw `cfg/base`, which the
/// server's saved snapshot holds, and three later writes the rollback will lose (the
/// store's shared reader has read past them). The watcher reaches the server through
/// `proxy`.
struct BeforeRollback {
    server: RedisServer,
    proxy: TcpProxy,
    namespace: String,
    events: BoxStream<'static, kvstore_core::Result<WatchEvent>>,
}

impl BeforeRollback {
    async fn prepare() -> BeforeRollback {
        let (server, proxy, namespace, writer, watcher) = behind_proxy().await;

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
        // The snapshot the server will come back from.
        let _: () = redis::cmd("SAVE")
            .query_async(&mut raw(&server.url()).await)
            .await
            .unwrap();
        for i in 0..3 {
            let pair = writer
                .put(
                    &format!("cfg/lost-{i}"),
                    Bytes::from("x"),
                    PutOptions::default(),
                )
                .await
                .unwrap();
            match next_item(&mut events, "write before the rollback").await {
                WatchEvent::Put(seen) => assert_eq!(seen, pair),
                other => panic!("expected a put, got {other:?}"),
            }
        }
        BeforeRollback {
            server,
            proxy,
            namespace,
            events,
        }
    }

    /// Cut the watcher off and restart the server from the saved snapshot; a writer on
    /// the rolled-back server. The watcher stays cut off until `proxy.restore()`.
    async fn roll_back(&mut self) -> RedisStore {
        self.proxy.refuse();
        self.server.kill();
        self.server.restart().unwrap();
        connect(self.server.url(), &self.namespace).await
    }
}

/// Data rolled back with the same epoch (a restart from an older RDB snapshot), and other
/// clients writing past the watcher's position before it reconnects: the watcher must not
/// keep changes that no longer exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resyncs_after_a_rollback_that_others_wrote_past() {
    let mut before = BeforeRollback::prepare().await;
    // Other clients write more revisions than were lost while the watcher is cut off.
    let writer = before.roll_back().await;
    let mut rewritten = Vec::new();
    for i in 0..6 {
        rewritten.push(
            writer
                .put(
                    &format!("cfg/new-{i}"),
                    Bytes::from("y"),
                    PutOptions::default(),
                )
                .await
                .unwrap(),
        );
    }
    before.proxy.restore();

    match next_item(&mut before.events, "after the rollback").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            let mut expected = vec!["cfg/base"];
            let names: Vec<String> = (0..6).map(|i| format!("cfg/new-{i}")).collect();
            expected.extend(names.iter().map(String::as_str));
            assert_eq!(keys, expected);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// After a rollback that keeps the data epoch, the store's shared stream reader starts
/// again from the stream's new top: a write of the new history, at a revision the old
/// history also had, reaches a watcher that already resynced, without waiting for the
/// revisions to pass the old top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rollback_the_new_history_reaches_watchers_at_once() {
    let mut before = BeforeRollback::prepare().await;
    let writer = before.roll_back().await;
    before.proxy.restore();
    let events = &mut before.events;

    match next_item(events, "after the rollback").await {
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

/// A server that goes silent without closing the connection (a crashed host, a
/// blackholed network): the watch notices within its bounded time and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_silent_server_reconnects_and_misses_nothing() {
    let (_server, proxy, _namespace, writer, watcher) = behind_proxy().await;
    let mut events = watcher
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;

    proxy.blackhole();
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(
            writer
                .put(
                    &format!("jobs/{i}"),
                    Bytes::from("x"),
                    PutOptions::default(),
                )
                .await
                .unwrap(),
        );
    }
    // New connections work again; the blackholed ones stay silent forever.
    proxy.restore();
    for expected in &written {
        match next_item(&mut events, "after the silence").await {
            WatchEvent::Put(pair) => assert_eq!(&pair, expected),
            other => panic!("expected a put, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_the_revision_counter_was_evicted_fails_and_writes_nothing() {
    let server = RedisServer::start().unwrap();
    let namespace = unique_namespace();
    let store = connect(server.url(), &namespace).await;
    let before = store
        .put("a", Bytes::from("1"), PutOptions::default())
        .await
        .unwrap();
    let mut connection = raw(&server.url()).await;
    let log_length = |mut connection: redis::aio::MultiplexedConnection| {
        let stream = store.stream_key();
        async move {
            redis::cmd("XLEN")
                .arg(stream)
                .query_async::<u64>(&mut connection)
                .await
                .unwrap()
        }
    };
    let logged = log_length(connection.clone()).await;

    // As an evicting maxmemory-policy (or a careless DEL) would do.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{{{namespace}}}:rev"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let put = store
        .put("b", Bytes::from("2"), PutOptions::default())
        .await;
    assert!(matches!(put, Err(Error::Backend { .. })), "{put:?}");
    let delete = store.delete("a").await;
    assert!(matches!(delete, Err(Error::Backend { .. })), "{delete:?}");

    // A foreign value where the counter lives: the same.
    let _: () = redis::cmd("SET")
        .arg(format!("{{{namespace}}}:rev"))
        .arg("not a number")
        .query_async(&mut connection)
        .await
        .unwrap();
    let put = store
        .put("b", Bytes::from("2"), PutOptions::default())
        .await;
    assert!(matches!(put, Err(Error::Backend { .. })), "{put:?}");

    // A counter reset behind the log (a restore of an older counter): the same.
    let _: () = redis::cmd("SET")
        .arg(format!("{{{namespace}}}:rev"))
        .arg(before.revision - 1)
        .query_async(&mut connection)
        .await
        .unwrap();
    let put = store
        .put("b", Bytes::from("2"), PutOptions::default())
        .await;
    assert!(matches!(put, Err(Error::Backend { .. })), "{put:?}");

    assert!(!store.exists("b").await.unwrap(), "nothing was written");
    assert_eq!(store.get("a").await.unwrap(), before);
    assert_eq!(log_length(connection).await, logged, "nothing was logged");
}

/// A server that may evict keys under memory pressure is refused when the user asks for
/// `require_noeviction`, and only warned about otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_server_is_refused_on_request() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let strict = RedisConfig::from_url(&format!("{}?require_noeviction=true", server.url()));
    let refused = RedisStore::connect(strict.unwrap()).await;
    match refused {
        Err(Error::Config { message }) => assert!(message.contains("allkeys-lru"), "{message}"),
        other => panic!("expected a Config error, got {:?}", other.map(|_| ())),
    }
    let lenient = RedisStore::connect(RedisConfig::new(server.url())).await;
    assert!(lenient.is_ok(), "{:?}", lenient.map(|_| ()));
    let noeviction = RedisServer::start().unwrap();
    let strict = RedisConfig::from_url(&format!("{}?require_noeviction=true", noeviction.url()));
    RedisStore::connect(strict.unwrap()).await.unwrap();
}
