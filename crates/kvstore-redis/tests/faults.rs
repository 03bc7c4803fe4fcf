//! Fault tests against real redis-server processes: killed connections, trimmed
//! history, a restart that loses the data, and timely TTL expiry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{Error, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore, WATCH_CLIENT_NAME};
use kvstore_testkit::server::{RedisServer, free_port, shared_redis};
use kvstore_testsuite::{next_item, put_retrying, unique_namespace};

async fn connect(url: String, namespace: &str) -> Arc<dyn Store> {
    let mut config = RedisConfig::new(url);
    config.namespace = namespace.to_owned();
    Arc::new(RedisStore::connect(config).await.unwrap())
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Kill every watch connection (found by client name) on the server.
async fn kill_watch_connections(url: &str) -> usize {
    let mut connection = raw(url).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    let ids: Vec<String> = clients
        .lines()
        .filter(|line| line.contains(&format!(" name={WATCH_CLIENT_NAME} ")))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect();
    for id in &ids {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_watch_connection_loses_and_repeats_nothing() {
    let url = shared_redis().url();
    let store = connect(url.clone(), &unique_namespace()).await;
    let mut events = store
        .watch_prefix_events("jobs", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..60 {
                written.push(put_retrying(&store, &format!("jobs/{i:02}"), "x").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            written
        })
    };
    let mut received = Vec::new();
    let mut kills = 0;
    while received.len() < 60 {
        match next_item(&mut events, "job events").await {
            WatchEvent::Put(pair) => received.push(pair),
            other => panic!("expected a put, got {other:?}"),
        }
        if received.len() % 15 == 5 {
            kills += kill_watch_connections(&url).await;
        }
    }
    let written = writer.await.unwrap();
    assert!(kills >= 3, "the watch connection was killed {kills} times");
    assert_eq!(received, written, "every write once, in order");
    let extra = futures::FutureExt::now_or_never(events.next());
    assert!(extra.is_none(), "nothing is delivered twice: {extra:?}");
}

/// A watcher that falls further behind than the store's shared reader buffers reads on
/// from the stream; when the stream was trimmed past it meanwhile, it gets a `Resync`
/// with the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_trimmed_past_a_watcher_that_fell_behind_yields_resync() {
    /// More single-write batches than the shared reader keeps for a slow watcher.
    const WRITES: usize = 1100;
    let url = shared_redis().url();
    let namespace = unique_namespace();
    let store = connect(url.clone(), &namespace).await;
    let mut events = store
        .watch_prefix_events("cfg", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let first = put_retrying(&store, "cfg/a", "1").await;
    assert_eq!(
        next_item(&mut events, "first").await,
        WatchEvent::Put(first)
    );

    // Not polled while history moves on and is trimmed away. A second watcher takes each
    // write before the next is sent, so the shared reader reads (and broadcasts) every
    // write as a batch of its own, and the first watcher surely falls behind its buffer.
    let mut pacer = store
        .watch_prefix_events("noise", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut pacer, "pacer snapshot").await;
    for i in 0..WRITES {
        let pair = store
            .put("noise/n", Bytes::from(i.to_string()), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(next_item(&mut pacer, "noise").await, WatchEvent::Put(pair));
    }
    put_retrying(&store, "cfg/b", "2").await;
    store.delete("cfg/a").await.unwrap();
    let stream_key = RedisStore::connect({
        let mut c = RedisConfig::new(url.clone());
        c.namespace = namespace.clone();
        c
    })
    .await
    .unwrap()
    .stream_key();
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream_key)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    let last = put_retrying(&store, "cfg/c", "3").await;

    match next_item(&mut events, "resync").await {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["cfg/b", "cfg/c"]);
            assert!(snapshot.revision >= last.revision);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let live = put_retrying(&store, "cfg/d", "4").await;
    assert_eq!(next_item(&mut events, "live").await, WatchEvent::Put(live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_yields_resync_to_the_empty_state() {
    let mut server = RedisServer::start().unwrap();
    let store = connect(server.url(), &unique_namespace()).await;
    put_retrying(&store, "svc/a", "1").await;
    put_retrying(&store, "svc/b", "2").await;
    let mut events = store
        .watch_prefix_events("svc", WatchFrom::Snapshot)
        .await
        .unwrap();
    match next_item(&mut events, "snapshot").await {
        WatchEvent::Snapshot(s) => assert_eq!(s.pairs.len(), 2),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    server.kill();
    server.restart().unwrap();
    match next_item(&mut events, "resync after restart").await {
        WatchEvent::Resync(snapshot) => assert!(snapshot.pairs.is_empty(), "{snapshot:?}"),
        other => panic!("expected a resync to the empty state, got {other:?}"),
    }
    let fresh = put_retrying(&store, "svc/c", "3").await;
    assert_eq!(
        next_item(&mut events, "write after restart").await,
        WatchEvent::Put(fresh)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_reaches_watchers_within_a_second_of_the_deadline() {
    let store = connect(shared_redis().url(), &unique_namespace()).await;
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

#[tokio::test]
async fn unreachable_server_is_unavailable_within_the_connect_timeout() {
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{}", free_port().unwrap()));
    config.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let result = RedisStore::connect(config).await;
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

/// A revision with more keys than the stream keeps (here a `delete_tree` of 50 keys and a
/// stream of about 10 entries) loses its own first entries: the watcher must resync, not
/// wait forever for a revision it can never complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_larger_than_the_stream_bound_yields_resync() {
    // Small stream nodes, so `XADD MAXLEN ~` trims at a fine grain.
    let server = RedisServer::start_with(&["--stream-node-max-entries", "2"]).unwrap();
    let mut config = RedisConfig::new(server.url());
    config.namespace = unique_namespace();
    config.history_capacity = 10;
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await.unwrap());
    let mut events = store
        .watch_prefix_events("bulk", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    for i in 0..50 {
        let pair = put_retrying(&store, &format!("bulk/{i:02}"), "x").await;
        // Consumed one by one, so the stream bound never passes the watcher here.
        assert_eq!(next_item(&mut events, "put").await, WatchEvent::Put(pair));
    }
    store.delete_tree("bulk").await.unwrap();
    let kept = store
        .put("other", Bytes::from("y"), PutOptions::default())
        .await;
    kept.unwrap();
    match next_item(&mut events, "after the big revision").await {
        WatchEvent::Resync(snapshot) => assert!(snapshot.pairs.is_empty(), "{snapshot:?}"),
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// The change log is bounded in bytes as well as in entries: with large values the bytes
/// decide (here 1,000 values of 4 KiB, about 4 MiB, against a bound of 256 KiB and the
/// default bound of 100,000 entries), so a store of large values cannot fill Redis's
/// memory with history. A watcher that falls behind what was trimmed gets a `Resync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_trimmed_to_its_bound_in_bytes() {
    const BOUND: u64 = 256 * 1024;
    let server = RedisServer::start().unwrap();
    let mut config = RedisConfig::new(server.url());
    config.namespace = unique_namespace();
    config.history_max_bytes = BOUND;
    let redis_store = RedisStore::connect(config).await.unwrap();
    let stream = redis_store.stream_key();
    let store: Arc<dyn Store> = Arc::new(redis_store);
    let mut behind = store
        .watch_prefix_events("big", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut behind, "snapshot").await;
    let value = Bytes::from(vec![b'v'; 4096]);
    futures::stream::iter(0..1000)
        .for_each_concurrent(16, |i| {
            let (store, value) = (store.clone(), value.clone());
            async move {
                store
                    .put(&format!("big/{i:04}"), value, PutOptions::default())
                    .await
                    .unwrap();
            }
        })
        .await;
    let mut connection = raw(&server.url()).await;
    let entries: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    // Checked every 32nd revision and trimmed by whole stream nodes: approximate.
    assert!(entries < 200, "{entries} entries kept");
    assert!(bytes < 2 * BOUND, "{bytes} bytes kept");
    // The watcher was not polled while the writes went by: its history is gone.
    let mut resynced = false;
    while let Ok(Some(event)) = tokio::time::timeout(kvstore_testsuite::WAIT, behind.next()).await {
        match event.unwrap() {
            WatchEvent::Resync(snapshot) => {
                assert_eq!(snapshot.pairs.len(), 1000);
                resynced = true;
                break;
            }
            WatchEvent::Put(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        resynced,
        "the watcher behind the trimmed history did not resync"
    );
}

/// A server that refuses `MEMORY` (renamed here; an ACL or a managed service does the
/// same) keeps only the bound in entries: the check of the bound in bytes never fails a
/// write, so no write half-applies (logged and counted but without its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_apply_whole_on_a_server_without_memory_usage() {
    let server =
        RedisServer::start_with(&["--rename-command", "MEMORY", "memory-is-disabled"]).unwrap();
    let mut config = RedisConfig::new(server.url());
    config.namespace = unique_namespace();
    // Small enough that the check would trim, if it could measure.
    config.history_max_bytes = 1024;
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await.unwrap());
    let mut events = store
        .watch_prefix_events("k", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    // Past at least one revision that is a multiple of 32, where the check runs.
    for i in 0..64 {
        let key = format!("k/{i:02}");
        let pair = store
            .put(&key, Bytes::from("v"), PutOptions::default())
            .await
            .unwrap_or_else(|e| panic!("put of {key}: {e}"));
        assert_eq!(store.get(&key).await.unwrap(), pair);
        assert_eq!(next_item(&mut events, "put").await, WatchEvent::Put(pair));
    }
}

/// The same for a lease expiry that lands on a revision where the check runs: the
/// expired lease's keys are deleted with it, so the key can be taken again (as a lock is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_applies_whole_on_a_server_without_memory_usage() {
    let server =
        RedisServer::start_with(&["--rename-command", "MEMORY", "memory-is-disabled"]).unwrap();
    let namespace = unique_namespace();
    let mut config = RedisConfig::new(server.url());
    config.namespace = namespace.clone();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await.unwrap());
    let mut raw = raw(&server.url()).await;
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store
        .put(
            "locks/holder",
            Bytes::from("me"),
            PutOptions::with_lease(lease.id()),
        )
        .await
        .unwrap();
    let mut holder = store
        .watch_prefix_events("locks", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut holder, "snapshot").await;
    // Bring the revision to 31 mod 32, so the expiry is a multiple of 32.
    let revision_key = format!("{{{namespace}}}:rev");
    for i in 0.. {
        let revision: u64 = redis::cmd("GET")
            .arg(&revision_key)
            .query_async(&mut raw)
            .await
            .unwrap();
        if revision % 32 == 31 {
            break;
        }
        store
            .put(
                &format!("filler/{i}"),
                Bytes::from("x"),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    lease.abandon();
    match next_item(&mut holder, "the expiry").await {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, "locks/holder");
            assert_eq!(revision % 32, 0);
        }
        other => panic!("expected the holder's delete, got {other:?}"),
    }
    store
        .atomic_put(
            "locks/holder",
            Bytes::from("next holder"),
            None,
            PutOptions::default(),
        )
        .await
        .expect("the expired holder's key can be taken again");
}

/// Connections the server at `url` accepted so far (`INFO stats`).
async fn connections_received(url: &str) -> u64 {
    let mut raw = raw(url).await;
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
    let mut raw = raw(&server.url()).await;
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
