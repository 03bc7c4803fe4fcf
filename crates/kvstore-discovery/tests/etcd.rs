//! Discovery on a real etcd started by the test support.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kvstore_core::{Result, Store};
use kvstore_discovery::{Discovery, DiscoveryOptions, Health, Instance, InstanceSet, StaleError};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testkit::server::{EtcdServer, shared_etcd};
use kvstore_testsuite::{Harness, WAIT};

struct EtcdHarness;

#[async_trait]
impl Harness for EtcdHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        let mut config = EtcdConfig::new([shared_etcd().address()]);
        config.namespace = namespace.to_owned();
        Ok(Arc::new(EtcdStore::connect(config).await?))
    }

    /// The discovery scenarios never compact; the resync diff is tested on memory.
    async fn compact(&self, _namespace: &str) -> Result<()> {
        Err(kvstore_core::Error::Unsupported {
            operation: "compact",
            backend: "etcd",
        })
    }
}

// etcd checks lease expiry about every 500 ms, and a watch event takes a moment more.
discovery_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = EtcdHarness,
    slack = Duration::from_secs(2),
}

/// A consumer whose registry went away gets an error from `watch`, within the store's
/// request timeout, instead of waiting forever (docs/CONTRACT.md §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fails_instead_of_hanging_when_etcd_is_gone() {
    let mut server = EtcdServer::start().unwrap();
    let mut config = EtcdConfig::new([server.address()]);
    config.request_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
    server.kill();
    let discovery = kvstore_discovery::Discovery::new(store);
    let watched = tokio::time::timeout(WAIT, discovery.watch("api")).await;
    let error = watched
        .expect("Discovery::watch answers within the request timeout")
        .expect_err("the registry is gone");
    assert!(error.is_retryable(), "{error}");
}

/// Write the record of instance `id` of `api` directly, retrying while etcd restarts.
async fn put_record(store: &Arc<dyn Store>, id: &str, port: u16) {
    let record = Instance::new("api", id, format!("127.0.0.1:{port}"))
        .to_json()
        .unwrap();
    let record = String::from_utf8(record).unwrap();
    kvstore_testsuite::put_retrying(store, &format!("services/api/{id}"), &record).await;
}

fn ids(set: &InstanceSet) -> Vec<String> {
    set.instances().iter().map(|i| i.id.clone()).collect()
}

/// Read the set's stream until `done` holds for it.
async fn until(set: &mut InstanceSet, what: &str, done: impl Fn(&InstanceSet) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(set) {
        let item = tokio::time::timeout_at(deadline, set.next()).await;
        let item = item.unwrap_or_else(|_| panic!("{what}: still {:?}", set.health()));
        assert!(item.is_some(), "{what}: the set stopped");
    }
}

/// When etcd stops answering, a set says so (its stream yields the error once, its
/// health says since when) and keeps serving what it had; a consumer that starts
/// meanwhile, with a cache directory, starts from its last snapshot; both catch up when
/// etcd returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_go_stale_while_etcd_is_down_and_a_cached_consumer_starts_anyway() {
    let mut server = EtcdServer::start().unwrap();
    let mut config = EtcdConfig::new([server.address()]);
    config.request_timeout = Duration::from_secs(2);
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
    put_record(&store, "a", 9001).await;
    put_record(&store, "b", 9002).await;
    let cache = tempfile::tempdir().unwrap();
    let mut options = DiscoveryOptions::default();
    options.cache_dir = Some(cache.path().to_owned());
    options.probe_interval = Duration::from_millis(200);
    let mut live = Discovery::with_options(store.clone(), options.clone())
        .unwrap()
        .watch("api")
        .await
        .unwrap();
    wait_for_file(&cache.path().join("api.json")).await;

    server.kill();
    let stale = tokio::time::timeout(WAIT, live.next())
        .await
        .expect("the set reports that etcd stopped answering")
        .expect("the set goes on");
    assert!(matches!(stale, Err(StaleError::Registry(_))), "{stale:?}");
    assert!(matches!(live.health(), Health::Stale { .. }));
    assert_eq!(ids(&live), ["a", "b"]);

    // A consumer starting now (a fresh Discovery, as a restarted process has).
    let mut cached = tokio::time::timeout(
        WAIT,
        Discovery::with_options(store.clone(), options)
            .unwrap()
            .watch("api"),
    )
    .await
    .expect("watch answers within the store's timeouts")
    .expect("the cached snapshot");
    assert_eq!(ids(&cached), ["a", "b"]);
    assert!(matches!(
        cached.health(),
        Health::Stale {
            error: StaleError::Cached { .. },
            ..
        }
    ));

    server.restart().unwrap();
    put_record(&store, "c", 9003).await;
    for set in [&mut live, &mut cached] {
        until(set, "etcd is back", |set| {
            set.health().is_synced() && ids(set) == ["a", "b", "c"]
        })
        .await;
    }
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
