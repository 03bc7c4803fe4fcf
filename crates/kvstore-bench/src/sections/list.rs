//! The list curve: list and watch-snapshot time against prefix size.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use kvstore::Store;
use kvstore_memory::MemoryStore;

use crate::list;
use crate::measure::{BenchResult, Timing};
use crate::report::Report;
use crate::{Section, Servers, etcd_raw, etcd_store, redis_raw, redis_store};

/// The list curve on memory, etcd and Redis.
pub(crate) async fn list_curves(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let memory = MemoryStore::new();
    let memory_store: Arc<dyn Store> = Arc::new(memory);
    let memory_raw = list::RawLister::Memory(Arc::new(RwLock::new(BTreeMap::new())));
    eprintln!("  memory list curve");
    let table = list::curve("memory", &memory_store, None, &memory_raw, timing).await?;
    report.table(Section::ListCurve, &table);

    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-list").await?;
    let etcd_probe = etcd_store(etcd, "bench-list").await?;
    let etcd_lister = list::RawLister::Etcd {
        client: Box::new(etcd_raw(etcd).await?),
        root: "bench-list/".into(),
    };
    eprintln!("  etcd list curve");
    let table = list::curve("etcd", &etcd_ours, Some(&etcd_probe), &etcd_lister, timing).await?;
    report.table(Section::ListCurve, &table);

    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-list").await?;
    let redis_probe = redis_store(redis, "bench-list").await?;
    let redis_lister = list::RawLister::Redis {
        connection: redis_raw(redis, true).await?,
        namespace: "bench-list".into(),
    };
    eprintln!("  redis list curve");
    let table = list::curve(
        "redis",
        &redis_ours,
        Some(&redis_probe),
        &redis_lister,
        timing,
    )
    .await?;
    report.table(Section::ListCurve, &table);
    Ok(())
}
