//! get / put / create-only CAS / TTL put: our store against raw clients doing the same
//! work, and a plain baseline doing less ("the cost of the contract").
//!
//! The same work, per backend:
//! - **etcd**: the raw etcd-client with the same requests: a get; a put asking for the
//!   previous key-value (ours asks for it to tell the create revision); a `Txn` on
//!   `CreateRevision == 0` for create-only; a lease grant then a put on it for a TTL put.
//! - **Redis**: a get is one `HMGET` of the four fields ours reads from a hash of the same
//!   layout; a write is one Lua script doing what any store keeping the contract's write
//!   guarantees must: `INCR` a store-wide revision, `XADD` the change to a log under it,
//!   `HSET` value and revisions, `ZADD` the key to the prefix index (`EXISTS` first for
//!   create-only; for a TTL put also `TIME`, `ZADD` of the lease deadline and `SADD` of
//!   the key to the lease, in the same script). The plain baseline is `GET` / `SET` /
//!   `SET NX` / `SET PX` of a string: the ratio against it is the contract's cost.
//! - **memory**: a `RwLock<BTreeMap<String, Bytes>>` (no revisions, no watchers, no
//!   leases): reported only, since an in-process target is met or missed by
//!   construction.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use kvstore::{PutOptions, Store};

use crate::measure::{
    BenchResult, Call, Percentiles, Plan, SideRuns, Spread, Table, Target, Timing, compare, number,
    ratio,
};

/// Value size of the headline rows, in bytes.
pub(crate) const VALUE_SIZE: usize = 100;
/// Keys the headline gets and puts cycle through.
pub(crate) const KEYS: usize = 1000;
/// The TTL of TTL puts.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// The raw same-work write (see the module docs).
/// KEYS: revision counter, the key's hash, prefix index, change log, lease deadlines,
/// the lease's key set. ARGV: key, value, log bound, mode (`put`, `absent` or `ttl`),
/// TTL in ms, lease id, a random tip. Returns the revision, or 0 when `absent` found
/// the key.
const SAME_WORK_WRITE: &str = r"
local hash = KEYS[2]
if ARGV[4] == 'absent' and redis.call('EXISTS', hash) == 1 then return 0 end
local rev = redis.call('INCR', KEYS[1])
local lease = ''
if ARGV[4] == 'ttl' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  lease = ARGV[6]
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), lease)
  redis.call('SADD', KEYS[6], ARGV[1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], rev .. '-0', 'prev', rev - 1,
  'tip', ARGV[7], 'op', 'put', 'key', ARGV[1], 'value', ARGV[2], 'lease', lease)
if lease ~= '' then
  redis.call('HSET', hash, 'value', ARGV[2], 'revision', rev, 'create_revision', rev, 'lease', lease)
else
  redis.call('HSET', hash, 'value', ARGV[2], 'revision', rev, 'create_revision', rev)
end
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return rev
";

/// Raw Redis doing the contract's minimum (module docs), under its own hash tag `{raw}`.
pub(crate) struct RedisSameWork {
    connection: redis::aio::MultiplexedConnection,
    script: redis::Script,
}

impl RedisSameWork {
    /// The baseline on `connection`.
    pub(crate) fn new(connection: redis::aio::MultiplexedConnection) -> RedisSameWork {
        RedisSameWork {
            connection,
            script: redis::Script::new(SAME_WORK_WRITE),
        }
    }

    fn hash(key: &str) -> String {
        format!("{{raw}}:k:{key}")
    }

    async fn write(&self, key: &str, value: &[u8], mode: &str) -> BenchResult<i64> {
        let lease = if mode == "ttl" {
            (rand_id() >> 1).to_string()
        } else {
            String::new()
        };
        let revision: i64 = self
            .script
            .key("{raw}:rev")
            .key(RedisSameWork::hash(key))
            .key("{raw}:idx")
            .key("{raw}:log")
            .key("{raw}:leases")
            .key(format!("{{raw}}:lease:{lease}"))
            .arg(key)
            .arg(value)
            .arg(kvstore_redis::DEFAULT_HISTORY_CAPACITY)
            .arg(mode)
            .arg(TTL.as_millis() as u64)
            .arg(&lease)
            .arg(rand_id())
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(revision)
    }

