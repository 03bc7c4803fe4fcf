//! Listing a prefix and starting a watch on it (its snapshot), against the prefix's size,
//! with the latency of gets that run while the list does.
//!
//! The raw baselines read the same keys the same way: etcd-client reading pages of 1,000
//! keys at the first page's revision (as `kvstore-etcd` does); on Redis one Lua script
//! walking our prefix index and `HMGET`ting each hash (what our range script does, minus
//! the epoch and tip); on memory a `BTreeMap` range under a `RwLock`.
//!
//! The gets run on a second connection (a second store handle) while the list runs, so
//! they measure how long the *server* is blocked, not queueing on the lister's
//! connection. The memory store's list and get run in one process on one core: there
//! the probe cannot overlap the list, and is not reported.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kvstore::{PutOptions, Store, WatchEvent, WatchFrom};

use crate::measure::{
    BenchResult, Percentiles, Table, Timing, histogram, median, millis, number, ratio, record,
};

/// Value size of the listed keys on the curve.
const VALUE_SIZE: usize = 100;
/// The last point of the curve: a prefix of 20 MiB of values (20,480 keys of 1 KiB).
const LARGE_PREFIX: (usize, usize) = (20 * 1024, 1024);
/// Keys per page of the raw etcd list, as `kvstore-etcd` reads them.
const PAGE_KEYS: i64 = 1000;
/// Requests in flight while filling a prefix.
const FILL_IN_FLIGHT: usize = 256;

/// The Redis baseline: one script reading every key of a prefix from our layout.
/// KEYS: the prefix index; ARGV: the data key prefix, the key start.
const REDIS_RANGE: &str = r"
local keys = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2], '(' .. ARGV[2] .. '\255')
local out = {}
for _, key in ipairs(keys) do
  local h = redis.call('HMGET', ARGV[1] .. key, 'value', 'revision', 'create_revision', 'lease')
  if h[2] then table.insert(out, { key, h[1], tonumber(h[2]), tonumber(h[3]), h[4] or '' }) end
end
return out
";

/// The raw side of a list comparison.
pub(crate) enum RawLister {
    /// A `BTreeMap` holding the same pairs.
    Memory(Arc<RwLock<BTreeMap<String, Bytes>>>),
    /// etcd-client and the etcd namespace of our store (`{namespace}/`).
    Etcd {
        /// The raw client.
        client: Box<etcd_client::Client>,
        /// Our store's etcd key prefix.
        root: String,
    },
    /// A raw connection and our store's Redis namespace.
    Redis {
        /// The raw connection.
        connection: redis::aio::MultiplexedConnection,
        /// Our store's namespace.
        namespace: String,
    },
}

impl RawLister {
    /// List everything below `prefix` (our key, relative to the namespace); the count.
    async fn list(&self, prefix: &str) -> BenchResult<usize> {
        match self {
            RawLister::Memory(map) => {
                let start = format!("{prefix}/");
                let end = format!("{prefix}0");
                let map = map.read().map_err(|_| "poisoned")?;
                let pairs: Vec<(String, Bytes)> = map
                    .range(start..end)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Ok(std::hint::black_box(pairs).len())
            }
            RawLister::Etcd { client, root } => {
                let mut kv = client
                    .kv_client()
                    .max_decoding_message_size(i32::MAX as usize);
                let mut start = format!("{root}{prefix}/").into_bytes();
                let end = format!("{root}{prefix}0").into_bytes();
                let mut revision = 0;
                let mut count = 0;
                loop {
                    let mut options = etcd_client::GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(PAGE_KEYS);
                    if revision > 0 {
                        options = options.with_revision(revision);
                    }
                    let page = kv.get(start.clone(), Some(options)).await?;
                    if revision == 0 {
                        revision = page.header().map_or(0, |h| h.revision());
                    }
                    count += page.kvs().len();
                    match page.kvs().last() {
                        Some(last) if page.more() => {
                            start = last.key().to_vec();
                            start.push(0);
                        }
                        _ => return Ok(count),
                    }
                }
            }
            RawLister::Redis {
                connection,
                namespace,
            } => {
                let pairs: Vec<redis::Value> = redis::Script::new(REDIS_RANGE)
                    .key(format!("{{{namespace}}}:kv:idx"))
                    .arg(format!("{{{namespace}}}:kv:k:"))
                    .arg(format!("{prefix}/"))
                    .invoke_async(&mut connection.clone())
                    .await?;
                Ok(pairs.len())
            }
        }
    }

