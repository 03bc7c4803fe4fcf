//! Transactions (ours against etcd's raw `Txn` doing the same work), leader election
//! failover time, and ZooKeeper get/put (ours against the raw `zookeeper-client`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvstore::{Compare, CompareOp, ElectionOptions, PutOptions, Store, Txn, TxnOp};

use crate::measure::{BenchResult, Call, Plan, SideRuns, compare, millis};

/// One transaction: compare a guard key's value, then two puts; ours (side 0) against
/// etcd's raw Txn with the previous key-value asked for on each put, as ours does
/// (side 1), over `plan`.
///
/// # Errors
/// A failed request.
pub(crate) async fn txn_vs_raw_etcd(
    ours: &Arc<dyn Store>,
    raw: &etcd_client::Client,
    namespace: &str,
    plan: &Plan,
) -> BenchResult<Vec<SideRuns>> {
    ours.put("guard", Bytes::from("on"), PutOptions::default())
        .await?;
    let guard = format!("{namespace}/guard");
    let guard = guard.as_str();
    compare(plan, |call: Call| async move {
        let slot = call.i % 100;
        if call.side == 0 {
            let txn = Txn::new()
                .when([Compare::value("guard", CompareOp::Equal, "on")])
                .and_then([
                    TxnOp::put(format!("t/{slot}"), Bytes::from("a"), PutOptions::default()),
                    TxnOp::put(format!("u/{slot}"), Bytes::from("b"), PutOptions::default()),
                ]);
            if !ours.txn(txn).await?.succeeded {
                return Err("the guard compare failed".into());
            }
        } else {
            let put = || Some(etcd_client::PutOptions::new().with_prev_key());
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::value(
                    guard,
                    etcd_client::CompareOp::Equal,
                    "on",
                )])
                .and_then([
                    etcd_client::TxnOp::put(format!("raw-txn/t/{slot}"), "a", put()),
                    etcd_client::TxnOp::put(format!("raw-txn/u/{slot}"), "b", put()),
                ]);
            if !raw.clone().txn(txn).await?.succeeded() {
                return Err("the raw guard compare failed".into());
            }
        }
        Ok(())
    })
    .await
}

/// Time from a leader dying (it stops renewing, as a crash) until the next candidate,
/// already campaigning on another connection, leads; `samples` times, in ms.
///
/// # Errors
/// A failed campaign.
pub(crate) async fn election_failover(
    leader: &Arc<dyn Store>,
    next: &Arc<dyn Store>,
    ttl: Duration,
    samples: usize,
) -> BenchResult<Vec<f64>> {
    let mut times = Vec::with_capacity(samples);
    for sample in 0..samples {
        let name = format!("failover-{sample}-{}", crate::measure::next_run());
        let options = ElectionOptions { ttl };
        let first = leader
            .new_election(&name, options.clone())?
            .campaign(Bytes::from("a"))
            .await?;
        let election = next.new_election(&name, options)?;
        let waiting = tokio::spawn(async move { election.campaign(Bytes::from("b")).await });
        // Let the second candidate join the queue before the leader dies.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let died = Instant::now();
        first.abandon();
        let second = waiting.await??;
        times.push(millis(died.elapsed()));
        second.resign().await?;
    }
    Ok(times)
}

/// ZooKeeper get (`op_put == false`) or put of 100-byte values on 100 keys: ours
/// (side 0) against the raw client reading and writing plain znodes (side 1).
///
/// # Errors
/// A failed request.
pub(crate) async fn zookeeper_vs_raw(
    ours: &Arc<dyn Store>,
    raw: &zookeeper_client::Client,
    op_put: bool,
    plan: &Plan,
) -> BenchResult<Vec<SideRuns>> {
    let value = Bytes::from(vec![b'v'; crate::kv::VALUE_SIZE]);
    for i in 0..100 {
        ours.put(&format!("k/{i}"), value.clone(), PutOptions::default())
            .await?;
        let path = format!("/raw-bench-{i}");
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        match raw.create(&path, &value, &options).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let value = &value;
    compare(plan, |call: Call| async move {
        let slot = call.i % 100;
        match (call.side, op_put) {
            (0, false) => {
                ours.get(&format!("k/{slot}")).await?;
            }
            (0, true) => {
                ours.put(&format!("k/{slot}"), value.clone(), PutOptions::default())
                    .await?;
            }
            (_, false) => {
                raw.get_data(&format!("/raw-bench-{slot}")).await?;
            }
            (_, true) => {
                raw.set_data(&format!("/raw-bench-{slot}"), value, None)
                    .await?;
            }
        }
        Ok(())
    })
    .await
}
