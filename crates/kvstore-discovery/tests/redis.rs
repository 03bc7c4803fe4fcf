//! Discovery on a real redis-server started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kvstore_core::{LeaseId, Result, Store};
use kvstore_discovery::{
    Discovery, DiscoveryOptions, Health, Instance, InstanceChange, InstanceSet, Registrar,
    RegistrationStatus, StaleError,
};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::{RedisServer, shared_redis};
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
    config.request_timeout = Duration::from_secs(2);
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
    config.request_timeout = Duration::from_secs(2);
    Arc::new(RedisStore::connect(config).await.unwrap())
}

/// Read the set's stream until `done` holds for it, keeping every change seen.
async fn until(
    set: &mut InstanceSet,
    seen: &mut Vec<InstanceChange>,
    what: &str,
    done: impl Fn(&InstanceSet) -> bool,
) {
    drive(set, seen, what, done, |_, _| {}).await;
}

/// Read the set's stream until `done` holds for it, keeping every change seen and
/// running `check` on the set and the changes so far after each item.
async fn drive(
    set: &mut InstanceSet,
    seen: &mut Vec<InstanceChange>,
    what: &str,
    done: impl Fn(&InstanceSet) -> bool,
    check: impl Fn(&InstanceSet, &[InstanceChange]),
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(set) {
        let item = tokio::time::timeout_at(deadline, set.next()).await;
        let item =
            item.unwrap_or_else(|_| panic!("{what}: still {:?} {:?}", ids(set), set.health()));
        match item {
            Some(Ok(changes)) => seen.extend(changes),
            Some(Err(_stale)) => {}
            None => panic!("{what}: the set stopped"),
        }
        check(set, seen);
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

/// Wait until the registration is `Registered` on a lease other than `old`, at the
/// latest at `deadline`; panics naming `what` otherwise.
async fn registered_again(
    registration: &kvstore_discovery::Registration,
    old: LeaseId,
    deadline: tokio::time::Instant,
    what: &str,
) {
    let mut status = registration.status_changes();
    let again = |s: &RegistrationStatus| matches!(s, RegistrationStatus::Registered { lease, .. } if *lease != old);
    tokio::time::timeout_at(deadline, status.wait_for(again))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: not registered again in time: {:?}",
                registration.status()
            )
        })
        .expect("the registration task ended");
}

fn lease_of(registration: &kvstore_discovery::Registration) -> LeaseId {
    match registration.status() {
        RegistrationStatus::Registered { lease, .. } => lease,
        other => panic!("not registered: {other:?}"),
    }
}

/// Drive `set` until `done` holds, checking after every batch that the set is not
/// empty, and keeping every change seen.
async fn follow_never_empty(
    set: &mut InstanceSet,
    seen: &mut Vec<InstanceChange>,
    what: &str,
    done: impl Fn(&InstanceSet) -> bool,
) {
    drive(set, seen, what, done, |set, seen| {
        assert!(
            !set.instances().is_empty(),
            "{what}: the set emptied: {seen:?}"
        );
    })
    .await;
}

