//! What an operation costs the server, counted rather than timed: the commands a TTL put
//! sends (one) (the server's `SLOWLOG` at a threshold of 0 µs records every command a client
//! sends, and none of the commands a script runs inside), and that lease expiry inside
//! the write scripts still happens, exactly when due.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvstore_core::{PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::RedisServer;
use kvstore_testsuite::{let_server_time_pass, next_item, unique_namespace};

/// The client name of the test's own admin connection, whose commands are not counted.
const ADMIN: &str = "kvstore-test-admin";

/// A store on `url` in a namespace of its own, whose writes never check the change log's
/// size in bytes (every 32nd revision would run `MEMORY USAGE`; the tests here count the
/// commands of one write).
async fn connect(url: String) -> RedisStore {
    let mut config = RedisConfig::new(url);
    config.namespace = unique_namespace();
    config.history_max_bytes = 0;
    RedisStore::connect(config).await.unwrap()
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(ADMIN)
        .query_async(&mut connection)
        .await
        .unwrap();
    connection
}

/// The SHA1 the server knows a script by, as `redis::Script` computes it.
fn sha(source: &str) -> String {
    redis::Script::new(source).get_hash().to_owned()
}

fn prelude_script(body: &str) -> String {
    format!("{}\n{body}", include_str!("../scripts/lib.lua"))
}

/// A writing script as the backend sends it: the prelude, then the body as a function
/// whose answer is remembered for a resend (`write_script!` in src/scripts.rs).
fn write_script(body: &str) -> String {
    format!(
        "{}\nlocal answer = remembered()\nif answer then return answer end\nlocal function body()\n{body}\nend\nreturn remember(body())\n",
        include_str!("../scripts/lib.lua")
    )
}

/// Start recording every command in the server's slow log.
async fn record(admin: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(4096)
        .query_async(admin)
        .await
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(admin)
        .await
        .unwrap();
}

/// A command a client sent, as its name and first argument (a script's SHA), with the
/// commands it ran inside when it is a script.
#[derive(Debug, PartialEq)]
struct Call {
    name: String,
    first: String,
    inner: Vec<String>,
}

/// The commands recorded since [`record`], oldest first, leaving out the admin
/// connection's and the store's background lease reaper's (which runs every 250 ms
/// whatever the test does). Since Redis 7 the slow log also records the commands a
/// script runs, each as it completes, so right before the script's own entry (a script
/// runs alone): they are gathered into the script's call.
async fn recorded(admin: &mut redis::aio::MultiplexedConnection) -> Vec<Call> {
    let reaper = sha(&prelude_script(include_str!("../scripts/reap.lua")));
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(4096)
        .query_async(admin)
        .await
        .unwrap();
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(text) => text.clone(),
        other => format!("{other:?}"),
    };
    let mut calls = Vec::new();
    let mut inner = Vec::new();
    for entry in entries.iter().rev() {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        if fields.get(5).map(text).as_deref() == Some(ADMIN) {
            continue;
        }
        let name = args.first().map(text).unwrap_or_default().to_uppercase();
        if name == "EVALSHA" || name == "EVAL" {
            calls.push(Call {
                name,
                first: args.get(1).map(text).unwrap_or_default(),
                inner: std::mem::take(&mut inner),
            });
        } else {
            inner.push(name);
        }
    }
    assert!(inner.is_empty(), "commands outside scripts: {inner:?}");
    calls.retain(|call| call.first != reaper);
    calls
}