    async fn get(&self, key: &str) -> BenchResult<()> {
        // The same four fields, decoded as ours decodes them.
        let (value, revision, _create_revision, _lease): (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
        ) = redis::cmd("HMGET")
            .arg(RedisSameWork::hash(key))
            .arg(&["value", "revision", "create_revision", "lease"])
            .query_async(&mut self.connection.clone())
            .await?;
        found(value.is_some() && revision.is_some(), key)
    }
}

/// A random 64-bit number (lease ids and tips).
fn rand_id() -> u64 {
    rand::random()
}

/// An error unless `present`.
fn found(present: bool, key: &str) -> BenchResult<()> {
    if present {
        Ok(())
    } else {
        Err(format!("key {key:?} missing").into())
    }
}

/// One side of a comparison.
#[derive(Clone)]
pub(crate) enum Client {
    /// Our store.
    Ours(Arc<dyn Store>),
    /// The in-memory baseline.
    MemoryRaw(Arc<RwLock<BTreeMap<String, Bytes>>>),
    /// The raw etcd client, same requests as ours.
    Etcd(Box<etcd_client::Client>),
    /// Raw Redis doing the same work as ours.
    RedisSameWork(Arc<RedisSameWork>),
    /// Raw Redis doing the plain thing (`GET`/`SET`).
    RedisPlain(redis::aio::MultiplexedConnection),
}

/// The operations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read one of the workload's keys.
    Get,
    /// Overwrite one of the workload's keys.
    Put,
    /// Create a fresh key only if absent.
    Create,
    /// Overwrite one of the workload's keys with a TTL.
    TtlPut,
}

impl Op {
    /// The operation's name in the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Create => "create-only CAS",
            Op::TtlPut => "put with TTL",
        }
    }
}

/// What a comparison reads and writes: keys `{prefix}/{i}` and one value.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    keys: Arc<Vec<String>>,
    value: Bytes,
}

impl Workload {
    /// `count` keys under `prefix`, each written with `value_size` bytes.
    pub(crate) fn new(prefix: &str, count: usize, value_size: usize) -> Workload {
        Workload {
            keys: Arc::new(
                (0..count.max(1))
                    .map(|i| format!("{prefix}/{i:05}"))
                    .collect(),
            ),
            value: Bytes::from(vec![b'v'; value_size]),
        }
    }

    fn key(&self, i: u64) -> &str {
        &self.keys[(i % self.keys.len() as u64) as usize]
    }
}

/// The raw etcd client's keys live apart from ours.
fn etcd_raw_key(key: &str) -> String {
    format!("raw-bench/{key}")
}

impl Client {
    /// Write every key of `work` (before gets).
    pub(crate) async fn fill(&self, work: &Workload) -> BenchResult<()> {
        for key in work.keys.iter() {
            self.put(key, work.value.clone()).await?;
        }
        Ok(())
    }

    /// Run request `call` of `op` on `work`.
    pub(crate) async fn run(&self, op: Op, call: Call, work: &Workload) -> BenchResult<()> {
        match op {
            Op::Get => self.get(work.key(call.i)).await,
            Op::Put => self.put(work.key(call.i), work.value.clone()).await,
            Op::Create => {
                self.create(&format!("c/{}/{}", call.run, call.i), work.value.clone())
                    .await
            }
            Op::TtlPut => self.ttl_put(work.key(call.i), work.value.clone()).await,
        }
    }

