//! Watches: delivery latency (put → the watcher has it), fan-out of one put to many
//! watchers, and write throughput and delivery lag against idle watchers on unrelated
//! prefixes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use kvstore::{PutOptions, Store, WatchEvent, WatchFrom};
use tokio::task::JoinHandle;

use crate::allocator::HeapPhase;
use crate::measure::{
    BenchResult, Percentiles, Spread, Table, Timing, histogram, millis, number, record, run_for,
};

/// The longest the lag samples of one curve point may take.
const LAG_TIME_BOX: Duration = Duration::from_secs(2);

/// An event-level watch of ours.
type Events = BoxStream<'static, kvstore::Result<WatchEvent>>;

/// A prefix watch whose snapshot has been read.
async fn started_watch(store: &Arc<dyn Store>, prefix: &str) -> BenchResult<Events> {
    let mut events = store
        .watch_prefix_events(prefix, WatchFrom::Snapshot)
        .await?;
    match events.next().await {
        Some(Ok(WatchEvent::Snapshot(_))) => Ok(events),
        other => Err(format!("watch of {prefix} began with {other:?}").into()),
    }
}

/// Wait for the next `Put` on `events`.
async fn next_put(events: &mut Events) -> BenchResult<()> {
    loop {
        match events.next().await {
            Some(Ok(WatchEvent::Put(_))) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Err("the watch ended".into()),
        }
    }
}

/// Delivery samples of ours (and of raw etcd, interleaved sample by sample so both see
/// the same server conditions).
pub(crate) struct Delivery {
    /// Ours, in sample order.
    pub ours: Vec<Duration>,
    /// Raw etcd, in sample order, when measured.
    pub raw: Vec<Duration>,
}

/// Put a key through ours and time until our prefix watch has it, `samples` times;
/// with `raw`, each sample is followed by one of etcd's own put and watch.
///
/// # Errors
/// A failed request or watch.
pub(crate) async fn delivery(
    store: &Arc<dyn Store>,
    raw: Option<&etcd_client::Client>,
    samples: usize,
) -> BenchResult<Delivery> {
    let mut events = started_watch(store, "w").await?;
    let mut raw_side = match raw {
        Some(client) => {
            let mut client = client.clone();
            let stream = client
                .watch(
                    "raw-watch/",
                    Some(etcd_client::WatchOptions::new().with_prefix()),
                )
                .await?;
            Some((client, stream))
        }
        None => None,
    };
    let mut result = Delivery {
        ours: Vec::with_capacity(samples),
        raw: Vec::with_capacity(if raw.is_some() { samples } else { 0 }),
    };
    let value = Bytes::from_static(b"x");
    for i in 0..samples {
        let started = Instant::now();
        store
            .put(
                &format!("w/{}", i % 10),
                value.clone(),
                PutOptions::default(),
            )
            .await?;
        next_put(&mut events).await?;
        result.ours.push(started.elapsed());
        if let Some((client, stream)) = raw_side.as_mut() {
            let started = Instant::now();
            client
                .put(format!("raw-watch/{}", i % 10), "x", None)
                .await?;
            loop {
                let Some(response) = stream.message().await? else {
                    return Err("the raw etcd watch ended".into());
                };
                if !response.events().is_empty() {
                    break;
                }
            }
            result.raw.push(started.elapsed());
        }
    }
    Ok(result)
}

/// Percentiles of samples.
pub(crate) fn percentiles(samples: &[Duration]) -> Percentiles {
    let mut h = histogram();
    for sample in samples {
        record(&mut h, *sample);
    }
    Percentiles::of(&h)
}

/// The paired p99 ratios ours/raw over `blocks` consecutive blocks of samples.
pub(crate) fn block_p99_ratios(delivery: &Delivery, blocks: usize) -> Spread {
    let n = delivery.ours.len().min(delivery.raw.len());
    let size = (n / blocks.max(1)).max(1);
    let mut ratios = Vec::new();
    for block in 0..blocks {
        let range = block * size..((block + 1) * size).min(n);
        if range.is_empty() {
            break;
        }
        let ours = percentiles(&delivery.ours[range.clone()]).p99;
        let raw = percentiles(&delivery.raw[range]).p99;
        if raw > 0.0 {
            ratios.push(ours / raw);
        }
    }
    Spread::of(ratios)
}

/// Start `watchers` prefix watches on `prefix` (spread over `stores`), each in a task
/// that reports when it sees a put; then put `repetitions` times and time until the
/// last watcher has each put. Returns the times in ms.
///
/// # Errors
/// A failed request or watch.
pub(crate) async fn fan_out(
    stores: &[Arc<dyn Store>],
    prefix: &str,
    watchers: usize,
    repetitions: usize,
) -> BenchResult<Vec<f64>> {
    let streams: Vec<BenchResult<Events>> = futures::stream::iter(0..watchers)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            async move { started_watch(&store, prefix).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(watchers);
    for events in streams {
        let mut events = events?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Ok(WatchEvent::Put(_)) = event
                    && done.send(Instant::now()).is_err()
                {
                    return;
                }
            }
        }));
    }
    let mut times = Vec::with_capacity(repetitions);
    for repetition in 0..repetitions {
        let started = Instant::now();
        stores[0]
            .put(
                &format!("{prefix}/out"),
                Bytes::from(repetition.to_string()),
                PutOptions::default(),
            )
            .await?;
        let mut last = started;
        for _ in 0..watchers {
            let Some(at) = finished.recv().await else {
                return Err("a fan-out watcher stopped".into());
            };
            last = last.max(at);
        }
        times.push(millis(last - started));
    }
    for task in tasks {
        task.abort();
    }
    Ok(times)
}

