//! Discovery on a real redis-server started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kvstore_core::{Result, Store};
use kvstore_discovery::{
    Discovery, DiscoveryOptions, Health, Instance, InstanceChange, InstanceSet, Registrar,
    StaleError,
};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testsuite::server::{RedisServer, shared_redis};
use kvstore_testsuite::{Harness, WAIT};

struct RedisHarness;

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = RedisConfig::new(shared_redis().url());
        config.namespace = namespace.to_owned();
        Ok(Arc::new(RedisStore::connect(config).await?))
    }

    /// The discovery scenarios never compact; the resync diff is tested on memory.
    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "redis",
        })
    }
}

// The reaper runs every 250 ms, and a watch event takes a moment more.
discovery_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = RedisHarness,
    slack = Duration::from_secs(1),
}

/// A consumer whose registry went away gets an error from `watch`, within the store's
/// timeouts, instead of waiting forever (docs/CONTRACT.md §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_instead_of_hanging_when_redis_is_gone() {
    let mut server = RedisServer::start().unwrap();
    let mut config = RedisConfig::new(server.url());
    config.connect_timeout = Duration::from_secs(1);
    config.response_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await.unwrap());
    server.kill();
    let discovery = kvstore_discovery::Discovery::new(store);
    let watched = tokio::time::timeout(WAIT, discovery.watch("api")).await;
    let error = watched
        .expect("Discovery::watch answers within the store's timeouts")
        .expect_err("the registry is gone");
    assert!(error.is_retryable(), "{error}");
}

/// Write the record of instance `id` of `api` directly, as a registry holds it.
async fn put_record(store: &Arc<dyn Store>, id: &str, port: u16) {
    let record = Instance::new("api", id, format!("127.0.0.1:{port}"))
        .to_json()
        .unwrap();
    let record = String::from_utf8(record).unwrap();
    kvstore_testsuite::put_retrying(store, &format!("services/api/{id}"), &record).await;
}

/// A store on its own redis-server with short timeouts, for fault tests.
async fn store_on(server: &RedisServer) -> Arc<dyn Store> {
    let mut config = RedisConfig::new(server.url());
    config.connect_timeout = Duration::from_secs(1);
    config.response_timeout = Duration::from_secs(2);
    Arc::new(RedisStore::connect(config).await.unwrap())
}

/// Read the set's stream until `done` holds for it, keeping every change seen.
async fn until(
    set: &mut InstanceSet,
    seen: &mut Vec<InstanceChange>,
    what: &str,
    done: impl Fn(&InstanceSet) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(set) {
        let item = tokio::time::timeout_at(deadline, set.next()).await;
        let item = item.unwrap_or_else(|_| panic!("{what}: still {:?}", set.health()));
        match item {
            Some(Ok(changes)) => seen.extend(changes),
            Some(Err(_stale)) => {}
            None => panic!("{what}: the set stopped"),
        }
    }
}

fn ids(set: &InstanceSet) -> Vec<String> {
    set.instances().iter().map(|i| i.id.clone()).collect()
}

fn protected(set: &InstanceSet) -> bool {
    matches!(
        set.health(),
        Health::Stale {
            error: StaleError::Protected { .. },
            ..
        }
    )
}

/// Redis restarted without persistence comes back empty, and every watcher resyncs to
/// nothing. Protection keeps serving the known instances, stale, and lets the set
/// follow the registry again once the providers are back: no consumer ever saw an
/// instance removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_keeps_the_set_while_redis_restarts_empty() {
    let mut server = RedisServer::start().unwrap();
    let store = store_on(&server).await;
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        put_record(&store, id, port).await;
    }
    let mut options = DiscoveryOptions::default();
    options.protect_threshold = 1.0;
    let mut set = Discovery::with_options(store.clone(), options)
        .unwrap()
        .watch("api")
        .await
        .unwrap();
    assert_eq!(ids(&set), ["a", "b", "c"]);

    server.restart().unwrap();
    // Another service registers: the registry is in use again, and empty for `api`.
    kvstore_testsuite::put_retrying(&store, "services/other/x", "{}").await;
    let mut seen = Vec::new();
    until(
        &mut set,
        &mut seen,
        "the resync to an empty registry",
        protected,
    )
    .await;
    assert_eq!(ids(&set), ["a", "b", "c"]);

    // The providers come back (registrations re-register after losing their leases).
    let registrar = Registrar::new(store.clone());
    let mut registrations = Vec::new();
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        let instance = Instance::new("api", id, format!("127.0.0.1:{port}"));
        registrations.push(
            registrar
                .register(instance, Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }
    until(&mut set, &mut seen, "all providers back", |set| {
        set.health().is_synced()
    })
    .await;
    assert_eq!(ids(&set), ["a", "b", "c"]);
    assert!(
        !seen
            .iter()
            .any(|c| matches!(c, InstanceChange::Removed { .. })),
        "{seen:?}"
    );
}

/// With a cache directory, a consumer starts while Redis is down from its last
/// snapshot, marked stale; when Redis returns empty, empty-push protection keeps the
/// cached set until an instance registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_starts_from_the_cache_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let store = store_on(&server).await;
    put_record(&store, "a", 9001).await;
    put_record(&store, "b", 9002).await;
    let cache = tempfile::tempdir().unwrap();
    let mut options = DiscoveryOptions::default();
    options.cache_dir = Some(cache.path().to_owned());
    {
        let _set = Discovery::with_options(store.clone(), options.clone())
            .unwrap()
            .watch("api")
            .await
            .unwrap();
        wait_for_file(&cache.path().join("api.json")).await;
    }

    server.kill();
    let mut set = tokio::time::timeout(
        WAIT,
        Discovery::with_options(store.clone(), options.clone())
            .unwrap()
            .watch("api"),
    )
    .await
    .expect("watch answers within the store's timeouts")
    .expect("the cached snapshot");
    assert_eq!(ids(&set), ["a", "b"]);
    assert!(matches!(
        set.health(),
        Health::Stale {
            error: StaleError::Cached { .. },
            ..
        }
    ));

    server.restart().unwrap();
    let mut seen = Vec::new();
    until(&mut set, &mut seen, "an empty registry", protected).await;
    assert_eq!(ids(&set), ["a", "b"]);
    put_record(&store, "c", 9003).await;
    until(&mut set, &mut seen, "an instance registers", |set| {
        set.health().is_synced()
    })
    .await;
    assert_eq!(ids(&set), ["c"]);
}

/// Wait (bounded) until the follower has written its cache file.
async fn wait_for_file(path: &std::path::Path) {
    const POLL: Duration = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        tokio::time::sleep(POLL).await;
    }
}
