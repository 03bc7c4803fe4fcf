//! Discovery: register → visible to a watching consumer; resolve with 1,000 instances;
//! memory used by 1,000 live registrations and 1,000 watchers; fan-out of one
//! registration to 1,000 watchers of a 1,000-instance service. The watchers come from
//! one `Discovery`, so they share one backend watch and one decoded instance set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::Store;
use kvstore_discovery::{Discovery, Instance, InstanceChange, Registrar, Registration};

use crate::measure::{Latency, latency};

const TTL: Duration = Duration::from_secs(30);

/// Time from calling `register` until a consumer watching
/// the service reports the instance.
pub async fn register_to_visible(store: &Arc<dyn Store>, samples: usize) -> Latency {
    let mut set = Discovery::new(store.clone())
        .watch("visible")
        .await
        .expect("watch");
    let registrar = Registrar::new(store.clone());
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        let registration = registrar
            .register(
                Instance::new("visible", format!("i{i}"), "127.0.0.1:1"),
                TTL,
            )
            .await
            .expect("register");
        loop {
            let changes = set.next_change().await.expect("changes");
            if changes.iter().any(|c| matches!(c, InstanceChange::Added { instance, .. } if instance.id == format!("i{i}"))) {
                break;
            }
        }
        times.push(started.elapsed());
        registration.deregister().await.expect("deregister");
    }
    latency(times)
}

/// Heap bytes held now (the benchmark's allocator counts them).
fn held() -> f64 {
    crate::allocator::live_bytes()
}

/// Register `count` instances, time `resolve`, and measure the client heap that the live
/// registrations and `count` watchers of the service hold (for the memory backend this
/// includes the stored records). Returns (resolve latency, MiB for the
/// registrations, MiB for the watchers).
pub async fn scale(store: &Arc<dyn Store>, count: usize) -> (Latency, f64, f64) {
    let before = held();
    let registrations = register_many(store, "scale", count).await;
    let registered = held();
    let discovery = Discovery::new(store.clone());
    let mut times = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let found = discovery.resolve("scale").await.expect("resolve");
        times.push(started.elapsed());
        assert_eq!(found.len(), count);
    }
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        sets.push(discovery.watch("scale").await.expect("watch"));
    }
    let watching = held();
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    drop(sets);
    for registration in registrations {
        registration.abandon();
    }
    store.delete_tree("services/scale").await.expect("cleanup");
    (
        latency(times),
        mib(registered - before),
        mib(watching - registered),
    )
}

/// Register `count` instances of `service`.
async fn register_many(store: &Arc<dyn Store>, service: &str, count: usize) -> Vec<Registration> {
    let registrar = Registrar::new(store.clone());
    let mut registrations = Vec::with_capacity(count);
    for i in 0..count {
        registrations.push(
            registrar
                .register(
                    Instance::new(service, format!("i{i:04}"), "127.0.0.1:1"),
                    TTL,
                )
                .await
                .expect("register"),
        );
    }
    registrations
}

/// `watchers` consumers of a service with `instances` instances (one `Discovery`);
/// the time from starting one more registration until the last consumer has it.
pub async fn fan_out(store: &Arc<dyn Store>, instances: usize, watchers: usize) -> Duration {
    let registrations = register_many(store, "fan", instances).await;
    let discovery = Discovery::new(store.clone());
    let mut sets = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        sets.push(discovery.watch("fan").await.expect("watch"));
    }
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for mut set in sets {
        let done = done.clone();
        tokio::spawn(async move {
            while let Some(changes) = set.next_change().await {
                let arrived = changes.iter().any(|c| {
                    matches!(c, InstanceChange::Added { instance, .. } if instance.id == "newcomer")
                });
                if arrived {
                    let _ = done.send(Instant::now());
                    return;
                }
            }
        });
    }
    let started = Instant::now();
    let newcomer = Registrar::new(store.clone())
        .register(Instance::new("fan", "newcomer", "127.0.0.1:1"), TTL)
        .await
        .expect("register");
    let mut last = started;
    for _ in 0..watchers {
        last = last.max(finished.recv().await.expect("every watcher reports"));
    }
    newcomer.abandon();
    for registration in registrations {
        registration.abandon();
    }
    store.delete_tree("services/fan").await.expect("cleanup");
    last - started
}