/// The same with raw etcd watches: `watchers` watch streams of one client on a prefix.
///
/// # Errors
/// A failed request or watch.
pub(crate) async fn fan_out_raw_etcd(
    client: &etcd_client::Client,
    watchers: usize,
    repetitions: usize,
) -> BenchResult<Vec<f64>> {
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        let mut stream = client
            .clone()
            .watch(
                "raw-fan/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                if !response.events().is_empty() && done.send(Instant::now()).is_err() {
                    return;
                }
            }
        }));
    }
    let mut times = Vec::with_capacity(repetitions);
    for repetition in 0..repetitions {
        let started = Instant::now();
        client
            .clone()
            .put("raw-fan/out", repetition.to_string(), None)
            .await?;
        let mut last = started;
        for _ in 0..watchers {
            let Some(at) = finished.recv().await else {
                return Err("a raw fan-out watcher stopped".into());
            };
            last = last.max(at);
        }
        times.push(millis(last - started));
    }
    for task in tasks {
        task.abort();
    }
    Ok(times)
}

/// Time given to new idle watchers to finish starting before the writes, at least.
const SETTLE_MIN: Duration = Duration::from_millis(200);
/// And for each new idle watcher.
const SETTLE_PER_WATCHER: Duration = Duration::from_micros(100);

/// Write throughput and delivery lag against idle watchers on unrelated prefixes
/// (0, 100, 1,000 and 10,000), each drained by its own task as a real consumer would.
///
/// # Errors
/// A failed request or watch.
pub(crate) async fn watchers_curve(
    backend: &str,
    store: &Arc<dyn Store>,
    timing: &Timing,
) -> BenchResult<Table> {
    let lag_samples = if timing.quick { 100 } else { 500 };
    let write_time = timing.step * timing.passes.max(1) as u32;
    let mut table = Table::new(
        format!("{backend}: writes and delivery against idle watchers on other prefixes"),
        format!(
            "Idle watchers each watch their own prefix `idle/N` (nothing is written there) and are drained by a task each; new ones get 0.2 s + 0.1 ms each to finish starting before the writes. *put ops/s*: puts to `hot/…` with 16 in flight for {:.2} s. *lag*: put → a watcher of `hot` has it, {lag_samples} sequential samples or {} s, whichever ends first (µs). *heap per watcher*: client heap the new watchers hold (counted only while they are created). A flat column means watchers of other prefixes cost a write nothing. Where it falls, look at how a change reaches watchers: on Redis the store's one stream reader decodes each change-log entry once and wakes every watcher of the store with each batch, which drops what is not its prefix, and one that falls behind catches up with its own `XRANGE`; the memory store wakes only the watchers whose key or prefix a change touches; etcd filters on the server, one gRPC stream per watcher.",
            write_time.as_secs_f64(),
            LAG_TIME_BOX.as_secs_f64()
        ),
        &[
            "idle watchers",
            "put ops/s (16 in flight)",
            "lag samples",
            "lag p50 µs",
            "lag p99 µs",
            "watch start ms each",
            "client heap per watcher (KiB)",
        ],
    );
    let counts: &[usize] = if timing.quick {
        &[0, 100, 1000]
    } else {
        &[0, 100, 1000, 10_000]
    };
    let mut idle: Vec<JoinHandle<()>> = Vec::new();
    let value = Bytes::from(vec![b'v'; 100]);
    let mut hot = started_watch(store, "hot").await?;
    for &count in counts {
        let (mut per_watch_ms, mut heap_kib) = (f64::NAN, f64::NAN);
        if count > idle.len() {
            let new = count - idle.len();
            let first = idle.len();
            let phase = HeapPhase::start();
            let before = phase.live_bytes();
            let started = Instant::now();
            let streams: Vec<BenchResult<Events>> = futures::stream::iter(first..count)
                .map(|i| {
                    let store = store.clone();
                    async move { started_watch(&store, &format!("idle/{i}")).await }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            for events in streams {
                let mut events = events?;
                idle.push(tokio::spawn(async move {
                    while events.next().await.is_some() {}
                }));
            }
            per_watch_ms = millis(started.elapsed()) / new as f64;
            heap_kib = (phase.live_bytes() - before) / new as f64 / 1024.0;
            drop(phase);
            // A new watcher may still be catching up on its history (a Redis watcher's
            // first `XRANGE`) after its snapshot; let that settle, so the rows measure
            // watchers that sit idle, not their start.
            tokio::time::sleep(SETTLE_MIN + SETTLE_PER_WATCHER * new as u32).await;
        }
        let rate = run_for(write_time, 16, None, |i| {
            let (store, value) = (store.clone(), value.clone());
            async move {
                store
                    .put(&format!("hot/{}", i % 100), value, PutOptions::default())
                    .await?;
                Ok(())
            }
        })
        .await?;
        // Drain what the throughput run left queued on the hot watcher.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), hot.next()).await {
        }
        let mut lags = histogram();
        let sampling = Instant::now();
        for i in 0..lag_samples {
            if sampling.elapsed() > LAG_TIME_BOX {
                break;
            }
            let started = Instant::now();
            store
                .put(
                    &format!("hot/{}", i % 100),
                    value.clone(),
                    PutOptions::default(),
                )
                .await?;
            next_put(&mut hot).await?;
            record(&mut lags, started.elapsed());
        }
        let lag = Percentiles::of(&lags);
        table.row(vec![
            count.to_string(),
            number(rate),
            lag.count.to_string(),
            number(lag.p50),
            number(lag.p99),
            if per_watch_ms.is_nan() {
                "–".into()
            } else {
                number(per_watch_ms)
            },
            if heap_kib.is_nan() {
                "–".into()
            } else {
                number(heap_kib)
            },
        ]);
        eprintln!("  {backend}: {count} idle watchers done");
    }
    for task in idle {
        task.abort();
    }
    Ok(table)
}
