//! get / put / create-only CAS: our store against the raw client doing the same work.
//!
//! On Redis there are two raw baselines. The plain one (`GET` / `SET` / `SET NX` of a
//! string) is what a cache would do; the ratio against it is the whole cost of the
//! contract *and* of the abstraction. The "same guarantees" one ([`RedisContract`]) does
//! the minimum any store keeping the contract's write guarantees has to: one Lua script
//! per write that takes a store-wide revision (`INCR`), logs the change to a stream under
//! that revision before touching the data (`XADD … MAXLEN ~`), writes the hash
//! (`HSET value revision`) and indexes the key (`ZADD`); reads are one `HMGET` of the
//! same four hash fields ours reads. The ratio against it is the cost of our scripts'
//! extra checks (lease expiry, counter validation, CAS reads, `prev`/`tip` stamping) and
//! of the abstraction.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use kvstore::{PutOptions, Store};

use crate::measure::{Row, Target, median, sequential_latency, throughput};

/// The raw "same guarantees" write of [`RedisContract`]: KEYS revision counter, hash,
/// index, stream; ARGV key, value, stream bound, mode (`put` or `absent`).
/// Returns the revision, or 0 when `absent` found the key.
const CONTRACT_PUT: &str = r"
local hash = KEYS[2]
if ARGV[4] == 'absent' and redis.call('EXISTS', hash) == 1 then return 0 end
local rev = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], rev .. '-0',
  'op', 'put', 'key', ARGV[1], 'value', ARGV[2])
redis.call('HSET', hash, 'value', ARGV[2], 'revision', rev)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return rev
";

/// Raw Redis doing the contract's minimum (see the module docs), under its own hash tag
/// `{raw-contract}` so its counter, index and stream are apart from ours.
pub struct RedisContract {
    connection: redis::aio::MultiplexedConnection,
    script: redis::Script,
}

impl RedisContract {
    pub fn new(connection: redis::aio::MultiplexedConnection) -> RedisContract {
        RedisContract {
            connection,
            script: redis::Script::new(CONTRACT_PUT),
        }
    }

    fn hash(key: &str) -> String {
        format!("{{raw-contract}}:k:{key}")
    }

    async fn write(&self, key: &str, mode: &str) -> i64 {
        self.script
            .key("{raw-contract}:rev")
            .key(RedisContract::hash(key))
            .key("{raw-contract}:idx")
            .key("{raw-contract}:log")
            .arg(key)
            .arg(value().as_ref())
            .arg(kvstore_redis::DEFAULT_STREAM_MAX_LEN)
            .arg(mode)
            .invoke_async(&mut self.connection.clone())
            .await
            .expect("raw contract script")
    }

    async fn get(&self, key: &str) {
        // The same four fields, decoded as ours decodes them.
        let (value, revision, _create_revision, _lease): (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
        ) = redis::cmd("HMGET")
            .arg(RedisContract::hash(key))
            .arg(&["value", "revision", "create_revision", "lease"])
            .query_async(&mut self.connection.clone())
            .await
            .expect("raw HMGET");
        assert!(value.is_some() && revision.is_some());
    }
}

/// Size of every benchmark value, in bytes.
pub const VALUE_SIZE: usize = 100;
/// Keys the get benchmark reads from.
pub const KEYS: usize = 1000;

/// One side of a comparison: the same three operations on some client.
#[derive(Clone)]
pub enum Client {
    Ours(Arc<dyn Store>),
    Etcd(Box<etcd_client::Client>),
    Redis(redis::aio::MultiplexedConnection),
    /// Raw Redis with the contract's write guarantees ([`RedisContract`]).
    RedisContract(Arc<RedisContract>),
}

fn value() -> Bytes {
    Bytes::from(vec![b'v'; VALUE_SIZE])
}

/// The raw clients' keys live apart from ours.
fn raw_key(name: &str) -> String {
    format!("raw-bench/{name}")
}

impl Client {
    pub async fn put(&self, key: &str) {
        match self {
            Client::Ours(store) => {
                store
                    .put(key, value(), PutOptions::default())
                    .await
                    .expect("put");
            }
            Client::Etcd(client) => {
                client
                    .clone()
                    .put(raw_key(key), value().to_vec(), None)
                    .await
                    .expect("raw put");
            }
            Client::Redis(connection) => {
                let _: () = redis::cmd("SET")
                    .arg(raw_key(key))
                    .arg(value().as_ref())
                    .query_async(&mut connection.clone())
                    .await
                    .expect("raw SET");
            }
            Client::RedisContract(contract) => {
                assert!(contract.write(key, "put").await > 0);
            }
        }
    }

    pub async fn get(&self, key: &str) {
        match self {
            Client::Ours(store) => {
                store.get(key).await.expect("get");
            }
            Client::Etcd(client) => {
                let response = client
                    .clone()
                    .get(raw_key(key), None)
                    .await
                    .expect("raw get");
                assert!(!response.kvs().is_empty());
            }
            Client::Redis(connection) => {
                let found: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(raw_key(key))
                    .query_async(&mut connection.clone())
                    .await
                    .expect("raw GET");
                assert!(found.is_some());
            }
            Client::RedisContract(contract) => contract.get(key).await,
        }
    }

