//! Discovery behaviours, written once and run on every backend (docs/CONTRACT.md §9).

use std::time::Duration;

use kvstore_discovery::{
    Balancer, Discovery, Instance, InstanceChange, Registrar, RegistrationStatus, RoundRobin,
    Status,
};
use kvstore_testsuite::{Harness, WAIT, fresh_store, next_item};
use tokio::time::Instant;

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, id, format!("127.0.0.1:{port}"))
}

async fn next_change(set: &mut kvstore_discovery::InstanceSet, what: &str) -> Vec<InstanceChange> {
    tokio::time::timeout(WAIT, set.next_change())
        .await
        .unwrap_or_else(|_| panic!("{what}: no change within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the set stopped"))
}

async fn wait_for_status(
    registration: &kvstore_discovery::Registration,
    what: &str,
    done: impl Fn(&RegistrationStatus) -> bool,
) -> RegistrationStatus {
    let mut status = registration.status_changes();
    let reached = tokio::time::timeout(WAIT, status.wait_for(|s| done(s))).await;
    reached
        .unwrap_or_else(|_| panic!("{what}: status is still {:?}", registration.status()))
        .expect("the registration task ended")
        .clone()
}

/// A registered instance is found by resolve, watch and list_services.
pub async fn register_then_discover(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let discovery = Discovery::new(store.clone());
    let mut set = discovery.watch("api").await.unwrap();
    assert!(set.instances().is_empty());
    let mut api = instance("api", "api-1", 9001);
    api.metadata.insert("build".into(), "abc".into());
    let _registration = Registrar::new(store.clone())
        .register(api.clone(), harness.ttl())
        .await
        .unwrap();
    match next_change(&mut set, "registration").await.as_slice() {
        [InstanceChange::Added { instance, revision }] => {
            assert_eq!(instance, &api);
            assert!(*revision > 0);
        }
        other => panic!("expected one addition, got {other:?}"),
    }
    assert_eq!(set.instances(), vec![api.clone()]);
    assert_eq!(discovery.resolve("api").await.unwrap(), vec![api]);
    assert_eq!(discovery.list_services().await.unwrap(), ["api"]);
}

/// A provider that crashes (no deregistration, no heartbeat) is removed within its TTL.
pub async fn crashed_provider_is_removed_within_ttl(harness: &dyn Harness, slack: Duration) {
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let registration = Registrar::new(store.clone())
        .register(instance("api", "doomed", 9001), harness.ttl())
        .await
        .unwrap();
    next_change(&mut set, "registration").await;
    let crashed_at = Instant::now();
    registration.abandon();
    match next_change(&mut set, "crash").await.as_slice() {
        [InstanceChange::Removed { instance, .. }] => assert_eq!(instance.id, "doomed"),
        other => panic!("expected a removal, got {other:?}"),
    }
    let took = crashed_at.elapsed();
    assert!(took <= harness.ttl() + slack, "removed after {took:?}");
    assert!(set.instances().is_empty());
}

/// A record deleted by someone else is written back by its registration.
pub async fn externally_deleted_record_is_put_back(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    let registration = Registrar::new(store.clone())
        .register(instance("api", "sturdy", 9001), harness.ttl())
        .await
        .unwrap();
    let other = harness.open(&namespace).await.unwrap();
    let mut record = other.watch("services/api/sturdy").await.unwrap();
    assert!(next_item(&mut record, "record").await.is_some());
    other.delete("services/api/sturdy").await.unwrap();
    assert!(next_item(&mut record, "external delete").await.is_none());
    let back = next_item(&mut record, "written back")
        .await
        .expect("the record is back");
    assert_eq!(Instance::from_json(&back.value).unwrap().id, "sturdy");
    assert!(matches!(
        registration.status(),
        RegistrationStatus::Registered { .. }
    ));
}

/// A lease revoked behind the registration's back is replaced by a new registration.
pub async fn revoked_lease_is_registered_again(harness: &dyn Harness) {
    let (namespace, store) = fresh_store(harness).await;
    let registration = Registrar::new(store.clone())
        .register(instance("api", "phoenix", 9001), harness.ttl())
        .await
        .unwrap();
    let RegistrationStatus::Registered { lease: first, .. } = registration.status() else {
        panic!("registered at first");
    };
    let other = harness.open(&namespace).await.unwrap();
    other.revoke_lease(first).await.unwrap();
    let status = wait_for_status(
        &registration,
        "re-registration",
        |s| matches!(s, RegistrationStatus::Registered { lease, .. } if *lease != first),
    )
    .await;
    let RegistrationStatus::Registered { lease: second, .. } = status else {
        unreachable!()
    };
    let record = other.get("services/api/phoenix").await.unwrap();
    assert_eq!(record.lease, Some(second));
}

