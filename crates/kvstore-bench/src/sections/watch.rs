//! The watch sections: delivery latency and fan-out, and the idle-watchers curve.

use std::sync::Arc;

use kvstore::Store;
use kvstore_memory::MemoryStore;

use crate::measure::{self, BenchResult, Spread, Table, Target, Timing, number, spread_ms};
use crate::report::Report;
use crate::watch;
use crate::{Section, Servers, etcd_raw, etcd_store, redis_store};

/// Watch delivery latency and fan-out.
pub(crate) async fn watches(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-watch").await?;
    let etcd_client = etcd_raw(etcd).await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-watch").await?;
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut table = Table::new(
        "Watch delivery: put → the watcher has it",
        format!(
            "Sequential samples (µs, HDR histogram). On etcd, ours and etcd's own put and watch alternate sample by sample; the p99 ratio is computed over {} consecutive blocks of samples and shown as min / median / max.",
            timing.rounds
        ),
        &[
            "backend",
            "samples",
            "ours p50 / p99 / p99.9",
            "raw p50 / p99 / p99.9",
            "p99 ours/raw per block: min / median / max",
            "target",
            "verdict",
        ],
    );
    let text = |p: measure::Percentiles| {
        format!("{} / {} / {}", number(p.p50), number(p.p99), number(p.p999))
    };
    for (backend, store, raw) in [
        ("memory", &memory, None),
        ("etcd", &etcd_ours, Some(&etcd_client)),
        ("redis", &redis_ours, None),
    ] {
        eprintln!("  {backend} watch delivery, {} samples", timing.samples);
        let delivery = watch::delivery(store, raw, timing.samples).await?;
        let ours = watch::percentiles(&delivery.ours);
        let (raw_text, spread, target) = if delivery.raw.is_empty() {
            (String::new(), Spread::default(), Target::None)
        } else {
            (
                text(watch::percentiles(&delivery.raw)),
                watch::block_p99_ratios(&delivery, timing.rounds),
                Target::AtMost(1.2),
            )
        };
        table.row(vec![
            backend.into(),
            delivery.ours.len().to_string(),
            text(ours),
            raw_text,
            spread.text(),
            target.text(""),
            target.verdict(&spread),
        ]);
    }
    report.table(Section::Watch, &table);

    let repetitions = if timing.quick { 2 } else { 7 };
    let mut fan = Table::new(
        "Fan-out: one put, many watchers of its prefix, until the last has it",
        format!(
            "The watchers each run in a task; one put, {repetitions} times over the same watchers; ms as min / median / max. Ours on one store (one connection); raw etcd: that many watch streams of one client."
        ),
        &[
            "backend",
            "watchers",
            "ours ms: min / median / max",
            "raw ms: min / median / max",
            "target",
            "verdict",
        ],
    );
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} fan-out to 1,000 watchers");
        let ours = Spread::of(
            watch::fan_out(std::slice::from_ref(store), "fan", 1000, repetitions).await?,
        );
        let raw = if backend == "etcd" {
            Spread::of(watch::fan_out_raw_etcd(&etcd_client, 1000, repetitions).await?)
        } else {
            Spread::default()
        };
        let target = if backend == "redis" {
            Target::None
        } else {
            Target::Under(100.0)
        };
        fan.row(vec![
            backend.into(),
            "1,000".into(),
            spread_ms(&ours),
            spread_ms(&raw),
            target.text("ms"),
            target.verdict(&ours),
        ]);
    }
    let big = if timing.quick { 1000 } else { 10_000 };
    eprintln!("  redis fan-out to {big} watchers of one store");
    let fan_store = redis_store(redis, "bench-fan").await?;
    let ours = Spread::of(
        watch::fan_out(
            std::slice::from_ref(&fan_store),
            "fan",
            big,
            repetitions.min(3),
        )
        .await?,
    );
    fan.row(vec![
        "redis".into(),
        format!(
            "{} (one store: one request and one stream-reading connection)",
            thousands(big)
        ),
        spread_ms(&ours),
        String::new(),
        String::new(),
        String::new(),
    ]);
    report.table(Section::Watch, &fan);
    Ok(())
}

/// `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The idle-watchers curve on memory, etcd and Redis.
pub(crate) async fn watchers_curves(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-watchers").await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-watchers").await?;
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} watchers curve");
        let table = watch::watchers_curve(backend, store, timing).await?;
        report.table(Section::WatchersCurve, &table);
    }
    Ok(())
}
