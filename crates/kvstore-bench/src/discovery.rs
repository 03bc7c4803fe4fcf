//! Discovery: register → visible to a watching consumer; resolve with 1,000 instances;
//! client heap held by 1,000 live registrations and by 1,000 watchers; fan-out of one
//! registration to 1,000 watchers of a 1,000-instance service. The watchers come from
//! one `Discovery`, so they share one backend watch and one decoded instance set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::Store;
use kvstore_discovery::{Discovery, Instance, InstanceChange, Registrar, Registration};

use crate::allocator::HeapPhase;
use crate::measure::{BenchResult, Percentiles, histogram, millis, record};

/// The TTL of every registration.
const TTL: Duration = Duration::from_secs(30);

/// Time from calling `register` until a consumer watching the service reports the
/// instance, `samples` times.
///
/// # Errors
/// A failed registration or watch.
pub(crate) async fn register_to_visible(
    store: &Arc<dyn Store>,
    samples: usize,
) -> BenchResult<Percentiles> {
    let mut set = Discovery::new(store.clone()).watch("visible").await?;
    let registrar = Registrar::new(store.clone());
    let mut times = histogram();
    for i in 0..samples {
        let id = format!("i{i}");
        let started = Instant::now();
        let registration = registrar
            .register(Instance::new("visible", id.clone(), "127.0.0.1:1"), TTL)
            .await?;
        loop {
            let Some(changes) = set.next_change().await else {
                return Err("the instance set ended".into());
            };
            if changes
                .iter()
                .any(|c| matches!(c, InstanceChange::Added { instance, .. } if instance.id == id))
            {
                break;
            }
        }
        record(&mut times, started.elapsed());
        registration.deregister().await?;
    }
    Ok(Percentiles::of(&times))
}

/// What [`scale`] measures.
pub(crate) struct Scale {
    /// `resolve` of the whole service.
    pub resolve: Percentiles,
    /// Client heap held by the live registrations (MiB; for the memory backend it
    /// includes the stored records).
    pub registrations_mib: f64,
    /// Client heap held by the watchers (MiB).
    pub watchers_mib: f64,
}

/// Register `count` instances, time `resolve`, and measure the client heap that the live
/// registrations and `count` watchers of the service hold (counted only in those two
/// phases).
///
/// # Errors
/// A failed request.
pub(crate) async fn scale(
    store: &Arc<dyn Store>,
    count: usize,
    resolves: usize,
) -> BenchResult<Scale> {
    let phase = HeapPhase::start();
    let before = phase.live_bytes();
    let registrations = register_many(store, "scale", count).await?;
    let registrations_bytes = phase.live_bytes() - before;
    drop(phase);

    let discovery = Discovery::new(store.clone());
    let mut times = histogram();
    for _ in 0..resolves {
        let started = Instant::now();
        let found = discovery.resolve("scale").await?;
        record(&mut times, started.elapsed());
        if found.len() != count {
            return Err(format!("resolve found {} of {count} instances", found.len()).into());
        }
    }

    let phase = HeapPhase::start();
    let before = phase.live_bytes();
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        sets.push(discovery.watch("scale").await?);
    }
    let watchers_bytes = phase.live_bytes() - before;
    drop(phase);

    drop(sets);
    for registration in registrations {
        registration.abandon();
    }
    store.delete_tree("services/scale").await?;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    Ok(Scale {
        resolve: Percentiles::of(&times),
        registrations_mib: mib(registrations_bytes),
        watchers_mib: mib(watchers_bytes),
    })
}

/// Register `count` instances of `service`.
async fn register_many(
    store: &Arc<dyn Store>,
    service: &str,
    count: usize,
) -> BenchResult<Vec<Registration>> {
    let registrar = Registrar::new(store.clone());
    let mut registrations = Vec::with_capacity(count);
    for i in 0..count {
        registrations.push(
            registrar
                .register(
                    Instance::new(service, format!("i{i:04}"), "127.0.0.1:1"),
                    TTL,
                )
                .await?,
        );
    }
    Ok(registrations)
}

/// `watchers` consumers of a service with `instances` instances (one `Discovery`);
/// the time from starting one more registration until the last consumer has it, in ms,
/// `repetitions` times (a new instance each time).
///
/// # Errors
/// A failed request.
pub(crate) async fn fan_out(
    store: &Arc<dyn Store>,
    instances: usize,
    watchers: usize,
    repetitions: usize,
) -> BenchResult<Vec<f64>> {
    let registrations = register_many(store, "fan", instances).await?;
    let discovery = Discovery::new(store.clone());
    let mut sets = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        sets.push(discovery.watch("fan").await?);
    }
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(watchers);
    for mut set in sets {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(changes) = set.next_change().await {
                for change in changes.iter() {
                    if let InstanceChange::Added { instance, .. } = change
                        && instance.id.starts_with("newcomer")
                        && done.send(Instant::now()).is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    let registrar = Registrar::new(store.clone());
    let mut times = Vec::with_capacity(repetitions);
    let mut newcomers = Vec::with_capacity(repetitions);
    for repetition in 0..repetitions {
        let started = Instant::now();
        newcomers.push(
            registrar
                .register(
                    Instance::new("fan", format!("newcomer{repetition}"), "127.0.0.1:1"),
                    TTL,
                )
                .await?,
        );
        let mut last = started;
        for _ in 0..watchers {
            let Some(at) = finished.recv().await else {
                return Err("a discovery watcher stopped".into());
            };
            last = last.max(at);
        }
        times.push(millis(last - started));
    }
    for task in tasks {
        task.abort();
    }
    for registration in registrations.into_iter().chain(newcomers) {
        registration.abandon();
    }
    store.delete_tree("services/fan").await?;
    Ok(times)
}
