//! The election section: failover time on etcd and Redis.

use std::time::Duration;

use crate::coordination;
use crate::measure::{BenchResult, Spread, Table, Timing, spread_ms};
use crate::report::Report;
use crate::{Section, Servers, etcd_store, redis_store};

/// Election failover on etcd and Redis.
pub(crate) async fn elections(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let samples = if timing.quick { 1 } else { 3 };
    let ttl = Duration::from_secs(2);
    let mut table = Table::new(
        "Election failover",
        format!(
            "A leader stops renewing (as a crash) with a second candidate already campaigning on another connection; time until the second leads, {samples} samples, ms min / median / max. Lease TTL {} s: the floor is the TTL.",
            ttl.as_secs()
        ),
        &["backend", "failover ms: min / median / max"],
    );
    let (etcd, _) = servers.etcd()?;
    let etcd_pair = (
        etcd_store(etcd, "bench-elect").await?,
        etcd_store(etcd, "bench-elect").await?,
    );
    let (redis, _) = servers.redis()?;
    let redis_pair = (
        redis_store(redis, "bench-elect").await?,
        redis_store(redis, "bench-elect").await?,
    );
    for (backend, (leader, next)) in [("etcd", etcd_pair), ("redis", redis_pair)] {
        eprintln!("  {backend} election failover");
        let times = coordination::election_failover(&leader, &next, ttl, samples).await?;
        table.row(vec![backend.into(), spread_ms(&Spread::of(times))]);
    }
    report.table(Section::Election, &table);
    Ok(())
}
