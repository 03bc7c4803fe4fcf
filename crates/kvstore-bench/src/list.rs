//! Listing a large prefix on etcd: ours (`Store::list`, paged at one revision) against the
//! raw etcd-client reading the same pages the same way. A single unpaged range of this
//! prefix is over gRPC's default 4 MiB message limit, which is what `list` hit before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp};
use kvstore::Store;

use crate::measure::median;

/// Keys of the listed prefix, and their value size: 20 MiB of values.
pub const KEYS: usize = 20 * 1024;
pub const VALUE_SIZE: usize = 1024;
/// Keys per page, as `kvstore-etcd` reads them.
const PAGE_KEYS: i64 = 1000;
/// etcd's default `--max-txn-ops`.
const PUTS_PER_TXN: usize = 128;
const ROUNDS: usize = 5;

/// Write the prefix `{namespace}/big/` with the raw client.
async fn fill(raw: &mut Client, namespace: &str) -> Result<(), etcd_client::Error> {
    let value = vec![b'v'; VALUE_SIZE];
    let keys: Vec<usize> = (0..KEYS).collect();
    for chunk in keys.chunks(PUTS_PER_TXN) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("{namespace}/big/{i:06}"), value.clone(), None))
            .collect();
        raw.txn(Txn::new().and_then(puts)).await?;
    }
    Ok(())
}

/// The raw client reading every page at the first page's revision; the number of pairs.
async fn raw_list(raw: &mut Client, namespace: &str) -> Result<usize, etcd_client::Error> {
    let mut kv = raw.kv_client().max_decoding_message_size(i32::MAX as usize);
    let mut start = format!("{namespace}/big/").into_bytes();
    let end = format!("{namespace}/big0").into_bytes();
    let mut revision = 0;
    let mut count = 0;
    loop {
        let mut options = GetOptions::new()
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

/// Median milliseconds of ours and raw listing the prefix, rounds alternating which goes
/// first.
pub async fn compare(
    ours: &Arc<dyn Store>,
    raw: &mut Client,
    namespace: &str,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    fill(raw, namespace).await?;
    let mut ours_ms = Vec::new();
    let mut raw_ms = Vec::new();
    for round in 0..ROUNDS {
        for ours_turn in [round % 2 == 0, round % 2 == 1] {
            let started = Instant::now();
            let listed = if ours_turn {
                ours.list("big").await?.len()
            } else {
                raw_list(raw, namespace).await?
            };
            let elapsed = millis(started.elapsed());
            if listed != KEYS {
                return Err(format!("listed {listed} pairs, expected {KEYS}").into());
            }
            if ours_turn {
                ours_ms.push(elapsed);
            } else {
                raw_ms.push(elapsed);
            }
        }
    }
    Ok((median(ours_ms), median(raw_ms)))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
