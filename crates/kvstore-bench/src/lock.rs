//! Locks: acquire + release, alone and with tasks contending on one key, ours against
//! raw recipes on the same number of connections; and the etcd watch behaviour that
//! makes contended etcd locks slow.
//!
//! Raw recipes: etcd's own Lock RPC (`concurrency` service on the server) on a fresh
//! lease, then Unlock and revoke — what a raw etcd user does per acquisition; on Redis
//! `SET key token NX PX ttl`, retried at once while taken, and a Lua compare-and-delete
//! to release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvstore::{LockOptions, Store};

use crate::measure::{BenchResult, Failure, Percentiles, Spread, histogram, median, record};

/// The lease TTL of every lock.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// Release a raw Redis lock only if it still holds our token.
const REDIS_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// One contender's connection, on one side.
pub(crate) enum Contender {
    /// Our store (its own connection).
    Ours(Arc<dyn Store>),
    /// A raw etcd client (its own connection).
    Etcd(Box<etcd_client::Client>),
    /// A raw Redis connection.
    Redis(redis::aio::MultiplexedConnection),
}

impl Contender {
    /// Acquire and release once on `key`; returns how long acquiring took.
    async fn acquire_release(&self, key: &str) -> BenchResult<Duration> {
        let started = Instant::now();
        match self {
            Contender::Ours(store) => {
                let locker = store.new_lock(
                    key,
                    LockOptions {
                        ttl: TTL,
                        ..LockOptions::default()
                    },
                )?;
                let guard = locker.lock().await?;
                let acquired = started.elapsed();
                guard.unlock().await?;
                Ok(acquired)
            }
            Contender::Etcd(client) => {
                let mut client = client.clone();
                let lease = client.lease_grant(TTL.as_secs() as i64, None).await?.id();
                let held = client
                    .lock(
                        format!("raw-lock/{key}"),
                        Some(etcd_client::LockOptions::new().with_lease(lease)),
                    )
                    .await?;
                let acquired = started.elapsed();
                client.unlock(held.key()).await?;
                client.lease_revoke(lease).await?;
                Ok(acquired)
            }
            Contender::Redis(connection) => {
                let mut connection = connection.clone();
                let token = rand::random::<u64>().to_string();
                let key = format!("raw-lock:{key}");
                loop {
                    let taken: Option<String> = redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(TTL.as_millis() as u64)
                        .query_async(&mut connection)
                        .await?;
                    if taken.is_some() {
                        break;
                    }
                }
                let acquired = started.elapsed();
                let released: i64 = redis::Script::new(REDIS_RELEASE)
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut connection)
                    .await?;
                if released != 1 {
                    return Err("the raw Redis lock was lost before release".into());
                }
                Ok(acquired)
            }
        }
    }
}

/// One side's contended run: acquisitions per second and acquire latencies.
struct Run {
    rate: f64,
    latencies: Histogram<u64>,
}

/// Every contender acquires and releases `key` in a loop for `duration`.
async fn run(contenders: &[Contender], key: &str, duration: Duration) -> BenchResult<Run> {
    let started = Instant::now();
    let deadline = started + duration;
    let loops = contenders.iter().map(|contender| async move {
        let mut latencies = histogram();
        let mut count = 0u64;
        while Instant::now() < deadline {
            record(&mut latencies, contender.acquire_release(key).await?);
            count += 1;
        }
        Ok::<_, Failure>((count, latencies))
    });
    let results = futures::future::try_join_all(loops).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = histogram();
    let mut count = 0;
    for (n, h) in results {
        count += n;
        latencies.add(&h).map_err(|e| e.to_string())?;
    }
    Ok(Run {
        rate: count as f64 / elapsed,
        latencies,
    })
}

/// Ours against raw over `rounds` paired rounds in alternating order.
pub(crate) struct LockComparison {
    /// Acquisitions per second, ours, by round.
    pub ours: Vec<f64>,
    /// The same, raw.
    pub raw: Vec<f64>,
    /// Acquire latencies of ours, over all rounds.
    pub ours_latency: Percentiles,
    /// The same, raw.
    pub raw_latency: Percentiles,
}

impl LockComparison {
    /// The paired ratios ours/raw.
    pub(crate) fn spread(&self) -> Spread {
        Spread::ratios(&self.ours, &self.raw)
    }

    /// Median acquisitions per second (ours, raw).
    pub(crate) fn medians(&self) -> (f64, f64) {
        (median(&self.ours), median(&self.raw))
    }
}

/// Compare ours and raw, each side with the same number of contenders (one connection
/// each), over `rounds` rounds of `duration` per side.
///
/// # Errors
/// A failed request.
pub(crate) async fn compare(
    ours: &[Contender],
    raw: &[Contender],
    key: &str,
    rounds: usize,
    duration: Duration,
) -> BenchResult<LockComparison> {
    // Warm up both sides (connections, scripts).
    run(ours, key, duration / 4).await?;
    run(raw, key, duration / 4).await?;
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    let (mut ours_latency, mut raw_latency) = (histogram(), histogram());
    for round in 0..rounds {
        for ours_turn in [round % 2 == 0, round % 2 == 1] {
            let (side, rates, latencies) = if ours_turn {
                (ours, &mut ours_rates, &mut ours_latency)
            } else {
                (raw, &mut raw_rates, &mut raw_latency)
            };
            let result = run(side, key, duration).await?;
            rates.push(result.rate);
            latencies
                .add(&result.latencies)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(LockComparison {
        ours: ours_rates,
        raw: raw_rates,
        ours_latency: Percentiles::of(&ours_latency),
        raw_latency: Percentiles::of(&raw_latency),
    })
}

/// How long etcd takes to deliver a put to a watch created at a revision it has already
/// passed, against one created at the next revision.
pub(crate) struct UnsyncedWatch {
    /// Delivery after creating the watch at an already-passed revision (µs).
    pub past: Percentiles,
    /// Delivery after creating the watch at the next revision (µs).
    pub next: Percentiles,
}

/// etcd keeps a watch created at a revision it has already passed in its "unsynced"
/// group, which a background loop catches up every 100 ms: events reach it only then.
/// Create `samples` watches each way on a fresh key, put the key, and time delivery.
///
/// # Errors
/// A failed request or watch.
pub(crate) async fn etcd_unsynced_watch(
    client: &etcd_client::Client,
    samples: usize,
) -> BenchResult<UnsyncedWatch> {
    let mut client = client.clone();
    let (mut past, mut next) = (histogram(), histogram());
    for i in 0..samples {
        for behind in [true, false] {
            let key = format!("raw-unsynced/{i}/{behind}");
            // A write elsewhere, so the revision it answers with is the current one.
            let revision = client
                .put("raw-unsynced/tick", "x", None)
                .await?
                .header()
                .map_or(0, |h| h.revision());
            let start = if behind { revision } else { revision + 1 };
            let mut stream = client
                .watch(
                    key.as_str(),
                    Some(etcd_client::WatchOptions::new().with_start_revision(start)),
                )
                .await?;
            let started = Instant::now();
            client.put(key.as_str(), "x", None).await?;
            loop {
                let Some(response) = stream.message().await? else {
                    return Err("the etcd watch ended".into());
                };
                if !response.events().is_empty() {
                    break;
                }
            }
            record(
                if behind { &mut past } else { &mut next },
                started.elapsed(),
            );
        }
    }
    Ok(UnsyncedWatch {
        past: Percentiles::of(&past),
        next: Percentiles::of(&next),
    })
}