/// A TTL put is one command: the put script creates the lease (`ZADD`, `HSET` of its TTL)
/// at the write's revision, exact because nobody sees the id before the put returns. A
/// plain put is the same script without them, and a standalone grant is still the cheap
/// script of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_put_is_one_put_script() {
    let server = RedisServer::start().unwrap();
    let store = connect(server.url()).await;
    let mut admin = admin(&server.url()).await;
    let ttl = PutOptions::with_ttl(Duration::from_secs(30));
    // Load the scripts first: the first call of each is answered NOSCRIPT and loaded.
    store
        .put("warm", Bytes::from("up"), ttl.clone())
        .await
        .unwrap();

    record(&mut admin).await;
    let written = store
        .put("session", Bytes::from("s"), ttl.clone())
        .await
        .unwrap();
    let calls = recorded(&mut admin).await;
    let put = sha(&write_script(include_str!("../scripts/put.lua")));
    assert_eq!(calls.len(), 1, "a TTL put is one command: {calls:#?}");
    assert_eq!(
        (calls[0].name.as_str(), calls[0].first.as_str()),
        ("EVALSHA", put.as_str())
    );
    let lease = written.lease.expect("a TTL put's pair names its lease");
    let inner = &calls[0].inner;
    let zadd = inner.iter().position(|c| c == "ZADD");
    let xadd = inner.iter().position(|c| c == "XADD");
    assert!(
        xadd.is_some() && zadd.is_some() && xadd < zadd,
        "the lease is created after the change is logged: {calls:#?}"
    );
    assert!(inner.iter().any(|c| c == "HSET"));
    // The lease exists, with its TTL, and the key is on it.
    let leases = format!("{}:leases", store.stream_key().trim_end_matches(":log"));
    let deadline: Option<f64> = redis::cmd("ZSCORE")
        .arg(&leases)
        .arg(lease.0)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(deadline.is_some(), "the lease exists");
    assert!(store.keep_alive_lease(lease).await.unwrap() >= Duration::from_secs(29));
    assert_eq!(store.get("session").await.unwrap(), written);

    record(&mut admin).await;
    store
        .put("plain", Bytes::from("p"), PutOptions::default())
        .await
        .unwrap();
    let calls = recorded(&mut admin).await;
    assert_eq!(calls.len(), 1, "a plain put is one command: {calls:#?}");
    assert_eq!(calls[0].first, put);

    // A standalone grant is still the cheap script of its own.
    let _lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    record(&mut admin).await;
    let _other = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let calls = recorded(&mut admin).await;
    let grant = sha(include_str!("../scripts/lease_grant.lua"));
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].first, grant);
    assert_eq!(calls[0].inner[..3], ["TIME", "ZADD", "HSET"]);
}

/// A TTL put whose condition fails creates nothing: no lease, no write, one command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ttl_put_leaves_no_lease() {
    let server = RedisServer::start().unwrap();
    let store = connect(server.url()).await;
    let mut admin = admin(&server.url()).await;
    let ttl = PutOptions::with_ttl(Duration::from_secs(30));
    let first = store
        .put("k", Bytes::from("1"), PutOptions::default())
        .await
        .unwrap();
    let leases = format!("{}:leases", store.stream_key().trim_end_matches(":log"));
    let lease_ttls = format!("{}:lease-ttl", store.stream_key().trim_end_matches(":log"));
    let count = |admin: &mut redis::aio::MultiplexedConnection| {
        let (leases, lease_ttls) = (leases.clone(), lease_ttls.clone());
        let mut admin = admin.clone();
        async move {
            let live: u64 = redis::cmd("ZCARD")
                .arg(&leases)
                .query_async(&mut admin)
                .await
                .unwrap();
            let ttls: u64 = redis::cmd("HLEN")
                .arg(&lease_ttls)
                .query_async(&mut admin)
                .await
                .unwrap();
            (live, ttls)
        }
    };
    // Load the script.
    store
        .put("warm", Bytes::from("up"), ttl.clone())
        .await
        .unwrap();
    let before = count(&mut admin).await;

    record(&mut admin).await;
    let exists = store
        .atomic_put("k", Bytes::from("2"), None, ttl.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(exists, kvstore_core::Error::KeyExists { .. }),
        "{exists}"
    );
    let mut stale = first.clone();
    stale.revision -= 1;
    let modified = store
        .atomic_put("k", Bytes::from("2"), Some(&stale), ttl.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(modified, kvstore_core::Error::KeyModified { .. }),
        "{modified}"
    );
    let missing = store
        .atomic_put("absent", Bytes::from("2"), Some(&first), ttl.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(missing, kvstore_core::Error::KeyNotFound { .. }),
        "{missing}"
    );
    let calls = recorded(&mut admin).await;
    assert_eq!(calls.len(), 3, "one command each, no revoke: {calls:#?}");
    for call in &calls {
        assert!(
            !call
                .inner
                .iter()
                .any(|c| c == "ZADD" || c == "XADD" || c == "HSET"),
            "nothing written: {calls:#?}"
        );
    }
    assert_eq!(count(&mut admin).await, before, "no lease left behind");
    assert_eq!(store.get("k").await.unwrap(), first);

    // A successful one does create its lease.
    let written = store
        .atomic_put("k", Bytes::from("3"), Some(&first), ttl)
        .await
        .unwrap();
    assert!(written.lease.is_some());
    assert_eq!(count(&mut admin).await, (before.0 + 1, before.1 + 1));
}

