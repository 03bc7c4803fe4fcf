//! Redis behind Sentinel (`redis+sentinel://`): the store follows a failover, and writes
//! acknowledged with `wait_replicas` survive it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kvstore_core::{KvPair, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::redis_topology::RedisSentinelSet;
use kvstore_testsuite::{WAIT, next_item, put_retrying, unique_namespace};

fn apply(state: &mut BTreeMap<String, KvPair>, event: WatchEvent) {
    match event {
        WatchEvent::Snapshot(s) | WatchEvent::Resync(s) => {
            *state = s.pairs.into_iter().map(|p| (p.key.clone(), p)).collect();
        }
        WatchEvent::Put(pair) => {
            state.insert(pair.key.clone(), pair);
        }
        WatchEvent::Delete { key, .. } => {
            state.remove(&key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_store_serves_and_keeps_every_acknowledged_write() {
    let mut set = RedisSentinelSet::start().unwrap();
    let url = format!(
        "{}?namespace={}&wait_replicas=1&wait_timeout=1000",
        set.url(),
        unique_namespace()
    );
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(RedisConfig::from_url(&url).unwrap())
            .await
            .unwrap(),
    );
    let watcher = RedisStore::connect(RedisConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let mut events = watcher
        .watch_prefix_events("orders", WatchFrom::Snapshot)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    apply(&mut seen, next_item(&mut events, "snapshot").await);

    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged.push(
            store
                .put(
                    &format!("orders/{i:02}"),
                    Bytes::from("paid"),
                    PutOptions::default(),
                )
                .await
                .unwrap(),
        );
    }

    let old_primary = set.kill_primary().unwrap();
    set.wait_for_failover(WAIT).unwrap();
    // The old primary comes back as a replica of the new one, so writes can again be
    // acknowledged by a replica.
    set.restart(old_primary).unwrap();
    let after = put_retrying(&store, "orders/after", "paid").await;

    let listed = store.list("orders").await.unwrap();
    for pair in &acknowledged {
        assert!(
            listed.iter().any(|p| p == pair),
            "acknowledged write {} was lost in the failover",
            pair.key
        );
    }
    // The watcher resumes or resyncs on the new primary and ends up with every key.
    while !seen.contains_key(&after.key) {
        apply(&mut seen, next_item(&mut events, "after failover").await);
    }
    for pair in &acknowledged {
        assert_eq!(seen.get(&pair.key), Some(pair), "{}", pair.key);
    }
}