    async fn get(&self, key: &str) -> BenchResult<()> {
        match self {
            Client::Ours(store) => {
                store.get(key).await?;
                Ok(())
            }
            Client::MemoryRaw(map) => {
                let value = map
                    .read()
                    .map_err(|_| "poisoned")?
                    .get(key)
                    .cloned()
                    .is_some();
                found(std::hint::black_box(value), key)
            }
            Client::Etcd(client) => {
                let response = client.clone().get(etcd_raw_key(key), None).await?;
                found(!response.kvs().is_empty(), key)
            }
            Client::RedisSameWork(raw) => raw.get(key).await,
            Client::RedisPlain(connection) => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(format!("plain:{key}"))
                    .query_async(&mut connection.clone())
                    .await?;
                found(value.is_some(), key)
            }
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> BenchResult<()> {
        match self {
            Client::Ours(store) => {
                store.put(key, value, PutOptions::default()).await?;
            }
            Client::MemoryRaw(map) => {
                std::hint::black_box(
                    map.write()
                        .map_err(|_| "poisoned")?
                        .insert(key.to_owned(), value),
                );
            }
            Client::Etcd(client) => {
                let options = etcd_client::PutOptions::new().with_prev_key();
                client
                    .clone()
                    .put(etcd_raw_key(key), value.to_vec(), Some(options))
                    .await?;
            }
            Client::RedisSameWork(raw) => {
                raw.write(key, &value, "put").await?;
            }
            Client::RedisPlain(connection) => {
                let _: () = redis::cmd("SET")
                    .arg(format!("plain:{key}"))
                    .arg(value.as_ref())
                    .query_async(&mut connection.clone())
                    .await?;
            }
        }
        Ok(())
    }

    async fn create(&self, key: &str, value: Bytes) -> BenchResult<()> {
        let created = match self {
            Client::Ours(store) => {
                store
                    .atomic_put(key, value, None, PutOptions::default())
                    .await?;
                true
            }
            Client::MemoryRaw(map) => {
                let mut map = map.write().map_err(|_| "poisoned")?;
                match map.entry(key.to_owned()) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(value);
                        true
                    }
                    std::collections::btree_map::Entry::Occupied(_) => false,
                }
            }
            Client::Etcd(client) => {
                let key = etcd_raw_key(key);
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        value.to_vec(),
                        Some(etcd_client::PutOptions::new().with_prev_key()),
                    )])
                    .or_else([TxnOp::get(key, None)]);
                client.clone().txn(txn).await?.succeeded()
            }
            Client::RedisSameWork(raw) => raw.write(key, &value, "absent").await? > 0,
            Client::RedisPlain(connection) => {
                let created: Option<String> = redis::cmd("SET")
                    .arg(format!("plain:{key}"))
                    .arg(value.as_ref())
                    .arg("NX")
                    .query_async(&mut connection.clone())
                    .await?;
                created.is_some()
            }
        };
        if created {
            Ok(())
        } else {
            Err(format!("create of fresh key {key:?} found it present").into())
        }
    }

    async fn ttl_put(&self, key: &str, value: Bytes) -> BenchResult<()> {
        match self {
            Client::Ours(store) => {
                store.put(key, value, PutOptions::with_ttl(TTL)).await?;
            }
            Client::MemoryRaw(_) => return Err("no TTL put on the memory baseline".into()),
            Client::Etcd(client) => {
                let mut client = client.clone();
                let lease = client.lease_grant(TTL.as_secs() as i64, None).await?.id();
                let options = etcd_client::PutOptions::new()
                    .with_lease(lease)
                    .with_prev_key();
                client
                    .put(etcd_raw_key(key), value.to_vec(), Some(options))
                    .await?;
            }
            Client::RedisSameWork(raw) => {
                raw.write(key, &value, "ttl").await?;
            }
            Client::RedisPlain(connection) => {
                let _: () = redis::cmd("SET")
                    .arg(format!("plain:{key}"))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(TTL.as_millis() as u64)
                    .query_async(&mut connection.clone())
                    .await?;
            }
        }
        Ok(())
    }
}

/// The tables the key-value comparisons fill.
#[derive(Debug)]
pub(crate) struct KvTables {
    /// Throughput rows with their per-round ratios and verdicts.
    pub throughput: Table,
    /// Latency percentiles from the one-in-flight rounds.
    pub latency: Table,
}

