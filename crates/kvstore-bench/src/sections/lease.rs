//! The keep-alive curve: keep-alive cost against live leases.

use std::sync::Arc;

use kvstore::Store;
use kvstore_memory::MemoryStore;

use crate::lease;
use crate::measure::{BenchResult, Timing};
use crate::report::Report;
use crate::{Section, Servers, etcd_raw, etcd_store, redis_store};

/// The keep-alive curve on memory, etcd (with raw keepers) and Redis.
pub(crate) async fn keepalive_curves(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    eprintln!("  memory keep-alive curve");
    let table = lease::curve(
        "memory",
        &memory,
        None,
        &lease::Counters::None,
        None,
        timing,
    )
    .await?;
    report.table(Section::KeepaliveCurve, &table);

    let (etcd, etcd_pid) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-leases").await?;
    let raw = etcd_raw(etcd).await?;
    let counters = lease::Counters::Etcd(etcd.address());
    eprintln!("  etcd keep-alive curve");
    let table = lease::curve("etcd", &etcd_ours, etcd_pid, &counters, Some(&raw), timing).await?;
    report.table(Section::KeepaliveCurve, &table);

    let (redis, redis_pid) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-leases").await?;
    let counters = lease::Counters::Redis(redis.url());
    eprintln!("  redis keep-alive curve");
    let table = lease::curve("redis", &redis_ours, redis_pid, &counters, None, timing).await?;
    report.table(Section::KeepaliveCurve, &table);
    Ok(())
}