/// Draining keeps the instance listed but balancers stop picking it.
pub async fn drain_marks_the_instance_draining(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let registrar = Registrar::new(store.clone());
    let draining = registrar
        .register(instance("api", "a", 9001), harness.ttl())
        .await
        .unwrap();
    let _staying = registrar
        .register(instance("api", "b", 9002), harness.ttl())
        .await
        .unwrap();
    // Consume both additions, so the drain arrives as an update of a known instance.
    let mut added = std::collections::BTreeSet::new();
    while added.len() < 2 {
        for change in next_change(&mut set, "registrations").await {
            if let InstanceChange::Added { instance, .. } = change {
                added.insert(instance.id);
            }
        }
    }
    draining.drain().await.unwrap();
    let changes = next_change(&mut set, "drain").await;
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, InstanceChange::Updated { instance, .. }
            if instance.id == "a" && instance.status == Status::Draining)),
        "{changes:?}"
    );
    let balancer = RoundRobin::default();
    let instances = set.instances();
    for _ in 0..4 {
        assert_eq!(balancer.pick(&instances).unwrap().id, "b");
    }
}

/// Deregistering removes the record at once; dropping a registration does too.
pub async fn deregister_and_drop_remove_the_record(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let registrar = Registrar::new(store.clone());
    let explicit = registrar
        .register(instance("api", "x", 9001), harness.ttl())
        .await
        .unwrap();
    let dropped = registrar
        .register(instance("api", "y", 9002), harness.ttl())
        .await
        .unwrap();
    while set.instances().len() < 2 {
        next_change(&mut set, "registrations").await;
    }
    explicit.deregister().await.unwrap();
    assert_eq!(
        store.list("services/api").await.unwrap().len(),
        1,
        "gone at once"
    );
    drop(dropped);
    while !set.instances().is_empty() {
        next_change(&mut set, "drop deregisters").await;
    }
}

/// Services do not see each other's instances.
pub async fn services_are_isolated(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let discovery = Discovery::new(store.clone());
    let mut a = discovery.watch("alpha").await.unwrap();
    let registrar = Registrar::new(store.clone());
    let mut registrations = Vec::new();
    for (service, id) in [
        ("beta", "b1"),
        ("beta", "b2"),
        ("alphabet", "x"),
        ("alpha", "a1"),
    ] {
        registrations.push(
            registrar
                .register(instance(service, id, 9000), harness.ttl())
                .await
                .unwrap(),
        );
    }
    match next_change(&mut a, "alpha").await.as_slice() {
        [InstanceChange::Added { instance, .. }] => assert_eq!(instance.id, "a1"),
        other => panic!("alpha saw {other:?}"),
    }
    assert_eq!(discovery.resolve("beta").await.unwrap().len(), 2);
    assert_eq!(
        discovery.list_services().await.unwrap(),
        ["alpha", "alphabet", "beta"]
    );
}

/// A malformed record written by someone else is skipped, not fatal.
pub async fn malformed_records_are_skipped(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    store
        .put(
            "services/api/garbage",
            bytes::Bytes::from("{not json"),
            Default::default(),
        )
        .await
        .unwrap();
    let set = Discovery::new(store.clone()).watch("api").await.unwrap();
    assert!(set.instances().is_empty());
    let _ok = Registrar::new(store.clone())
        .register(instance("api", "fine", 9001), harness.ttl())
        .await
        .unwrap();
    assert_eq!(
        Discovery::new(store.clone())
            .resolve("api")
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Runs every scenario as a test of the calling crate; `slack` is how far past the TTL a
/// crashed provider may still be listed (the backend's expiry granularity).
#[macro_export]
macro_rules! discovery_tests {
    ($(#[$attr:meta])* harness = $harness:expr, slack = $slack:expr $(,)?) => {
        discovery_tests!(@each [$(#[$attr])*] $harness;
            register_then_discover,
            externally_deleted_record_is_put_back,
            revoked_lease_is_registered_again,
            drain_marks_the_instance_draining,
            deregister_and_drop_remove_the_record,
            services_are_isolated,
            malformed_records_are_skipped,
        );
        $(#[$attr])*
        async fn crashed_provider_is_removed_within_ttl() {
            let harness = $harness;
            scenarios::crashed_provider_is_removed_within_ttl(&harness, $slack).await;
        }
    };
    (@each $attrs:tt $harness:expr; $($name:ident),* $(,)?) => {
        $( discovery_tests!(@one $attrs $name, $harness); )*
    };
    (@one [$($attr:tt)*] $name:ident, $harness:expr) => {
        $($attr)*
        async fn $name() {
            let harness = $harness;
            scenarios::$name(&harness).await;
        }
    };
}