impl KvTables {
    /// Empty tables.
    pub(crate) fn new(timing: &Timing) -> KvTables {
        KvTables {
            throughput: Table::new(
                "Throughput: ours against the raw client doing the same work",
                format!(
                    "Each row runs {} paired rounds; in every round each side runs for the time shown, ours first on odd rounds and in reverse order on even rounds, after an unmeasured warm-up. *ours* and *raw* are medians over the rounds; the ratio is ours/raw **per round**, shown as min / median / max. A verdict is *met* only when every round clears the target and *MISSED* only when none does; otherwise *mixed*. The *plain* column (Redis `GET`/`SET`/`SET NX`/`SET PX`) does less than the contract needs: ours/plain is the cost of the contract, not of the abstraction. Values are {VALUE_SIZE} bytes; gets and puts cycle over {KEYS} keys. etcd writes are bound by raft and an fsync per request, which hides most client cost: a put verdict there says little about the client. A TTL put is a lease grant then a put with the lease: two round trips for ours and for raw etcd; the raw Redis side does both in one script (what a one-round-trip TTL put could do), and plain is `SET PX`. Memory rows have no target: in process, any target is met or missed by construction.",
                    timing.rounds
                ),
                &[
                    "backend",
                    "operation",
                    "in flight",
                    "rounds",
                    "ours ops/s",
                    "raw (same work) ops/s",
                    "ours/raw per round: min / median / max",
                    "target",
                    "verdict",
                    "plain ops/s",
                    "ours/plain (cost of the contract)",
                ],
            ),
            latency: Table::new(
                "Latency at one request in flight",
                "Every request of the one-in-flight rounds above, in an HDR histogram (3 significant digits); µs.",
                &[
                    "backend",
                    "operation",
                    "samples ours / raw",
                    "ours p50 / p99 / p99.9",
                    "raw p50 / p99 / p99.9",
                    "plain p50 / p99 / p99.9",
                ],
            ),
        }
    }
}

/// A row's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSpec {
    /// The operation.
    pub op: Op,
    /// Requests in flight per side.
    pub in_flight: usize,
    /// How long each side runs per round.
    pub duration: Duration,
    /// What ours/raw must show.
    pub target: Target,
}

/// Compare `clients` (ours, raw same work, and optionally plain) on `spec`, and add the
/// throughput row (and at one in flight the latency row) to `tables`.
///
/// # Errors
/// A failed request.
pub(crate) async fn compare_row(
    tables: &mut KvTables,
    backend: &str,
    clients: &[Client],
    work: &Workload,
    timing: &Timing,
    spec: RowSpec,
) -> BenchResult<()> {
    let mut plan = Plan::new(timing, spec.in_flight, spec.duration, clients.len());
    if clients.len() > 2 {
        // The plain baseline is context, not a verdict: a quarter of the time.
        plan = plan.with_last_side(spec.duration / 4);
    }
    eprintln!(
        "  {backend} {} @{}: {} rounds × {} sides × {:?}",
        spec.op.name(),
        spec.in_flight,
        plan.rounds,
        clients.len(),
        spec.duration
    );
    let results = compare(&plan, |call| async move {
        clients[call.side].run(spec.op, call, work).await
    })
    .await?;
    add_rows(tables, backend, &results, &plan, spec);
    Ok(())
}

/// Add the rows of one [`RowSpec`] comparison.
fn add_rows(
    tables: &mut KvTables,
    backend: &str,
    results: &[SideRuns],
    plan: &Plan,
    spec: RowSpec,
) {
    add_comparison_row(tables, backend, spec.op.name(), results, plan, spec.target);
}

