//! The serving section: requests through the gateway under provider faults.

use crate::measure::BenchResult;
use crate::report::Report;
use crate::serving;
use crate::{Section, Servers, etcd_store, redis_store};

/// Requests through the gateway while a provider crashes or all restart in turn, on etcd
/// and Redis ([`serving`]).
pub(crate) async fn serving_rows(servers: &mut Servers, report: &mut Report) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd = etcd_store(etcd, "bench-serving").await?;
    let (redis, _) = servers.redis()?;
    let redis = redis_store(redis, "bench-serving").await?;
    let table = serving::table(&[("etcd", etcd), ("redis", redis)]).await?;
    report.table(Section::Serving, &table);
    Ok(())
}