    /// Mirror a write of ours (only the memory baseline holds its own data).
    fn mirror(&self, key: &str, value: &Bytes) -> BenchResult<()> {
        if let RawLister::Memory(map) = self {
            map.write()
                .map_err(|_| "poisoned")?
                .insert(key.to_owned(), value.clone());
        }
        Ok(())
    }
}

/// Write `count` keys below `prefix` through `store`, many at once.
async fn fill(
    store: &Arc<dyn Store>,
    raw: &RawLister,
    prefix: &str,
    count: usize,
    value_size: usize,
) -> BenchResult<()> {
    let value = Bytes::from(vec![b'v'; value_size]);
    for i in 0..count {
        raw.mirror(&format!("{prefix}/{i:06}"), &value)?;
    }
    futures::stream::iter(0..count)
        .map(|i| {
            let (store, value) = (store.clone(), value.clone());
            async move {
                store
                    .put(&format!("{prefix}/{i:06}"), value, PutOptions::default())
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(FILL_IN_FLIGHT)
        .fold(
            Ok(()),
            |acc: kvstore::Result<()>, r| async move { acc.and(r) },
        )
        .await?;
    Ok(())
}

/// What the get probe saw while a list ran.
struct Probed {
    /// Latencies of every get, failed ones included (a get that times out waited that long).
    latencies: hdrhistogram::Histogram<u64>,
    /// Gets that failed (timed out, or refused while a script ran too long).
    failed: u64,
}

/// Run `list` while `probe` gets a key in a loop; the list's duration and count, and
/// what the probe saw (nothing for an in-process store).
async fn list_with_probe<F>(
    list: F,
    probe: Option<&Arc<dyn Store>>,
    probe_key: &str,
) -> BenchResult<(Duration, usize, Option<Probed>)>
where
    F: std::future::Future<Output = BenchResult<usize>>,
{
    let done = Cell::new(false);
    let listing = async {
        let started = Instant::now();
        let listed = list.await;
        done.set(true);
        listed.map(|n| (started.elapsed(), n))
    };
    let probing = async {
        let store = probe?;
        let mut probed = Probed {
            latencies: histogram(),
            failed: 0,
        };
        while !done.get() {
            let sent = Instant::now();
            if store.get(probe_key).await.is_err() {
                probed.failed += 1;
            }
            record(&mut probed.latencies, sent.elapsed());
        }
        Some(probed)
    };
    let (listed, probed) = futures::join!(listing, probing);
    let (elapsed, count) = listed?;
    Ok((elapsed, count, probed))
}

/// Time from asking for a prefix watch to holding its snapshot of `expected` pairs.
async fn snapshot_time(
    store: &Arc<dyn Store>,
    prefix: &str,
    expected: usize,
) -> BenchResult<Duration> {
    let started = Instant::now();
    let mut events = store
        .watch_prefix_events(prefix, WatchFrom::Snapshot)
        .await?;
    match events.next().await {
        Some(Ok(WatchEvent::Snapshot(snapshot))) if snapshot.pairs.len() == expected => {
            Ok(started.elapsed())
        }
        Some(Ok(WatchEvent::Snapshot(snapshot))) => Err(format!(
            "snapshot of {prefix} had {} pairs, expected {expected}",
            snapshot.pairs.len()
        )
        .into()),
        other => Err(format!("watch of {prefix} began with {other:?}").into()),
    }
}

/// The list curve of one backend: list and watch-snapshot time against prefix size
/// (10 to 100,000 keys of 100 bytes, then 20 MiB in 1 KiB values), ours against the raw list, with a get probe's p99 meanwhile.
///
/// # Errors
/// A failed request, or a list that did not return every key.
pub(crate) async fn curve(
    backend: &str,
    store: &Arc<dyn Store>,
    probe: Option<&Arc<dyn Store>>,
    raw: &RawLister,
    timing: &Timing,
) -> BenchResult<Table> {
    let mut table = Table::new(
        format!("{backend}: list and watch snapshot against prefix size"),
        format!(
            "{VALUE_SIZE}-byte values, and a last row of {} values of {} KiB ({} MiB of values). ms are medians of the repetitions shown, ours and raw alternating; *get p99 meanwhile* is the p99 of gets on a second connection while the list runs (all repetitions; a get that failed, timed out or refused by a server busy with a script, counts with the time it waited), which shows how long the server is blocked. *watch snapshot* is the time from `watch_prefix_events(prefix, Snapshot)` to holding the snapshot. A list that is one server-side script (Redis) blocks every other client for its whole length, so *get p99 meanwhile* follows the list time; a paged list bounds it by one page.",
            LARGE_PREFIX.0,
            LARGE_PREFIX.1 / 1024,
            (LARGE_PREFIX.0 * LARGE_PREFIX.1) >> 20,
        ),
        &[
            "keys",
            "value bytes",
            "repetitions",
            "ours list ms",
            "raw list ms",
            "ours/raw",
            "get p99 meanwhile, ours list (µs)",
            "get p99 meanwhile, raw list (µs)",
            "gets probed ours / raw",
            "watch snapshot ms",
        ],
    );
    let sizes: &[(usize, usize)] = if timing.quick {
        &[(10, VALUE_SIZE), (1000, VALUE_SIZE)]
    } else {
        &[
            (10, VALUE_SIZE),
            (1000, VALUE_SIZE),
            (10_000, VALUE_SIZE),
            (100_000, VALUE_SIZE),
            LARGE_PREFIX,
        ]
    };
    store
        .put("probe/key", Bytes::from_static(b"x"), PutOptions::default())
        .await?;
    for &(size, value_size) in sizes {
        let prefix = format!("list-{size}-{value_size}");
        let filled = Instant::now();
        fill(store, raw, &prefix, size, value_size).await?;
        eprintln!(
            "  {backend}: {size} keys of {value_size} bytes written in {:.1} s",
            filled.elapsed().as_secs_f64()
        );
        let repetitions = if size * value_size >= 10 << 20 { 3 } else { 5 };
        let (mut ours_ms, mut raw_ms, mut snapshot_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_failed, mut raw_failed) = (0u64, 0u64);
        let (mut ours_probe, mut raw_probe) = (histogram(), histogram());
        let mut probed_any = false;
        for repetition in 0..repetitions {
            let order = if repetition % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for ours_turn in order {
                let side = if ours_turn { "ours" } else { "raw" };
                let listed = if ours_turn {
                    let list = async { Ok(store.list(&prefix).await?.len()) };
                    list_with_probe(list, probe, "probe/key").await
                } else {
                    list_with_probe(raw.list(&prefix), probe, "probe/key").await
                };
                let (elapsed, count, probed) =
                    listed.map_err(|e| format!("{backend} {side} list of {size} keys: {e}"))?;
                if count != size {
                    return Err(format!(
                        "{backend} {} list of {prefix} returned {count} pairs, expected {size}",
                        if ours_turn { "ours" } else { "raw" }
                    )
                    .into());
                }
                let (times, probes, failures) = if ours_turn {
                    (&mut ours_ms, &mut ours_probe, &mut ours_failed)
                } else {
                    (&mut raw_ms, &mut raw_probe, &mut raw_failed)
                };
                times.push(millis(elapsed));
                if let Some(probed) = probed {
                    probed_any = true;
                    probes.add(&probed.latencies).map_err(|e| e.to_string())?;
                    *failures += probed.failed;
                }
            }
            snapshot_ms.push(millis(snapshot_time(store, &prefix, size).await?));
        }
        let p99 = |h: &hdrhistogram::Histogram<u64>| {
            if probed_any && !h.is_empty() {
                number(Percentiles::of(h).p99)
            } else {
                "–".into()
            }
        };
        table.row(vec![
            size.to_string(),
            value_size.to_string(),
            repetitions.to_string(),
            number(median(&ours_ms)),
            number(median(&raw_ms)),
            ratio(median(&ours_ms) / median(&raw_ms)),
            p99(&ours_probe),
            p99(&raw_probe),
            if probed_any {
                let failed = |n: u64| {
                    if n > 0 {
                        format!(" ({n} failed)")
                    } else {
                        String::new()
                    }
                };
                format!(
                    "{}{} / {}{}",
                    ours_probe.len(),
                    failed(ours_failed),
                    raw_probe.len(),
                    failed(raw_failed)
                )
            } else {
                "–".into()
            },
            number(median(&snapshot_ms)),
        ]);
        store.delete_tree(&prefix).await?;
        if let RawLister::Memory(map) = raw {
            map.write().map_err(|_| "poisoned")?.clear();
        }
    }
    Ok(table)
}