/// Add a throughput row (and, when latencies were recorded, a latency row) for a
/// comparison of ours (side 0) against raw (side 1) and optionally plain (side 2).
pub(crate) fn add_comparison_row(
    tables: &mut KvTables,
    backend: &str,
    operation: &str,
    results: &[SideRuns],
    plan: &Plan,
    target: Target,
) {
    let ours = &results[0];
    let raw = &results[1];
    let plain = results.get(2);
    let spread = Spread::ratios(&ours.rates, &raw.rates);
    let plain_spread = plain.map(|p| Spread::ratios(&ours.rates, &p.rates));
    let duration = plan.durations.first().copied().unwrap_or_default();
    tables.throughput.row(vec![
        backend.to_owned(),
        operation.to_owned(),
        plan.in_flight.to_string(),
        format!("{} × {:.2} s", plan.rounds, duration.as_secs_f64()),
        number(ours.median()),
        number(raw.median()),
        spread.text(),
        target.text(""),
        target.verdict(&spread),
        plain.map(|p| number(p.median())).unwrap_or_default(),
        plain_spread.map(|s| ratio(s.median())).unwrap_or_default(),
    ]);
    let percentiles =
        |side: Option<&SideRuns>| side.and_then(|s| s.latency.as_ref()).map(Percentiles::of);
    if let (Some(o), Some(r)) = (percentiles(Some(ours)), percentiles(Some(raw))) {
        let text =
            |p: Percentiles| format!("{} / {} / {}", number(p.p50), number(p.p99), number(p.p999));
        tables.latency.row(vec![
            backend.to_owned(),
            operation.to_owned(),
            format!("{} / {}", o.count, r.count),
            text(o),
            text(r),
            percentiles(plain).map(text).unwrap_or_default(),
        ]);
    }
}

/// The in-flight curve of one backend: get and put throughput at 1, 4, 16, 64 and 256
/// requests in flight, ours against the same-work baseline.
///
/// # Errors
/// A failed request.
pub(crate) async fn in_flight_curve(
    backend: &str,
    clients: &[Client],
    work: &Workload,
    timing: &Timing,
) -> BenchResult<Table> {
    let mut table = Table::new(
        format!("{backend}: throughput against requests in flight"),
        format!(
            "ops/s, ours against the raw same-work baseline; each point is {} alternating passes of {:.2} s per side, ratio = median of the per-pass ratios. {VALUE_SIZE}-byte values, {KEYS} keys.",
            timing.passes,
            timing.step.as_secs_f64()
        ),
        &[
            "in flight",
            "get ours",
            "get raw",
            "get ours/raw",
            "put ours",
            "put raw",
            "put ours/raw",
        ],
    );
    let sides = &clients[..2];
    for in_flight in [1usize, 4, 16, 64, 256] {
        let mut cells = vec![in_flight.to_string()];
        for op in [Op::Get, Op::Put] {
            let plan = Plan {
                rounds: timing.passes.max(1),
                ..Plan::new(timing, in_flight, timing.step, 2).without_latency()
            };
            let results = compare(&plan, |call| async move {
                sides[call.side].run(op, call, work).await
            })
            .await?;
            let spread = Spread::ratios(&results[0].rates, &results[1].rates);
            cells.extend([
                number(results[0].median()),
                number(results[1].median()),
                ratio(spread.median()),
            ]);
        }
        table.row(cells);
    }
    Ok(table)
}

/// The value-size curve of one backend: get and put at one in flight with values of
/// 10 B to 1 MiB, ours against the same-work baseline.
///
/// # Errors
/// A failed request.
pub(crate) async fn value_size_curve(
    backend: &str,
    clients: &[Client],
    timing: &Timing,
) -> BenchResult<Table> {
    let mut table = Table::new(
        format!("{backend}: get and put against value size"),
        format!(
            "One request in flight, 16 keys; ops/s and MiB/s of values, ours against the raw same-work baseline; each point is {} alternating passes of {:.2} s per side.",
            timing.passes,
            timing.step.as_secs_f64()
        ),
        &[
            "value size",
            "get ours ops/s",
            "get raw ops/s",
            "get ours/raw",
            "put ours ops/s",
            "put raw ops/s",
            "put ours/raw",
            "put ours MiB/s",
        ],
    );
    let sides = &clients[..2];
    let sizes: &[usize] = if timing.quick {
        &[10, 1024, 100 * 1024]
    } else {
        &[10, 100, 1024, 10 * 1024, 100 * 1024, 1024 * 1024]
    };
    for &size in sizes {
        let work = Workload::new(&format!("size-{size}"), 16, size);
        for client in sides {
            client.fill(&work).await?;
        }
        let work = &work;
        let mut cells = vec![size_text(size)];
        let mut put_rate = 0.0;
        for op in [Op::Get, Op::Put] {
            let plan = Plan {
                rounds: timing.passes.max(1),
                ..Plan::new(timing, 1, timing.step, 2).without_latency()
            };
            let results = compare(&plan, |call| async move {
                sides[call.side].run(op, call, work).await
            })
            .await?;
            let spread = Spread::ratios(&results[0].rates, &results[1].rates);
            cells.extend([
                number(results[0].median()),
                number(results[1].median()),
                ratio(spread.median()),
            ]);
            put_rate = results[0].median();
        }
        cells.push(number(put_rate * size as f64 / (1024.0 * 1024.0)));
        table.row(cells);
    }
    Ok(table)
}

