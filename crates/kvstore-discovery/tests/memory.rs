//! Discovery on the memory store, on tokio's paused clock.

mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::{PutOptions, Result, Store};
use kvstore_discovery::{Discovery, Instance, InstanceChange};
use kvstore_memory::{MemoryConfig, MemoryStore};
use kvstore_testsuite::Harness;

#[derive(Default)]
struct MemoryHarness {
    store: MemoryStore,
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(self.store.with_namespace(namespace)))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        self.store.compact()
    }
}

discovery_tests! {
    #[tokio::test(start_paused = true)]
    harness = MemoryHarness::default(),
    slack = Duration::ZERO,
}

/// When the watch loses history (`Resync`), the consumer gets exactly the diff between
/// what it had and the new state.
#[tokio::test(start_paused = true)]
async fn resync_becomes_a_diff_against_what_the_consumer_had() {
    // A one-change history ring: any burst of writes overflows it.
    let store = MemoryStore::with_config({
        let mut config = MemoryConfig::default();
        config.history_capacity = 1;
        config
    });
    let store: Arc<dyn Store> = Arc::new(store);
    let record = |id: &str, port: u16| {
        Bytes::from(
            Instance::new("api", id, format!("127.0.0.1:{port}"))
                .to_json()
                .unwrap(),
        )
    };
    let put = |id: &'static str, port| {
        let store = store.clone();
        async move {
            store
                .put(
                    &format!("services/api/{id}"),
                    record(id, port),
                    PutOptions::default(),
                )
                .await
                .unwrap()
        }
    };
    put("stays", 1).await;
    put("changes", 2).await;
    put("leaves", 3).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    assert_eq!(set.instances().len(), 3);

    // On this single-threaded runtime the follower task cannot run until this test
    // awaits something that is not ready, so these writes overflow its history.
    let updated = put("changes", 20).await;
    store.delete("services/api/leaves").await.unwrap();
    let added = put("arrives", 4).await;

    let mut changes = set.next_change().await.unwrap();
    changes.sort_by_key(|c| format!("{c:?}"));
    let summary: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| match c {
            InstanceChange::Added { instance, revision } => {
                assert_eq!(*revision, added.revision);
                ("added", instance.id.as_str())
            }
            InstanceChange::Updated { instance, revision } => {
                assert_eq!(*revision, updated.revision);
                assert_eq!(instance.address, "127.0.0.1:20");
                ("updated", instance.id.as_str())
            }
            InstanceChange::Removed { instance, .. } => ("removed", instance.id.as_str()),
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("added", "arrives"),
            ("removed", "leaves"),
            ("updated", "changes")
        ]
    );
    let ids: Vec<String> = set.instances().iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, ["arrives", "changes", "stays"]);
}

/// tower's power-of-two-choices balancer over `into_discover`: calls reach every `Up`
/// instance, and none reach one that drains.
#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn tower_p2c_balances_over_the_up_instances() {
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    use kvstore_discovery::{Registrar, Status};
    use tower::balance::p2c::Balance;
    use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
    use tower::{Service, ServiceExt};

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let registrar = Registrar::new(store.clone());
    let ttl = Duration::from_secs(10);
    let a = registrar
        .register(Instance::new("api", "a", "127.0.0.1:9001"), ttl)
        .await
        .unwrap();
    let _b = registrar
        .register(Instance::new("api", "b", "127.0.0.1:9002"), ttl)
        .await
        .unwrap();
    let set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let reader = set.reader();
    let discover = set.into_discover(|instance| {
        let id = instance.id.clone();
        Some(tower::service_fn(move |()| {
            let id = id.clone();
            async move { Ok::<_, Infallible>(id) }
        }))
    });
    let mut balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));
    let mut served = BTreeSet::new();
    for _ in 0..64 {
        served.insert(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(served, BTreeSet::from(["a".to_owned(), "b".to_owned()]));

    a.drain().await.unwrap();
    let deadline = tokio::time::Instant::now() + kvstore_testsuite::WAIT;
    while reader.instances()[0].status != Status::Draining {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never showed draining"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..32 {
        assert_eq!(balance.ready().await.unwrap().call(()).await.unwrap(), "b");
    }
}