/// Redis restarts empty while providers keep heartbeating (production: a Redis without
/// persistence restarted by its orchestrator). Every registration notices within about
/// its keep-alive interval (ttl / 3) and registers again on a new lease; consumers with
/// protection keep serving the known set meanwhile, never empty, and follow the
/// registry again once the providers are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_providers_come_back_promptly_when_redis_restarts_empty() {
    const TTL: Duration = Duration::from_secs(3);
    let mut server = RedisServer::start().unwrap();
    let providers = store_on(&server).await;
    let consumers = store_on(&server).await;
    let registrar = Registrar::new(providers.clone());
    let mut registrations = Vec::new();
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        let instance = Instance::new("api", id, format!("127.0.0.1:{port}"));
        registrations.push(registrar.register(instance, TTL).await.unwrap());
    }
    // One consumer with the defaults (empty-push protection), one that holds every
    // instance until all are back.
    let mut all = DiscoveryOptions::default();
    all.protect_threshold = 1.0;
    let mut default_set = Discovery::new(consumers.clone())
        .watch("api")
        .await
        .unwrap();
    let mut strict_set = Discovery::with_options(consumers.clone(), all)
        .unwrap()
        .watch("api")
        .await
        .unwrap();
    let synced = |set: &InstanceSet| set.health().is_synced() && ids(set) == ["a", "b", "c"];
    let (mut seen_default, mut seen_strict) = (Vec::new(), Vec::new());
    follow_never_empty(&mut default_set, &mut seen_default, "registered", synced).await;
    follow_never_empty(&mut strict_set, &mut seen_strict, "registered", synced).await;
    let before: Vec<LeaseId> = registrations.iter().map(lease_of).collect();

    server.restart().unwrap();
    // A registration learns of the loss at its next keep-alive (ttl / 3) or from the
    // watch of its own record, whichever comes first; reconnecting takes a moment.
    let deadline = tokio::time::Instant::now() + TTL / 3 + Duration::from_secs(2);
    for (registration, old) in registrations.iter().zip(&before) {
        registered_again(registration, *old, deadline, "after the restart").await;
    }
    follow_never_empty(
        &mut default_set,
        &mut seen_default,
        "providers back",
        synced,
    )
    .await;
    follow_never_empty(&mut strict_set, &mut seen_strict, "providers back", synced).await;
    assert!(
        !seen_strict
            .iter()
            .any(|c| matches!(c, InstanceChange::Removed { .. })),
        "{seen_strict:?}"
    );
}

/// Redis is killed, stays down longer than the registrations' TTL (so they lose their
/// leases and retry), and comes back empty: every registration is back within about
/// its keep-alive interval of Redis answering again, not after a long backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_come_back_promptly_after_a_long_redis_outage() {
    const TTL: Duration = Duration::from_secs(2);
    let mut server = RedisServer::start().unwrap();
    let providers = store_on(&server).await;
    let registrar = Registrar::new(providers.clone());
    let registration = registrar
        .register(Instance::new("api", "a", "127.0.0.1:9001"), TTL)
        .await
        .unwrap();
    let old = lease_of(&registration);

    server.kill();
    let mut status = registration.status_changes();
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, RegistrationStatus::Reregistering { .. })),
    )
    .await
    .expect("the registration notices the outage")
    .unwrap();
    // The outage: long enough for the retries to back off to several seconds.
    tokio::time::sleep(Duration::from_secs(12)).await;
    server.restart().unwrap();
    // Reconnecting to the restarted server takes a moment.
    let deadline = tokio::time::Instant::now() + TTL / 3 + Duration::from_secs(3);
    registered_again(&registration, old, deadline, "after the outage").await;
    let consumers = store_on(&server).await;
    let set = Discovery::new(consumers).watch("api").await.unwrap();
    assert_eq!(ids(&set), ["a"]);
}

/// Closing the store a registration runs on ends it: the close revokes its lease, the
/// registration stops instead of registering again on the closing store, and once
/// `close()` returns no record is left for consumers (here with 300 other leases of the
/// store, so the close takes a while to revoke them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_store_leaves_no_registration_behind() {
    const TTL: Duration = Duration::from_secs(30);
    let namespace = kvstore_testsuite::unique_namespace();
    let open = |namespace: String| async move {
        let mut config = RedisConfig::new(shared_redis().url());
        config.namespace = namespace;
        Arc::new(RedisStore::connect(config).await.unwrap()) as Arc<dyn Store>
    };
    let store = open(namespace.clone()).await;
    let observer = open(namespace).await;
    let registration = Registrar::new(store.clone())
        .register(Instance::new("api", "a", "127.0.0.1:1"), TTL)
        .await
        .unwrap();
    let mut others = Vec::new();
    for _ in 0..300 {
        others.push(store.grant_lease(TTL).await.unwrap());
    }
    let mut status = registration.status_changes();
    store.close().await.unwrap();
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, RegistrationStatus::Stopped)),
    )
    .await
    .expect("the registration stops when its store is closed")
    .unwrap();
    assert!(!observer.exists("services/api/a").await.unwrap());
    drop(others);
}
