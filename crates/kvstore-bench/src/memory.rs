//! The memory store's get and put against a plain `RwLock<BTreeMap>`, in ns per op.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Instant;

use bytes::Bytes;
use kvstore::{PutOptions, Store};
use kvstore_memory::MemoryStore;

const KEYS: usize = 1000;
const OPS: usize = 300_000;

fn key(i: usize) -> String {
    format!("bench/key/{:04}", i % KEYS)
}

/// (ours get, baseline get, ours put, baseline put) in nanoseconds per operation.
pub async fn compare() -> (f64, f64, f64, f64) {
    let store = MemoryStore::new();
    let baseline: RwLock<BTreeMap<String, Bytes>> = RwLock::new(BTreeMap::new());
    let value = Bytes::from(vec![b'v'; 100]);
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    for k in &keys {
        store
            .put(k, value.clone(), PutOptions::default())
            .await
            .expect("put");
        baseline
            .write()
            .expect("lock")
            .insert(k.clone(), value.clone());
    }
    let per_op = |started: Instant| started.elapsed().as_nanos() as f64 / OPS as f64;

    let started = Instant::now();
    for i in 0..OPS {
        std::hint::black_box(store.get(&keys[i % KEYS]).await.expect("get"));
    }
    let ours_get = per_op(started);
    let started = Instant::now();
    for i in 0..OPS {
        std::hint::black_box(baseline.read().expect("lock").get(&keys[i % KEYS]).cloned());
    }
    let base_get = per_op(started);

    let started = Instant::now();
    for i in 0..OPS {
        std::hint::black_box(
            store
                .put(&keys[i % KEYS], value.clone(), PutOptions::default())
                .await
                .expect("put"),
        );
    }
    let ours_put = per_op(started);
    let started = Instant::now();
    for i in 0..OPS {
        std::hint::black_box(
            baseline
                .write()
                .expect("lock")
                .insert(keys[i % KEYS].clone(), value.clone()),
        );
    }
    let base_put = per_op(started);
    (ours_get, base_get, ours_put, base_put)
}
