//! Lock acquire + release round trips under contention: ours against etcd's Lock RPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::{LockOptions, Store};

const TASKS: usize = 4;
const ROUNDS_PER_TASK: usize = 50;
const TTL: Duration = Duration::from_secs(10);

/// Acquire+release per second with `TASKS` tasks contending on one key.
pub async fn ours(stores: &[Arc<dyn Store>]) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = stores[t % stores.len()].clone();
            tokio::spawn(async move {
                let locker = store
                    .new_lock(
                        "bench/lock",
                        LockOptions {
                            ttl: TTL,
                            ..LockOptions::default()
                        },
                    )
                    .expect("locker");
                for _ in 0..ROUNDS_PER_TASK {
                    locker
                        .lock()
                        .await
                        .expect("lock")
                        .unlock()
                        .await
                        .expect("unlock");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    (TASKS * ROUNDS_PER_TASK) as f64 / started.elapsed().as_secs_f64()
}

/// The same with etcd's Lock RPC (`concurrency` service): grant a lease, lock, unlock,
/// revoke — what a raw etcd user does for each acquisition.
pub async fn raw_etcd(client: &etcd_client::Client) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..ROUNDS_PER_TASK {
                    let lease = client
                        .lease_grant(TTL.as_secs() as i64, None)
                        .await
                        .expect("grant")
                        .id();
                    let held = client
                        .lock(
                            "raw-bench/lock",
                            Some(etcd_client::LockOptions::new().with_lease(lease)),
                        )
                        .await
                        .expect("lock");
                    client.unlock(held.key()).await.expect("unlock");
                    client.lease_revoke(lease).await.expect("revoke");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    (TASKS * ROUNDS_PER_TASK) as f64 / started.elapsed().as_secs_f64()
}
