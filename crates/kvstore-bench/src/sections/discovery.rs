//! The discovery section: register → visible, resolve, heap and fan-out on every backend.

use std::sync::Arc;

use kvstore::Store;
use kvstore_memory::MemoryStore;

use crate::discovery;
use crate::measure::{BenchResult, Spread, Table, Target, Timing, number, spread_ms};
use crate::report::Report;
use crate::{Section, Servers, etcd_store, redis_store};

/// Discovery on every backend.
pub(crate) async fn discovery_rows(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-discovery").await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-discovery").await?;
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let samples = if timing.quick { 50 } else { 1000 };
    let resolves = if timing.quick { 10 } else { 100 };
    let repetitions = if timing.quick { 2 } else { 7 };
    let mut table = Table::new(
        "Discovery",
        format!(
            "*register → visible*: from `register` until a consumer watching the service has the instance, {samples} samples (µs). *resolve*: all 1,000 instances, {resolves} samples (µs). *heap*: client heap held by 1,000 live registrations (for memory including the stored records) and by 1,000 watchers of that service from one `Discovery` (one shared watch), counted only in those phases. *fan-out*: one more registration until the last of 1,000 watchers of the 1,000-instance service has it, {repetitions} times, ms min / median / max."
        ),
        &[
            "backend",
            "register → visible p50 / p99 µs",
            "resolve p50 / p99 µs",
            "heap: 1,000 registrations MiB",
            "heap: 1,000 watchers MiB",
            "target (watchers)",
            "verdict",
            "fan-out ms",
            "target (fan-out)",
            "verdict",
        ],
    );
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} discovery");
        let visible = discovery::register_to_visible(store, samples).await?;
        let scale = discovery::scale(store, 1000, resolves).await?;
        let fan_out = Spread::of(discovery::fan_out(store, 1000, 1000, repetitions).await?);
        let heap_target = Target::Under(16.0);
        let fan_target = Target::Under(100.0);
        table.row(vec![
            backend.into(),
            format!("{} / {}", number(visible.p50), number(visible.p99)),
            format!(
                "{} / {}",
                number(scale.resolve.p50),
                number(scale.resolve.p99)
            ),
            number(scale.registrations_mib),
            number(scale.watchers_mib),
            heap_target.text("MiB"),
            heap_target.verdict(&Spread::of(vec![scale.watchers_mib])),
            spread_ms(&fan_out),
            fan_target.text("ms"),
            fan_target.verdict(&fan_out),
        ]);
    }
    report.table(Section::Discovery, &table);
    Ok(())
}