/// `10 B`, `1 KiB`, `1 MiB`.
pub(crate) fn size_text(bytes: usize) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Memory-store gets from OS threads allowed on every CPU (the servers are idle
/// meanwhile), ours against a `RwLock<BTreeMap>`: whether reads serialise.
///
/// # Errors
/// A failed get.
pub(crate) fn memory_threads(
    ours: &Arc<dyn Store>,
    raw: &Arc<RwLock<BTreeMap<String, Bytes>>>,
    work: &Workload,
    timing: &Timing,
) -> BenchResult<Table> {
    let cpus = crate::machine::online_cpus();
    let mut table = Table::new(
        "memory: gets across threads",
        format!(
            "Gets from 1 to {cpus} OS threads, each allowed on every CPU (the servers are idle meanwhile), ours against a `RwLock<BTreeMap>`; {} paired rounds of {:.2} s per side in alternating order; ops/s summed over the threads.",
            timing.rounds,
            timing.step.as_secs_f64()
        ),
        &[
            "threads",
            "ours ops/s",
            "raw ops/s",
            "ours/raw per round: min / median / max",
            "ours: speed-up over 1 thread",
            "raw: speed-up over 1 thread",
        ],
    );
    let handle = tokio::runtime::Handle::current();
    let mut single = (0.0, 0.0);
    for threads in 1..=cpus {
        let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
        for round in 0..timing.rounds.max(1) {
            for ours_turn in [round % 2 == 0, round % 2 == 1] {
                let rate = threaded_gets(threads, timing.step, |i| {
                    let key = work.key(i);
                    if ours_turn {
                        let _runtime = handle.enter();
                        futures::executor::block_on(ours.get(key)).map(|_| ())?;
                        Ok(())
                    } else {
                        let present = raw
                            .read()
                            .map_err(|_| "poisoned")?
                            .get(key)
                            .cloned()
                            .is_some();
                        found(std::hint::black_box(present), key)
                    }
                })?;
                if ours_turn {
                    ours_rates.push(rate);
                } else {
                    raw_rates.push(rate);
                }
            }
        }
        let (ours_median, raw_median) = (
            crate::measure::median(&ours_rates),
            crate::measure::median(&raw_rates),
        );
        if threads == 1 {
            single = (ours_median, raw_median);
        }
        table.row(vec![
            threads.to_string(),
            number(ours_median),
            number(raw_median),
            Spread::ratios(&ours_rates, &raw_rates).text(),
            ratio(ours_median / single.0),
            ratio(raw_median / single.1),
        ]);
    }
    Ok(table)
}

/// `threads` OS threads calling `get(i)` until `duration` is over; total calls per second.
fn threaded_gets<F>(threads: usize, duration: Duration, get: F) -> BenchResult<f64>
where
    F: Fn(u64) -> BenchResult<()> + Sync,
{
    let started = std::time::Instant::now();
    let deadline = started + duration;
    let counts: Vec<BenchResult<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let get = &get;
                scope.spawn(move || {
                    crate::machine::unpin_current_thread();
                    let mut done = 0u64;
                    let mut i = t as u64 * 7919;
                    while std::time::Instant::now() < deadline {
                        for _ in 0..64 {
                            get(i)?;
                            i += 1;
                            done += 1;
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a get thread panicked".into()))
            })
            .collect()
    });
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