    /// Request `i` of benchmark `op`: get or put one of the [`KEYS`] keys, or create a
    /// fresh key unique to run `tag`.
    async fn run(&self, op: &str, i: usize, tag: usize) {
        match op {
            "get" => self.get(&format!("k/{}", i % KEYS)).await,
            "put" => self.put(&format!("k/{}", i % KEYS)).await,
            _ => self.create(&format!("c/{tag}/{i}")).await,
        }
    }

    /// Create-only write of a fresh key: etcd `Txn` on `CreateRevision == 0`, Redis
    /// `SET NX`, ours `atomic_put(.., None, ..)`.
    pub async fn create(&self, key: &str) {
        match self {
            Client::Ours(store) => {
                store
                    .atomic_put(key, value(), None, PutOptions::default())
                    .await
                    .expect("create");
            }
            Client::Etcd(client) => {
                let key = raw_key(key);
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value().to_vec(), None)])
                    .or_else([TxnOp::get(key, None)]);
                assert!(client.clone().txn(txn).await.expect("raw txn").succeeded());
            }
            Client::Redis(connection) => {
                let created: Option<String> = redis::cmd("SET")
                    .arg(raw_key(key))
                    .arg(value().as_ref())
                    .arg("NX")
                    .query_async(&mut connection.clone())
                    .await
                    .expect("raw SET NX");
                assert!(created.is_some());
            }
            Client::RedisContract(contract) => {
                assert!(contract.write(key, "absent").await > 0);
            }
        }
    }
}

/// How a comparison runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Which of `get`, `put` and `cas (create-only)` to measure.
    pub ops: Vec<&'static str>,
    /// Rounds per throughput measurement; the median is reported.
    pub rounds: usize,
    /// Requests per round at 64 in flight (a quarter of that at 1 in flight).
    pub count: usize,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            ops: vec!["get", "put", "cas (create-only)"],
            rounds: 3,
            count: 6000,
        }
    }
}

fn ratio_range(ours: &[f64], other: &[f64]) -> Option<(f64, f64)> {
    let ratios: Vec<f64> = ours.iter().zip(other).map(|(o, r)| o / r).collect();
    let min = ratios.iter().copied().reduce(f64::min)?;
    let max = ratios.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// Compare `ours` with `raw` (and with `contract`, a raw baseline with the same
/// guarantees, when given) on the plan's operations at 1 and 64 in flight, plus
/// single-request latency. Each round runs every client once, the first one rotating
/// from round to round; the rows carry the medians and the range of the per-round
/// (paired) ratios.
pub async fn compare(
    backend: &'static str,
    ours: Client,
    raw: Client,
    contract: Option<Client>,
    targets: (f64, f64),
    plan: &Plan,
) -> Vec<Row> {
    let (get_target, put_target) = targets;
    let mut clients = vec![ours, raw];
    clients.extend(contract);
    for i in 0..KEYS {
        for client in &clients {
            client.put(&format!("k/{i}")).await;
        }
    }
    let mut rows = Vec::new();
    let mut run = 0usize;
    for &op in &plan.ops {
        let target = if op == "get" { get_target } else { put_target };
        for in_flight in [1usize, 64] {
            let count = if in_flight == 1 {
                (plan.count / 4).max(1)
            } else {
                plan.count
            };
            let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
            for round in 0..plan.rounds.max(1) {
                run += 1;
                let tag = run;
                for n in 0..clients.len() {
                    let which = (round + n) % clients.len();
                    let client = &clients[which];
                    rounds[which].push(
                        throughput(count, in_flight, |i| {
                            let client = client.clone();
                            async move { client.run(op, i, tag).await }
                        })
                        .await,
                    );
                }
            }
            let mut spread = Vec::new();
            if let Some((min, max)) = ratio_range(&rounds[0], &rounds[1]) {
                spread.push(format!("ours/raw {min:.2}–{max:.2}"));
            }
            if let Some((min, max)) = rounds.get(2).and_then(|c| ratio_range(&rounds[0], c)) {
                spread.push(format!("ours/same guarantees {min:.2}–{max:.2}"));
            }
            rows.push(Row {
                backend,
                metric: format!("{op} throughput, {in_flight} in flight"),
                unit: "ops/s",
                ours: median(rounds[0].clone()),
                raw: Some(median(rounds[1].clone())),
                target: if op == "cas (create-only)" {
                    Target::None
                } else {
                    Target::AtLeast(target)
                },
                contract: rounds.get(2).map(|c| median(c.clone())),
                spread: format!("{} rounds: {}", plan.rounds.max(1), spread.join(", ")),
            });
        }
        let mut latencies = Vec::new();
        for client in &clients {
            run += 1;
            let tag = run;
            latencies.push(
                sequential_latency(1000, |i| {
                    let client = client.clone();
                    async move { client.run(op, i, tag).await }
                })
                .await,
            );
        }
        for (name, pick) in [("p50", 0usize), ("p99", 1)] {
            let value = |l: &crate::measure::Latency| if pick == 0 { l.p50 } else { l.p99 };
            rows.push(Row {
                backend,
                metric: format!("{op} latency {name}"),
                unit: "µs",
                ours: value(&latencies[0]),
                raw: Some(value(&latencies[1])),
                target: Target::None,
                contract: latencies.get(2).map(value),
                spread: String::new(),
            });
        }
    }
    rows
}
