//! get / put / create-only CAS: our store against the raw client doing the same work.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use kvstore::{PutOptions, Store};

use crate::measure::{Row, Target, median, sequential_latency, throughput};

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
        }
    }
}

/// Rounds per measurement; the median is reported.
const ROUNDS: usize = 3;

/// Compare `ours` and `raw` on get, put and create at 1 and 64 in flight, plus
/// single-request latency.
pub async fn compare(
    backend: &'static str,
    ours: Client,
    raw: Client,
    targets: (f64, f64),
) -> Vec<Row> {
    let (get_target, put_target) = targets;
    for i in 0..KEYS {
        ours.put(&format!("k/{i}")).await;
        raw.put(&format!("k/{i}")).await;
    }
    let mut rows = Vec::new();
    let mut run = 0usize;
    for (op, target) in [
        ("get", get_target),
        ("put", put_target),
        ("cas (create-only)", put_target),
    ] {
        for in_flight in [1usize, 64] {
            let count = if in_flight == 1 { 1500 } else { 6000 };
            let mut ours_rounds = Vec::new();
            let mut raw_rounds = Vec::new();
            for _ in 0..ROUNDS {
                run += 1;
                for (client, rounds) in [(&ours, &mut ours_rounds), (&raw, &mut raw_rounds)] {
                    let tag = run;
                    rounds.push(
                        throughput(count, in_flight, |i| {
                            let client = client.clone();
                            async move { client.run(op, i, tag).await }
                        })
                        .await,
                    );
                }
            }
            rows.push(Row {
                backend,
                metric: format!("{op} throughput, {in_flight} in flight"),
                unit: "ops/s",
                ours: median(ours_rounds),
                raw: Some(median(raw_rounds)),
                target: if op == "cas (create-only)" {
                    Target::None
                } else {
                    Target::AtLeast(target)
                },
            });
        }
        let mut latencies = Vec::new();
        for client in [&ours, &raw] {
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
            });
        }
    }
    rows
}
