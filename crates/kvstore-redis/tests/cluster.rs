//! The whole conformance suite on a real three-primary Redis Cluster started by the test
//! support (`redis+cluster://`), with every test's namespace on whichever primary owns
//! its hash tag, so the suite's namespaces spread over all three.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::{PutOptions, Result, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::redis_topology::RedisCluster;
use kvstore_testsuite::Harness;
use kvstore_testsuite::{next_item, unique_namespace};

/// One cluster shared by every test of this binary; killed when it exits.
fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start().unwrap_or_else(|e| panic!("{e}")))
}

fn config(namespace: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(&cluster().url()).expect("a valid cluster URL");
    config.namespace = namespace.to_owned();
    config
}

struct ClusterHarness;

#[async_trait]
impl Harness for ClusterHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(RedisStore::connect(config(namespace)).await?))
    }

    async fn compact(&self, namespace: &str) -> Result<()> {
        let client = redis::cluster::ClusterClient::new(
            cluster()
                .addresses()
                .into_iter()
                .map(|a| format!("redis://{a}")),
        )
        .expect("valid node addresses");
        let mut connection = client
            .get_async_connection()
            .await
            .expect("the cluster answers");
        let store = RedisStore::connect(config(namespace)).await?;
        let _: () = redis::cmd("XTRIM")
            .arg(store.stream_key())
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut connection)
            .await
            .expect("XTRIM succeeds");
        Ok(())
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = ClusterHarness
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_different_primaries_each_write_read_and_watch() {
    let placed = cluster()
        .namespaces_on_distinct_primaries(RedisCluster::PRIMARIES)
        .unwrap();
    let mut primaries: Vec<usize> = placed.iter().map(|(_, node)| *node).collect();
    primaries.sort_unstable();
    primaries.dedup();
    assert_eq!(primaries.len(), RedisCluster::PRIMARIES);
    for (namespace, _) in &placed {
        let store = RedisStore::connect(config(namespace)).await.unwrap();
        let mut events = store
            .watch_prefix_events("jobs", WatchFrom::Snapshot)
            .await
            .unwrap();
        next_item(&mut events, "snapshot").await;
        let written = store
            .put(
                "jobs/a",
                Bytes::from(namespace.clone()),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(store.get("jobs/a").await.unwrap(), written);
        assert_eq!(
            next_item(&mut events, "put").await,
            WatchEvent::Put(written)
        );
    }
    // A namespace the helper did not place works too (any slot, any primary).
    let store = RedisStore::connect(config(&unique_namespace()))
        .await
        .unwrap();
    store
        .put("k", Bytes::from("v"), PutOptions::default())
        .await
        .unwrap();
}

/// The cluster client sends a script again after its connection is reset; a write must
/// still apply once and answer what it did. Create-only puts on keys nobody else writes,
/// while every client connection of the primary is killed every few milliseconds: each
/// either succeeds or fails with an error whose outcome is unknown, never `KeyExists`
/// (which would mean the resend found the first send's write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resent_after_a_connection_reset_apply_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    let namespace = unique_namespace();
    let store = RedisStore::connect(config(&namespace)).await.unwrap();
    let node = cluster().node_for_namespace(&namespace).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = cluster().cli(node, &["CLIENT", "KILL", "TYPE", "normal"]);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut applied, mut unknown, mut wrong) = (0, 0, Vec::new());
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let key = format!("k{n}");
        match store
            .atomic_put(&key, Bytes::from("v"), None, PutOptions::default())
            .await
        {
            Ok(_) => applied += 1,
            Err(e) if e.may_have_applied() => unknown += 1,
            Err(e) => wrong.push((key, e)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = killer.join();
    assert!(
        applied > 100,
        "only {applied} writes applied ({unknown} unknown)"
    );
    assert!(
        wrong.is_empty(),
        "{} of {n} create-only puts answered wrongly, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
}
