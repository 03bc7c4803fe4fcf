//! The key-value sections: get / put / create-only CAS / TTL put on etcd, Redis and
//! memory, etcd transactions and ZooKeeper, all rows of the shared key-value tables
//! ([`KvTables`]); and the curves against requests in flight and value size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use kvstore::Store;
use kvstore::layer::{LayerExt, ObserveLayer};
use kvstore_memory::MemoryStore;

use crate::kv::{self, Client, KvTables, Op, RowSpec, Workload};
use crate::measure::{BenchResult, Plan, Target, Timing};
use crate::report::Report;
use crate::{
    Section, Servers, coordination, etcd_raw, etcd_store, machine, redis_raw, redis_store,
};

/// etcd: get and put are the headline rows; create-only CAS and TTL put are secondary.
pub(crate) async fn etcd_kv(
    servers: &mut Servers,
    timing: &Timing,
    kv: &mut KvTables,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let clients = [
        Client::Ours(etcd_store(etcd, "bench").await?),
        Client::Etcd(Box::new(etcd_raw(etcd).await?)),
    ];
    let work = Workload::new("k", kv::KEYS, kv::VALUE_SIZE);
    for client in &clients {
        client.fill(&work).await?;
    }
    let rows = [
        (Op::Get, 1, timing.round, Target::AtLeast(0.9)),
        (Op::Get, 64, timing.round, Target::AtLeast(0.9)),
        (Op::Put, 1, timing.round, Target::AtLeast(0.9)),
        (Op::Put, 64, timing.round, Target::AtLeast(0.9)),
        (Op::Create, 1, timing.short_round, Target::None),
        (Op::Create, 64, timing.short_round, Target::None),
        (Op::TtlPut, 1, timing.short_round, Target::None),
        (Op::TtlPut, 64, timing.short_round, Target::None),
    ];
    for (op, in_flight, duration, target) in rows {
        let spec = RowSpec {
            op,
            in_flight,
            duration,
            target,
        };
        kv::compare_row(kv, "etcd", &clients, &work, timing, spec).await?;
    }
    Ok(())
}

/// Redis: ours, the raw same-work baseline, and plain GET/SET.
pub(crate) async fn redis_kv(
    servers: &mut Servers,
    timing: &Timing,
    nodelay: bool,
    kv: &mut KvTables,
) -> BenchResult<()> {
    let (redis, _) = servers.redis()?;
    let same_work = Arc::new(kv::RedisSameWork::new(redis_raw(redis, nodelay).await?));
    let plain = redis_raw(redis, nodelay).await?;
    let clients = [
        Client::Ours(redis_store(redis, "bench").await?),
        Client::RedisSameWork(same_work.clone()),
        Client::RedisPlain(plain.clone()),
    ];
    let work = Workload::new("k", kv::KEYS, kv::VALUE_SIZE);
    for client in &clients {
        client.fill(&work).await?;
    }
    let rows = [
        (Op::Get, 1, timing.round, Target::AtLeast(0.8)),
        (Op::Get, 64, timing.round, Target::AtLeast(0.8)),
        (Op::Put, 1, timing.round, Target::AtLeast(0.5)),
        (Op::Put, 64, timing.round, Target::AtLeast(0.5)),
        (Op::Create, 1, timing.short_round, Target::None),
        (Op::Create, 64, timing.short_round, Target::None),
    ];
    for (op, in_flight, duration, target) in rows {
        let spec = RowSpec {
            op,
            in_flight,
            duration,
            target,
        };
        kv::compare_row(kv, "redis", &clients, &work, timing, spec).await?;
    }
    // TTL puts on a namespace of their own: their leases (and their expiry) stay there.
    let ttl_clients = [
        Client::Ours(redis_store(redis, "bench-ttl").await?),
        Client::RedisSameWork(same_work),
        Client::RedisPlain(plain),
    ];
    for in_flight in [1, 64] {
        let spec = RowSpec {
            op: Op::TtlPut,
            in_flight,
            duration: timing.short_round,
            target: Target::None,
        };
        kv::compare_row(kv, "redis", &ttl_clients, &work, timing, spec).await?;
    }
    Ok(())
}

