//! Transactions (ours against etcd's raw `Txn` doing the same work), leader election
//! failover time, and ZooKeeper get/put (ours against the raw `zookeeper-client`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore::{Compare, CompareOp, ElectionOptions, PutOptions, Store, Txn, TxnOp};

use crate::measure::{median, throughput};

/// Requests per throughput round, and rounds.
const COUNT: usize = 3000;
const ROUNDS: usize = 3;

/// One transaction: compare a guard key's value, then two puts; ours and etcd's raw Txn
/// (with the previous key-value asked for, as ours does) alternating per round.
/// Returns median ops/s (ours, raw) at `in_flight`.
pub async fn txn_vs_raw_etcd(
    ours: &Arc<dyn Store>,
    raw: &etcd_client::Client,
    namespace: &str,
    in_flight: usize,
) -> (f64, f64) {
    ours.put("guard", Bytes::from("on"), PutOptions::default())
        .await
        .expect("guard");
    let guard = format!("{namespace}/guard");
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for ours_turn in [round % 2 == 0, round % 2 == 1] {
            let rate = if ours_turn {
                throughput(COUNT, in_flight, |i| {
                    let ours = ours.clone();
                    async move {
                        let txn = Txn::new()
                            .when([Compare::value("guard", CompareOp::Equal, "on")])
                            .and_then([
                                TxnOp::put(
                                    format!("t/{}", i % 100),
                                    Bytes::from("a"),
                                    PutOptions::default(),
                                ),
                                TxnOp::put(
                                    format!("u/{}", i % 100),
                                    Bytes::from("b"),
                                    PutOptions::default(),
                                ),
                            ]);
                        ours.txn(txn).await.expect("txn");
                    }
                })
                .await
            } else {
                throughput(COUNT, in_flight, |i| {
                    let mut raw = raw.clone();
                    let guard = guard.clone();
                    async move {
                        let put = || Some(etcd_client::PutOptions::new().with_prev_key());
                        let txn = etcd_client::Txn::new()
                            .when([etcd_client::Compare::value(
                                guard,
                                etcd_client::CompareOp::Equal,
                                "on",
                            )])
                            .and_then([
                                etcd_client::TxnOp::put(
                                    format!("raw-txn/t/{}", i % 100),
                                    "a",
                                    put(),
                                ),
                                etcd_client::TxnOp::put(
                                    format!("raw-txn/u/{}", i % 100),
                                    "b",
                                    put(),
                                ),
                            ]);
                        raw.txn(txn).await.expect("raw txn");
                    }
                })
                .await
            };
            if ours_turn {
                ours_rates.push(rate);
            } else {
                raw_rates.push(rate);
            }
        }
    }
    (median(ours_rates), median(raw_rates))
}

/// Time from a leader dying (it stops renewing, as a crash) until the next candidate,
/// already campaigning on another connection, leads; median of `samples`, in ms.
pub async fn election_failover(
    leader: &Arc<dyn Store>,
    next: &Arc<dyn Store>,
    ttl: Duration,
    samples: usize,
) -> f64 {
    let mut times = Vec::with_capacity(samples);
    for sample in 0..samples {
        let name = format!("failover-{sample}");
        let options = ElectionOptions { ttl };
        let first = leader
            .new_election(&name, options.clone())
            .expect("election")
            .campaign(Bytes::from("a"))
            .await
            .expect("campaign");
        let election = next.new_election(&name, options).expect("election");
        let waiting = tokio::spawn(async move { election.campaign(Bytes::from("b")).await });
        // Let the second candidate join the queue before the leader dies.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let died = Instant::now();
        first.abandon();
        let second = waiting.await.expect("task").expect("campaign");
        times.push(died.elapsed().as_secs_f64() * 1000.0);
        second.resign().await.expect("resign");
    }
    median(times)
}

/// ZooKeeper get and put: ours against the raw client reading and writing one znode.
/// Returns median ops/s (ours get, raw get, ours put, raw put) at `in_flight`.
pub async fn zookeeper_vs_raw(
    ours: &Arc<dyn Store>,
    raw: &zookeeper_client::Client,
    in_flight: usize,
) -> (f64, f64, f64, f64) {
    let value = Bytes::from(vec![b'v'; crate::kv::VALUE_SIZE]);
    for i in 0..100 {
        ours.put(&format!("k/{i}"), value.clone(), PutOptions::default())
            .await
            .expect("put");
        let path = format!("/raw-bench-{i}");
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        let _ = raw.create(&path, &value, &options).await;
    }
    let (mut og, mut rg, mut op, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        og.push(
            throughput(COUNT, in_flight, |i| {
                let ours = ours.clone();
                async move {
                    ours.get(&format!("k/{}", i % 100)).await.expect("get");
                }
            })
            .await,
        );
        rg.push(
            throughput(COUNT, in_flight, |i| {
                let raw = raw.clone();
                async move {
                    raw.get_data(&format!("/raw-bench-{}", i % 100))
                        .await
                        .expect("raw get");
                }
            })
            .await,
        );
        op.push(
            throughput(COUNT, in_flight, |i| {
                let (ours, value) = (ours.clone(), value.clone());
                async move {
                    ours.put(&format!("k/{}", i % 100), value, PutOptions::default())
                        .await
                        .expect("put");
                }
            })
            .await,
        );
        rp.push(
            throughput(COUNT, in_flight, |i| {
                let (raw, value) = (raw.clone(), value.clone());
                async move {
                    raw.set_data(&format!("/raw-bench-{}", i % 100), &value, None)
                        .await
                        .expect("raw put");
                }
            })
            .await,
        );
    }
    (median(og), median(rg), median(op), median(rp))
}