/// With leases alive and none due, a write's lease expiry is one `EXISTS`, without the
/// clock; a grant due sooner than that key's expiry lowers it to its own deadline, so
/// the lease is still expired on time (the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_due_a_write_checks_expiry_with_one_exists() {
    let server = RedisServer::start().unwrap();
    let store = connect(server.url()).await;
    let mut admin = admin(&server.url()).await;
    let _lease = store.grant_lease(Duration::from_secs(600)).await.unwrap();
    // Load the put script first.
    store
        .put("k", Bytes::from("warm"), PutOptions::default())
        .await
        .unwrap();
    let put = sha(&write_script(include_str!("../scripts/put.lua")));
    let next = format!("{}:lease-next", store.stream_key().trim_end_matches(":log"));
    // Until it is found, the key may have just expired (every 250 ms at most): then the
    // write looks with the clock and sets it again. Bounded: it lives up to 250 ms.
    let mut found = false;
    for i in 0..100 {
        record(&mut admin).await;
        store
            .put("k", Bytes::from(i.to_string()), PutOptions::default())
            .await
            .unwrap();
        let calls = recorded(&mut admin).await;
        assert_eq!(calls.len(), 1, "{calls:#?}");
        assert_eq!(calls[0].first, put);
        assert_eq!(calls[0].inner[0], "EXISTS");
        if calls[0].inner[1] == "HMGET" {
            assert!(!calls[0].inner.iter().any(|c| c == "TIME"), "{calls:#?}");
            found = true;
            break;
        }
    }
    assert!(found, "a put ran without looking at the clock");

    // A lease due sooner lowers the key's expiry to its own deadline.
    let _soon = store.grant_lease(Duration::from_millis(100)).await.unwrap();
    let left: i64 = redis::cmd("PTTL")
        .arg(&next)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        left < 100,
        "{next} expires within the new lease's TTL: {left} ms"
    );
}

/// Writes expire due leases before they read anything, now with one look at the
/// earliest deadline: a lease that is due is expired (its key deleted at a revision of
/// its own, before the write), one that is not is left alone, and with nothing due a
/// write costs exactly its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_expire_exactly_the_due_leases() {
    let server = RedisServer::start().unwrap();
    let store: Arc<dyn Store> = Arc::new(connect(server.url()).await);
    let long = store
        .put(
            "long",
            Bytes::from("l"),
            PutOptions::with_ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    // With a lease alive and none due, a write moves the revision by one: no expiry.
    let first = store
        .put("x", Bytes::from("1"), PutOptions::default())
        .await
        .unwrap();
    let second = store
        .put("x", Bytes::from("2"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        second.revision,
        first.revision + 1,
        "nothing due, nothing expired"
    );

    let short = store
        .put(
            "short",
            Bytes::from("s"),
            PutOptions::with_ttl(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let mut events = store
        .watch_prefix_events("", WatchFrom::After(short.revision))
        .await
        .unwrap();
    let_server_time_pass(&store, Duration::from_millis(300)).await;
    // `short` is due: a create-only write of it succeeds, after its expiry.
    let recreated = store
        .atomic_put("short", Bytes::from("again"), None, PutOptions::default())
        .await
        .unwrap();
    assert!(recreated.create_revision > short.revision);
    let mut expired_at = None;
    while expired_at.is_none() {
        if let WatchEvent::Delete { key, revision } = next_item(&mut events, "the expiry").await
            && key == "short"
        {
            expired_at = Some(revision);
        }
    }
    assert!(
        expired_at < Some(recreated.revision),
        "the expiry comes before the write that found it due"
    );
    // The lease that is not due is untouched.
    assert_eq!(store.get("long").await.unwrap(), long);
}

/// The put script refuses to create a TTL put's lease under an id in use (the client
/// then draws another): it answers `taken` before writing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_put_on_a_taken_id_writes_nothing() {
    let server = RedisServer::start().unwrap();
    let store = connect(server.url()).await;
    let mut admin = admin(&server.url()).await;
    let held = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let namespace = store.stream_key().trim_end_matches(":log").to_owned();
    let reply: redis::Value =
        redis::Script::new(&prelude_script(include_str!("../scripts/put.lua")))
            .key(format!("{namespace}:rev"))
            .arg("0123456789abcdef")
            .arg(1000)
            .arg("kv")
            .arg("k")
            .arg("v")
            .arg("always")
            .arg("")
            .arg(held.id().0)
            .arg(5000)
            .invoke_async(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        reply,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"taken".to_vec()),
            redis::Value::Int(0)
        ])
    );
    assert!(!store.exists("k").await.unwrap());
    let ttl: Option<String> = redis::cmd("HGET")
        .arg(format!("{namespace}:lease-ttl"))
        .arg(held.id().0)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(ttl.as_deref(), Some("30000"), "the held lease is untouched");
}