/// The memory store against a `RwLock<BTreeMap>`.
pub(crate) async fn memory_kv(
    timing: &Timing,
    kv: &mut KvTables,
    report: &mut Report,
) -> BenchResult<()> {
    let clients = [
        Client::Ours(Arc::new(MemoryStore::new())),
        Client::MemoryRaw(Arc::new(RwLock::new(BTreeMap::new()))),
    ];
    let work = Workload::new("k", kv::KEYS, kv::VALUE_SIZE);
    for client in &clients {
        client.fill(&work).await?;
    }
    for op in [Op::Get, Op::Put] {
        let spec = RowSpec {
            op,
            in_flight: 1,
            duration: timing.short_round,
            target: Target::None,
        };
        kv::compare_row(kv, "memory", &clients, &work, timing, spec).await?;
    }
    // What observability costs: the same memory store with and without ObserveLayer
    // (the layer kvstore::open applies), no tracing subscriber or metrics recorder
    // installed, as in a program that has not set them up.
    let plain: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let observed = plain.clone().layer(ObserveLayer);
    let layered = [Client::Ours(observed), Client::Ours(plain)];
    layered[1].fill(&work).await?;
    let spec = RowSpec {
        op: Op::Get,
        in_flight: 1,
        duration: timing.short_round,
        target: Target::None,
    };
    kv::compare_row(
        kv,
        "memory, ObserveLayer (raw: no layer)",
        &layered,
        &work,
        timing,
        spec,
    )
    .await?;
    if let [Client::Ours(ours), Client::MemoryRaw(raw)] = &clients {
        eprintln!("  memory gets across threads");
        let table = kv::memory_threads(ours, raw, &work, timing)?;
        report.table(Section::MemoryKv, &table);
    }
    Ok(())
}

/// etcd transactions at 1 and 64 in flight.
pub(crate) async fn txn(
    servers: &mut Servers,
    timing: &Timing,
    kv: &mut KvTables,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let ours = etcd_store(etcd, "bench-txn").await?;
    let raw = etcd_raw(etcd).await?;
    for in_flight in [1, 64] {
        eprintln!("  etcd txn @{in_flight}");
        let plan = Plan::new(timing, in_flight, timing.short_round, 2);
        let results = coordination::txn_vs_raw_etcd(&ours, &raw, "bench-txn", &plan).await?;
        kv::add_comparison_row(
            kv,
            "etcd",
            "txn: compare a value, put two keys",
            &results,
            &plan,
            Target::None,
        );
    }
    Ok(())
}

/// ZooKeeper get/put at 1 and 64 in flight (points, short rounds).
pub(crate) async fn zookeeper(
    servers: &mut Servers,
    timing: &Timing,
    kv: &mut KvTables,
    report: &mut Report,
) -> BenchResult<()> {
    eprintln!("starting zookeeper ...");
    let server = kvstore_testkit::zookeeper::ZooKeeperServer::start()?;
    let pid = servers.placement.pin_server("zookeeper", server.port());
    let ours = kvstore::open(&format!("zookeeper://{}/bench", server.address())).await?;
    let raw = zookeeper_client::Client::connect(&server.address()).await?;
    let version = machine::first_line("dpkg-query", &["-W", "-f", "${Version}", "zookeeper"]);
    for in_flight in [1, 64] {
        for (op_put, name) in [(false, "get"), (true, "put")] {
            eprintln!("  zookeeper {name} @{in_flight}");
            let plan = Plan::new(timing, in_flight, timing.short_round, 2);
            let results = coordination::zookeeper_vs_raw(&ours, &raw, op_put, &plan).await?;
            kv::add_comparison_row(kv, "zookeeper", name, &results, &plan, Target::None);
        }
    }
    servers.stopped_cpu += pid.and_then(machine::process_cpu_time).unwrap_or_default();
    let _ = write!(
        kv.throughput.note,
        " ZooKeeper ({version}, Debian package): ours against the raw `zookeeper-client` reading and writing plain znodes."
    );
    let _ = report;
    Ok(())
}

/// The in-flight or value-size curve on memory, etcd and Redis.
pub(crate) async fn kv_curves(
    section: Section,
    servers: &mut Servers,
    timing: &Timing,
    nodelay: bool,
    report: &mut Report,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd_clients = vec![
        Client::Ours(etcd_store(etcd, "bench-curve").await?),
        Client::Etcd(Box::new(etcd_raw(etcd).await?)),
    ];
    let (redis, _) = servers.redis()?;
    let redis_clients = vec![
        Client::Ours(redis_store(redis, "bench-curve").await?),
        Client::RedisSameWork(Arc::new(kv::RedisSameWork::new(
            redis_raw(redis, nodelay).await?,
        ))),
    ];
    let memory_clients = vec![
        Client::Ours(Arc::new(MemoryStore::new())),
        Client::MemoryRaw(Arc::new(RwLock::new(BTreeMap::new()))),
    ];
    let work = Workload::new("k", kv::KEYS, kv::VALUE_SIZE);
    for (backend, clients) in [
        ("memory", &memory_clients),
        ("etcd", &etcd_clients),
        ("redis", &redis_clients),
    ] {
        eprintln!("  {backend} {section:?}");
        let table = if section == Section::InflightCurve {
            for client in clients {
                client.fill(&work).await?;
            }
            kv::in_flight_curve(backend, clients, &work, timing).await?
        } else {
            kv::value_size_curve(backend, clients, timing).await?
        };
        report.table(section, &table);
    }
    Ok(())
}
