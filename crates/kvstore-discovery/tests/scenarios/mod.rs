//! Discovery behaviours, written once and run on every backend (docs/CONTRACT.md §9).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore_core::{PutOptions, Store, WatchFrom};
use kvstore_discovery::{
    Balancer, Discovery, DiscoveryOptions, Health, Instance, InstanceChange, InstanceSet,
    Registrar, RegistrationStatus, RoundRobin, StaleError, Status,
};
use kvstore_testsuite::{Harness, WAIT, fresh_store, next_item};
use tokio::time::Instant;

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, id, format!("127.0.0.1:{port}"))
}

fn owned(instances: &[Arc<Instance>]) -> Vec<Instance> {
    instances.iter().map(|i| Instance::clone(i)).collect()
}

fn ids(instances: &[Arc<Instance>]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
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
pub(crate) async fn register_then_discover(harness: &dyn Harness) {
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
            assert_eq!(**instance, api);
            assert!(*revision > 0);
        }
        other => panic!("expected one addition, got {other:?}"),
    }
    assert_eq!(owned(&set.instances()), vec![api.clone()]);
    assert_eq!(discovery.resolve("api").await.unwrap(), vec![api]);
    assert_eq!(discovery.list_services().await.unwrap(), ["api"]);
}

/// A provider that crashes (no deregistration, no heartbeat) is removed within its TTL.
pub(crate) async fn crashed_provider_is_removed_within_ttl(harness: &dyn Harness, slack: Duration) {
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
pub(crate) async fn externally_deleted_record_is_put_back(harness: &dyn Harness) {
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
pub(crate) async fn revoked_lease_is_registered_again(harness: &dyn Harness) {
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
pub(crate) async fn drain_marks_the_instance_draining(harness: &dyn Harness) {
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
                added.insert(instance.id.clone());
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

/// A graceful stop shows the instance `Draining` for the whole grace, then removes it.
pub(crate) async fn drain_and_deregister_drains_for_the_grace_then_removes(harness: &dyn Harness) {
    const GRACE: Duration = Duration::from_millis(500);
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let registration = Registrar::new(store.clone())
        .register(instance("api", "leaving", 9001), harness.ttl())
        .await
        .unwrap();
    next_change(&mut set, "registration").await;
    let started = tokio::time::Instant::now();
    let stop = tokio::spawn(registration.drain_and_deregister(GRACE));
    // Updates (the drain, and any rewrite of the drained record) until the removal:
    // every one of them shows it draining.
    let mut drained = false;
    loop {
        let changes = next_change(&mut set, "the drain, then the deregistration").await;
        if changes
            .iter()
            .any(|c| matches!(c, InstanceChange::Removed { .. }))
        {
            break;
        }
        for change in &changes {
            assert_eq!(change.instance().status, Status::Draining, "{changes:?}");
            drained = true;
        }
    }
    assert!(drained, "removed without being drained first");
    assert!(
        started.elapsed() >= GRACE,
        "removed {:?} after the drain began, before the {GRACE:?} grace",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("drain_and_deregister returns")
        .unwrap()
        .unwrap();
}

/// Deregistering removes the record at once; dropping a registration does too.
pub(crate) async fn deregister_and_drop_remove_the_record(harness: &dyn Harness) {
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
pub(crate) async fn services_are_isolated(harness: &dyn Harness) {
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
pub(crate) async fn malformed_records_are_skipped(harness: &dyn Harness) {
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

/// Write the record of instance `id` of `api` directly (no lease, no registration), as
/// a registry restored from a backup would hold it.
async fn put_record(store: &Arc<dyn Store>, id: &str, port: u16) -> u64 {
    let record = instance("api", id, port).to_json().unwrap();
    store
        .put(
            &format!("services/api/{id}"),
            Bytes::from(record),
            PutOptions::default(),
        )
        .await
        .unwrap()
        .revision
}

/// The next item of the set's stream: changes, or an error saying it turned stale.
async fn next_event(set: &mut InstanceSet, what: &str) -> Result<Vec<InstanceChange>, StaleError> {
    tokio::time::timeout(WAIT, set.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the set stopped"))
}

/// Read the set's stream until `done` holds for the set. The stream reports changes
/// against what this consumer last saw, so a change it never saw and that was undone
/// yields no item: `done` is checked again at least every [`RECHECK`] too.
async fn until(set: &mut InstanceSet, what: &str, done: impl Fn(&InstanceSet) -> bool) {
    /// How often `done` is checked while no item arrives.
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);
    let deadline = Instant::now() + WAIT;
    while !done(set) {
        assert!(
            Instant::now() < deadline,
            "{what}: still {:?} ({:?})",
            ids(&set.instances()),
            set.health()
        );
        if let Ok(item) = tokio::time::timeout(RECHECK, set.next()).await {
            assert!(item.is_some(), "{what}: the set stopped");
        }
    }
}

/// Two registrations of one id (a restarted pod reusing its id while the old process
/// still runs): the newer wins, the older reports `Replaced` and stops writing, so the
/// record settles after a handful of writes instead of being rewritten in a loop.
pub(crate) async fn two_registrations_of_one_id_settle_with_the_newest(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let start = store
        .put("marker", Bytes::from("start"), PutOptions::default())
        .await
        .unwrap()
        .revision;
    let registrar = Registrar::new(store.clone());
    let older = registrar
        .register(instance("api", "twin", 9001), harness.ttl())
        .await
        .unwrap();
    let newer = registrar
        .register(instance("api", "twin", 9002), harness.ttl())
        .await
        .unwrap();
    wait_for_status(&older, "the older registration gives way", |s| {
        matches!(s, RegistrationStatus::Replaced { .. })
    })
    .await;
    // Its task has ended: nothing of the older registration writes any more.
    let mut older_status = older.status_changes();
    tokio::time::timeout(WAIT, async {
        while older_status.changed().await.is_ok() {}
    })
    .await
    .expect("the older registration's task ends");
    let RegistrationStatus::Registered {
        lease,
        revision: settled,
    } = newer.status()
    else {
        panic!("the newer registration is registered: {:?}", newer.status());
    };
    let record = store.get("services/api/twin").await.unwrap();
    assert_eq!((record.lease, record.revision), (Some(lease), settled));
    assert_eq!(
        Instance::from_json(&record.value).unwrap().address,
        "127.0.0.1:9002"
    );

    let mut events = store
        .watch_prefix_events("services/api", WatchFrom::After(start))
        .await
        .unwrap();
    let mut writes = 0;
    loop {
        let event = next_item(&mut events, "writes of the record").await;
        writes += 1;
        if event.revision() >= settled {
            break;
        }
    }
    assert!(writes <= 4, "{writes} writes before the record settled");

    // Dropping (or deregistering) the replaced registration leaves the newer record.
    older.deregister().await.unwrap();
    let after = store.get("services/api/twin").await.unwrap();
    assert_eq!(after.revision, settled);
}

/// Every set of one service from one `Discovery` (and its clones) shares one decoded
/// instance set; each still gets every change.
pub(crate) async fn watchers_of_one_service_share_one_decoded_set(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let registrar = Registrar::new(store.clone());
    let _a = registrar
        .register(instance("api", "a", 9001), harness.ttl())
        .await
        .unwrap();
    let discovery = Discovery::new(store.clone());
    let mut first = discovery.watch("api").await.unwrap();
    let mut second = discovery.clone().watch("api").await.unwrap();
    let (seen_first, seen_second) = (first.instances(), second.instances());
    assert_eq!(ids(&seen_first), ["a"]);
    assert!(
        Arc::ptr_eq(&seen_first[0], &seen_second[0]),
        "one decoded instance, shared"
    );
    let _b = registrar
        .register(instance("api", "b", 9002), harness.ttl())
        .await
        .unwrap();
    for set in [&mut first, &mut second] {
        match next_change(set, "b registers").await.as_slice() {
            [InstanceChange::Added { instance, .. }] => assert_eq!(instance.id, "b"),
            other => panic!("expected b's addition, got {other:?}"),
        }
    }
    drop(first);
    let late = discovery.watch("api").await.unwrap();
    assert_eq!(ids(&late.instances()), ["a", "b"]);
    assert!(Arc::ptr_eq(&late.instances()[1], &second.instances()[1]));
}

/// An `InstanceSet` is a stream of change batches, and says whether it is in step with
/// the registry.
pub(crate) async fn instance_set_is_a_stream_of_changes_with_health(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    assert!(set.health().is_synced(), "{:?}", set.health());
    let registration = Registrar::new(store.clone())
        .register(instance("api", "a", 9001), harness.ttl())
        .await
        .unwrap();
    let added = match next_event(&mut set, "registration").await.as_deref() {
        Ok([InstanceChange::Added { instance, revision }]) if instance.id == "a" => *revision,
        other => panic!("expected a's addition, got {other:?}"),
    };
    match set.health() {
        Health::Synced { revision } => assert!(revision >= added && revision == set.revision()),
        other => panic!("expected synced, got {other:?}"),
    }
    registration.deregister().await.unwrap();
    match next_event(&mut set, "deregistration").await.as_deref() {
        Ok([InstanceChange::Removed { instance, revision }]) => {
            assert_eq!(instance.id, "a");
            assert!(*revision > added);
        }
        other => panic!("expected a's removal, got {other:?}"),
    }
}

/// A burst that would empty the set (the registry lost its data; here every record is
/// deleted at one revision) is held back by empty-push protection: the set keeps
/// serving the last known instances, stale, and says why. Once the registry has an
/// instance again, it is served as it is.
pub(crate) async fn a_burst_that_would_empty_the_set_is_held_back(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        put_record(&store, id, port).await;
    }
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    assert_eq!(set.instances().len(), 3);
    store.delete_tree("services/api").await.unwrap();
    match next_event(&mut set, "the burst").await {
        Err(StaleError::Protected {
            known: 3,
            remaining: 0,
            ..
        }) => {}
        other => panic!("expected protection, got {other:?}"),
    }
    assert_eq!(ids(&set.instances()), ["a", "b", "c"]);
    assert!(matches!(
        set.health(),
        Health::Stale {
            error: StaleError::Protected { .. },
            ..
        }
    ));

    put_record(&store, "b", 9002).await;
    until(&mut set, "the registry has an instance again", |set| {
        set.health().is_synced()
    })
    .await;
    assert_eq!(ids(&set.instances()), ["b"]);
}

/// With a protect threshold, losing too large a share in one revision (here a lease
/// holding two of four records is revoked) is held back until the registry has that
/// share again; a single removal still applies meanwhile.
pub(crate) async fn a_drop_below_the_protect_threshold_is_held_until_enough_return(
    harness: &dyn Harness,
) {
    let (_, store) = fresh_store(harness).await;
    put_record(&store, "a", 9001).await;
    put_record(&store, "b", 9002).await;
    let shared = store.grant_lease(harness.ttl()).await.unwrap();
    for (id, port) in [("c", 9003), ("d", 9004)] {
        let record = instance("api", id, port).to_json().unwrap();
        store
            .put(
                &format!("services/api/{id}"),
                Bytes::from(record),
                PutOptions::with_lease(shared.id()),
            )
            .await
            .unwrap();
    }
    let mut options = DiscoveryOptions::default();
    options.protect_threshold = 0.6;
    let mut set = Discovery::with_options(store.clone(), options)
        .unwrap()
        .watch("api")
        .await
        .unwrap();
    assert_eq!(set.instances().len(), 4);

    shared.revoke().await.unwrap();
    match next_event(&mut set, "two of four gone at once").await {
        Err(StaleError::Protected {
            known: 4,
            remaining: 2,
            threshold,
        }) => assert_eq!(threshold, 0.6),
        other => panic!("expected protection, got {other:?}"),
    }
    assert_eq!(ids(&set.instances()), ["a", "b", "c", "d"]);

    store.delete("services/api/a").await.unwrap();
    match next_event(&mut set, "a single removal").await.as_deref() {
        Ok([InstanceChange::Removed { instance, .. }]) => assert_eq!(instance.id, "a"),
        other => panic!("expected a's removal, got {other:?}"),
    }
    assert!(!set.health().is_synced());

    put_record(&store, "c", 9003).await;
    put_record(&store, "e", 9005).await;
    until(&mut set, "three of four are back", |set| {
        set.health().is_synced()
    })
    .await;
    assert_eq!(ids(&set.instances()), ["b", "c", "e"]);
}

/// An application health check flips the advertised status between `Up` and `Down`; a
/// drained instance stays drained while healthy.
pub(crate) async fn health_check_flips_the_advertised_status(harness: &dyn Harness) {
    const CHECK_EVERY: Duration = Duration::from_millis(100);
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let mut registration = Registrar::new(store.clone())
        .register(instance("api", "checked", 9001), harness.ttl())
        .await
        .unwrap();
    next_change(&mut set, "registration").await;
    let verdict = Arc::new(std::sync::Mutex::new(Status::Up));
    let check = verdict.clone();
    assert!(matches!(
        registration.check_health(Duration::ZERO, || async { Status::Up }),
        Err(kvstore_core::Error::InvalidArgument { .. })
    ));
    registration
        .check_health(CHECK_EVERY, move || {
            let verdict = *check.lock().unwrap();
            async move { verdict }
        })
        .unwrap();
    let advertised = |set: &InstanceSet| set.instances().first().map(|i| i.status);
    for (says, shows) in [(Status::Down, Status::Down), (Status::Up, Status::Up)] {
        *verdict.lock().unwrap() = says;
        until(&mut set, "the check's verdict", |set| {
            advertised(set) == Some(shows)
        })
        .await;
    }
    registration.drain().await.unwrap();
    until(&mut set, "drained", |set| {
        advertised(set) == Some(Status::Draining)
    })
    .await;
    for (says, shows) in [(Status::Down, Status::Down), (Status::Up, Status::Draining)] {
        *verdict.lock().unwrap() = says;
        until(&mut set, "the check's verdict while drained", |set| {
            advertised(set) == Some(shows)
        })
        .await;
    }
    assert!(RoundRobin::default().pick(&set.instances()).is_none());
}

/// A record that stops decoding (garbage, a newer schema) removes its instance from
/// views with a warning; fields a reader does not know are ignored.
pub(crate) async fn undecodable_records_leave_views_and_unknown_fields_are_ignored(
    harness: &dyn Harness,
) {
    let (_, store) = fresh_store(harness).await;
    let mut set = Discovery::new(store.clone()).watch("api").await.unwrap();
    let key = "services/api/a";
    let mut newer: serde_json::Value =
        serde_json::from_slice(&instance("api", "a", 9001).to_json().unwrap()).unwrap();
    newer["added_in_a_later_release"] = serde_json::json!(["x"]);
    let write = |value: String| {
        let store = store.clone();
        async move {
            store
                .put(key, Bytes::from(value), PutOptions::default())
                .await
                .unwrap()
        }
    };
    write(newer.to_string()).await;
    until(&mut set, "a record with an unknown field", |set| {
        ids(&set.instances()) == ["a"]
    })
    .await;
    write("{not json".into()).await;
    until(&mut set, "garbage", |set| set.instances().is_empty()).await;
    write(newer.to_string()).await;
    until(&mut set, "valid again", |set| set.instances().len() == 1).await;
    newer["schema_version"] = serde_json::json!(99);
    write(newer.to_string()).await;
    until(&mut set, "a newer schema", |set| set.instances().is_empty()).await;
    assert!(
        Discovery::new(store.clone())
            .resolve("api")
            .await
            .unwrap()
            .is_empty()
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
            drain_and_deregister_drains_for_the_grace_then_removes,
            deregister_and_drop_remove_the_record,
            services_are_isolated,
            malformed_records_are_skipped,
            two_registrations_of_one_id_settle_with_the_newest,
            watchers_of_one_service_share_one_decoded_set,
            instance_set_is_a_stream_of_changes_with_health,
            a_burst_that_would_empty_the_set_is_held_back,
            a_drop_below_the_protect_threshold_is_held_until_enough_return,
            health_check_flips_the_advertised_status,
            undecodable_records_leave_views_and_unknown_fields_are_ignored,
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
