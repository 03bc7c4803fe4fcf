//! `kvstore-bench`: the cost of the abstraction, measured against the raw etcd and Redis
//! clients in the same run, on servers it starts itself (through the test support).
//! Prints a markdown table and writes it, with the machine and server versions, to
//! `BENCHMARKS.md`.
//!
//! Run: `cargo run --release -p kvstore-bench` (a few minutes).

mod allocator;
mod coordination;
mod discovery;
mod kv;
mod list;
mod lock;
mod measure;
mod memory;
mod watch;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kvstore::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_memory::MemoryStore;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testsuite::server::{EtcdServer, RedisServer};
use redis::IntoConnectionInfo;

use crate::kv::Client;
use crate::measure::{Row, Target, number};

/// Measure kvstore against the raw clients and write BENCHMARKS.md.
#[derive(Parser)]
struct Args {
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Only compare the memory store with its baseline, print it, and write nothing
    /// (for profiling).
    #[arg(long)]
    memory_only: bool,
    /// Run only these rows, print them, and write nothing. `redis-kv`: Redis get and put
    /// against plain `GET`/`SET` and against a raw baseline with the same guarantees.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Rounds per throughput measurement (the median is reported, with the range of the
    /// per-round ratios).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests per throughput round at 64 in flight (a quarter of that at 1 in flight).
    #[arg(long, default_value_t = 6000)]
    count: usize,
    /// `TCP_NODELAY` on the raw Redis clients' connections. On by default, as on ours
    /// (the store sets it): with Nagle's algorithm, requests in flight together are
    /// coalesced into fewer segments, which makes the raw side faster at 64 in flight for
    /// a reason that has nothing to do with the work done.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    raw_nodelay: bool,
}

/// Subsets of the benchmark for `--only`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Only {
    /// Redis get and put throughput and latency, ours against both raw baselines.
    RedisKv,
    /// The discovery rows (register → visible, resolve, heap, fan-out) on every backend.
    Discovery,
}

type Failure = Box<dyn std::error::Error>;

#[global_allocator]
static ALLOCATOR: allocator::Counting = allocator::Counting;

async fn etcd_store(server: &EtcdServer, namespace: &str) -> Result<Arc<dyn Store>, Failure> {
    let mut config = EtcdConfig::new([server.address()]);
    config.namespace = namespace.to_owned();
    Ok(Arc::new(EtcdStore::connect(config).await?))
}

async fn redis_store(server: &RedisServer, namespace: &str) -> Result<Arc<dyn Store>, Failure> {
    let mut config = RedisConfig::new(server.url());
    config.namespace = namespace.to_owned();
    Ok(Arc::new(RedisStore::connect(config).await?))
}

fn latency_rows(
    rows: &mut Vec<Row>,
    backend: &'static str,
    metric: &str,
    ours: measure::Latency,
    raw: Option<measure::Latency>,
    p99_target: Target,
) {
    rows.push(Row {
        backend,
        metric: format!("{metric} p50"),
        unit: "µs",
        ours: ours.p50,
        raw: raw.map(|r| r.p50),
        target: Target::None,
        contract: None,
        spread: String::new(),
    });
    rows.push(Row {
        backend,
        metric: format!("{metric} p99"),
        unit: "µs",
        ours: ours.p99,
        raw: raw.map(|r| r.p99),
        target: p99_target,
        contract: None,
        spread: String::new(),
    });
}

/// Redis get/put (and create-only CAS, when planned): ours against plain `GET`/`SET` and
/// against a raw Lua script with the same guarantees, each on its own connection.
async fn redis_kv(
    redis: &RedisServer,
    plan: &kv::Plan,
    raw_nodelay: bool,
) -> Result<Vec<Row>, Failure> {
    let ours = redis_store(redis, "bench").await?;
    let raw_client = redis::Client::open(
        redis
            .url()
            .as_str()
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(raw_nodelay)),
    )?;
    let raw = raw_client.get_multiplexed_async_connection().await?;
    let contract = raw_client.get_multiplexed_async_connection().await?;
    Ok(kv::compare(
        "redis",
        Client::Ours(ours),
        Client::Redis(raw),
        Some(Client::RedisContract(Arc::new(kv::RedisContract::new(
            contract,
        )))),
        (0.8, 0.5),
        plan,
    )
    .await)
}

/// A row with no target, contract baseline or spread.
fn plain_row(
    backend: &'static str,
    metric: String,
    unit: &'static str,
    ours: f64,
    raw: Option<f64>,
) -> Row {
    Row {
        backend,
        metric,
        unit,
        ours,
        raw,
        target: Target::None,
        contract: None,
        spread: String::new(),
    }
}

/// The client connections `redis` has now, other than the one asking.
async fn redis_connections(redis: &RedisServer) -> Result<usize, Failure> {
    let mut admin = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await?;
    Ok(list.lines().count().saturating_sub(1))
}

/// The discovery rows on each backend: register → visible, resolve, heap of 1,000
/// registrations and of 1,000 watchers (one `Discovery`, so one shared watch), fan-out.
async fn discovery_rows(stores: &[(&'static str, Arc<dyn Store>)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (backend, store) in stores {
        let backend = *backend;
        let visible = discovery::register_to_visible(store, 200).await;
        latency_rows(
            &mut rows,
            backend,
            "discovery: register → visible to a watcher",
            visible,
            None,
            Target::None,
        );
        let (resolve, registrations_mib, watchers_mib) = discovery::scale(store, 1000).await;
        rows.push(Row {
            backend,
            metric: "discovery: resolve with 1,000 instances, p50".into(),
            unit: "µs",
            ours: resolve.p50,
            raw: None,
            target: Target::None,
            contract: None,
            spread: String::new(),
        });
        rows.push(Row {
            backend,
            metric: "discovery: client heap held by 1,000 live registrations".into(),
            unit: "MiB",
            ours: registrations_mib,
            raw: None,
            target: Target::None,
            contract: None,
            spread: String::new(),
        });
        rows.push(Row {
            backend,
            metric: "discovery: client heap held by 1,000 watchers of that service".into(),
            unit: "MiB",
            ours: watchers_mib,
            raw: None,
            target: Target::Under(16.0),
            contract: None,
            spread: String::new(),
        });
        let fan_out = discovery::fan_out(store, 1000, 1000).await;
        rows.push(Row {
            backend,
            metric: "discovery: fan-out of one registration to 1,000 watchers of a 1,000-instance service, last one has it".into(),
            unit: "ms",
            ours: millis(fan_out),
            raw: None,
            target: Target::Under(100.0),
            contract: None,
            spread: String::new(),
        });
    }
    rows
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = Args::parse();
    if args.memory_only {
        let (ours_get, base_get, ours_put, base_put) = memory::compare().await;
        println!(
            "get {ours_get:.0} ns vs {base_get:.0} ns; put {ours_put:.0} ns vs {base_put:.0} ns"
        );
        return Ok(());
    }
    let plan = kv::Plan {
        rounds: args.rounds,
        count: args.count,
        ..kv::Plan::default()
    };
    if let Some(Only::Discovery) = args.only {
        let etcd = EtcdServer::start()?;
        let redis = RedisServer::start()?;
        eprintln!("discovery ...");
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let rows = discovery_rows(&[
            ("memory", memory),
            ("etcd", etcd_store(&etcd, "bench").await?),
            ("redis", redis_store(&redis, "bench").await?),
        ])
        .await;
        println!("- Machine: {}\n", machine());
        println!("{}", table(&rows));
        return Ok(());
    }
    if let Some(Only::RedisKv) = args.only {
        let redis = RedisServer::start()?;
        eprintln!(
            "redis get/put, {} rounds of {} requests at 64 in flight ...",
            plan.rounds, plan.count
        );
        let rows = redis_kv(
            &redis,
            &kv::Plan {
                ops: vec!["get", "put"],
                ..plan
            },
            args.raw_nodelay,
        )
        .await?;
        println!("- Machine: {}", machine());
        println!("- Redis: {}\n", first_line("redis-server", &["--version"]));
        println!("{}", table(&rows));
        return Ok(());
    }
    let etcd = EtcdServer::start()?;
    let redis = RedisServer::start()?;
    let mut rows = Vec::new();

    eprintln!("memory store vs RwLock<BTreeMap> ...");
    let (ours_get, base_get, ours_put, base_put) = memory::compare().await;
    rows.push(Row {
        backend: "memory",
        metric: "get, ns per op (lower is better)".into(),
        unit: "ns",
        ours: ours_get,
        raw: Some(base_get),
        target: Target::AtMost(2.0),
        contract: None,
        spread: String::new(),
    });
    rows.push(Row {
        backend: "memory",
        metric: "put, ns per op (lower is better)".into(),
        unit: "ns",
        ours: ours_put,
        raw: Some(base_put),
        target: Target::None,
        contract: None,
        spread: String::new(),
    });

    eprintln!("etcd get/put/cas ...");
    let etcd_ours = etcd_store(&etcd, "bench").await?;
    let etcd_raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    rows.extend(
        kv::compare(
            "etcd",
            Client::Ours(etcd_ours.clone()),
            Client::Etcd(Box::new(etcd_raw.clone())),
            None,
            (0.9, 0.9),
            &plan,
        )
        .await,
    );

    eprintln!("etcd list of a 20 MiB prefix ...");
    let (ours_list, raw_list) = list::compare(
        &etcd_store(&etcd, "bench-list").await?,
        &mut etcd_raw.clone(),
        "bench-list",
    )
    .await?;
    rows.push(Row {
        backend: "etcd",
        metric: format!(
            "list of a {} MiB prefix ({} × {} B values), paged at one revision",
            list::KEYS * list::VALUE_SIZE / (1 << 20),
            list::KEYS,
            list::VALUE_SIZE
        ),
        unit: "ms",
        ours: ours_list,
        raw: Some(raw_list),
        target: Target::AtMost(1.2),
        contract: None,
        spread: String::new(),
    });

    eprintln!("redis get/put/cas ...");
    rows.extend(redis_kv(&redis, &plan, args.raw_nodelay).await?);
    let redis_ours = redis_store(&redis, "bench").await?;

    eprintln!("watch delivery ...");
    let memory_store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    latency_rows(
        &mut rows,
        "memory",
        "watch delivery",
        watch::ours(&memory_store).await,
        None,
        Target::Under(1000.0),
    );
    let (ours_watch, raw_watch) = watch::ours_and_raw_etcd(&etcd_ours, &etcd_raw).await;
    latency_rows(
        &mut rows,
        "etcd",
        "watch delivery",
        ours_watch,
        Some(raw_watch),
        Target::AtMost(1.2),
    );
    latency_rows(
        &mut rows,
        "redis",
        "watch delivery",
        watch::ours(&redis_ours).await,
        None,
        Target::None,
    );

    eprintln!("watch fan-out to 1,000 watchers ...");
    let fan_memory = watch::fan_out(std::slice::from_ref(&memory_store), 1000).await;
    rows.push(Row {
        backend: "memory",
        metric: "fan-out: 1,000 watchers, one put, last one has it".into(),
        unit: "ms",
        ours: millis(fan_memory),
        raw: None,
        target: Target::Under(100.0),
        contract: None,
        spread: String::new(),
    });
    let fan_etcd = watch::fan_out(std::slice::from_ref(&etcd_ours), 1000).await;
    let fan_etcd_raw = watch::fan_out_raw_etcd(&etcd_raw, 1000).await;
    rows.push(Row {
        backend: "etcd",
        metric: "fan-out: 1,000 watchers, one put, last one has it".into(),
        unit: "ms",
        ours: millis(fan_etcd),
        raw: Some(millis(fan_etcd_raw)),
        target: Target::Under(100.0),
        contract: None,
        spread: String::new(),
    });
    let fan_redis = watch::fan_out(std::slice::from_ref(&redis_ours), 1000).await;
    rows.push(Row {
        backend: "redis",
        metric: "fan-out: 1,000 watchers, one put, last one has it".into(),
        unit: "ms",
        ours: millis(fan_redis),
        raw: None,
        target: Target::None,
        contract: None,
        spread: String::new(),
    });

    eprintln!("discovery ...");
    rows.extend(
        discovery_rows(&[
            ("memory", memory_store.clone()),
            ("etcd", etcd_ours.clone()),
            ("redis", redis_ours.clone()),
        ])
        .await,
    );

    eprintln!("locks under contention ...");
    let lock_stores = vec![
        etcd_ours.clone(),
        etcd_store(&etcd, "bench").await?,
        etcd_store(&etcd, "bench").await?,
        etcd_store(&etcd, "bench").await?,
    ];
    let ours_lock = lock::ours(&lock_stores).await;
    let raw_lock = lock::raw_etcd(&etcd_raw).await;
    rows.push(Row {
        backend: "etcd",
        metric: "lock acquire+release, 4 tasks contending".into(),
        unit: "ops/s",
        ours: ours_lock,
        raw: Some(raw_lock),
        target: Target::None,
        contract: None,
        spread: String::new(),
    });
    let redis_lock_stores = vec![
        redis_ours.clone(),
        redis_store(&redis, "bench").await?,
        redis_store(&redis, "bench").await?,
        redis_store(&redis, "bench").await?,
    ];
    rows.push(Row {
        backend: "redis",
        metric: "lock acquire+release, 4 tasks contending".into(),
        unit: "ops/s",
        ours: lock::ours(&redis_lock_stores).await,
        raw: None,
        target: Target::None,
        contract: None,
        spread: String::new(),
    });

    eprintln!("transactions ...");
    for in_flight in [1, 64] {
        let (ours_txn, raw_txn) = coordination::txn_vs_raw_etcd(
            &etcd_store(&etcd, "bench-txn").await?,
            &etcd_raw,
            "bench-txn",
            in_flight,
        )
        .await;
        rows.push(plain_row(
            "etcd",
            format!("txn (compare a value, put two keys), {in_flight} in flight"),
            "ops/s",
            ours_txn,
            Some(raw_txn),
        ));
    }

    eprintln!("election failover ...");
    let failover_ttl = Duration::from_secs(2);
    for (backend, leader, next) in [
        (
            "etcd",
            etcd_store(&etcd, "bench-elect").await?,
            etcd_store(&etcd, "bench-elect").await?,
        ),
        (
            "redis",
            redis_store(&redis, "bench-elect").await?,
            redis_store(&redis, "bench-elect").await?,
        ),
    ] {
        let ms = coordination::election_failover(&leader, &next, failover_ttl, 5).await;
        rows.push(plain_row(
            backend,
            "election: leader dies (lease TTL 2 s) → next candidate leads, median of 5".into(),
            "ms",
            ms,
            None,
        ));
    }

    eprintln!("redis fan-out to 10,000 watchers of one store ...");
    let fan_store = redis_store(&redis, "bench-fan").await?;
    let fan_10k = watch::fan_out(std::slice::from_ref(&fan_store), 10_000).await;
    let connections = redis_connections(&redis).await?;
    rows.push(plain_row(
        "redis",
        format!(
            "fan-out: 10,000 watchers of one store, one put, last one has it ({connections} server connections in all)"
        ),
        "ms",
        millis(fan_10k),
        None,
    ));
    drop(fan_store);

    eprintln!("zookeeper get/put ...");
    let zookeeper = kvstore_testsuite::zookeeper::ZooKeeperServer::start()?;
    let zk_ours = kvstore::open(&format!("zookeeper://{}/bench", zookeeper.address())).await?;
    let zk_raw = zookeeper_client::Client::connect(&zookeeper.address()).await?;
    for in_flight in [1, 64] {
        let (og, rg, op, rp) = coordination::zookeeper_vs_raw(&zk_ours, &zk_raw, in_flight).await;
        rows.push(plain_row(
            "zookeeper",
            format!("get throughput, {in_flight} in flight"),
            "ops/s",
            og,
            Some(rg),
        ));
        rows.push(plain_row(
            "zookeeper",
            format!("put throughput, {in_flight} in flight"),
            "ops/s",
            op,
            Some(rp),
        ));
    }

    let report = render(&rows, &etcd, &redis);
    println!("{report}");
    std::fs::write(&args.output, report)?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{cores} cores ({cpu}), {memory} memory")
}

fn render(rows: &[Row], _etcd: &EtcdServer, _redis: &RedisServer) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo run --release -p kvstore-bench` on this codebase: our store and the raw client doing the same operation in the same run (for Redis also a raw baseline with the same guarantees, below), against servers the benchmark started on loopback. Throughputs are the median of 3 rounds (each round runs every client once, the first rotating), with the range of the per-round ours/raw ratios; latencies are percentiles of 500–1,500 sequential requests.\n"
    );
    let _ = writeln!(out, "- Machine: {}", machine());
    let _ = writeln!(out, "- etcd: {}", first_line("etcd", &["--version"]));
    let _ = writeln!(
        out,
        "- Redis: {}",
        first_line("redis-server", &["--version"])
    );
    let _ = writeln!(
        out,
        "- Values: {} bytes; raw Redis CAS is `SET NX`, raw etcd CAS a `Txn` on `CreateRevision == 0` (ours: `atomic_put(.., None, ..)`).\n- Redis rows have a second raw baseline, *same guarantees*: one Lua script per write doing `INCR` (a store-wide revision) + `XADD … MAXLEN ~` (the change logged under it, before the data) + `HSET value revision` + `ZADD` (the prefix index), and `HMGET` of the same four hash fields for reads; `EXISTS` first for create-only. Against plain `GET`/`SET` the ratio is the cost of the contract and the abstraction together; against this one, of our scripts' extra checks (lease expiry, counter validation, CAS reads, `prev`/`tip` stamping) and the client.\n",
        kv::VALUE_SIZE
    );
    out.push_str(&table(rows));
    out
}

/// The results as a markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | measurement | ours | raw | raw, same guarantees | unit | ours/raw | ours/same guarantees | target | | per-round ratios |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.backend,
            row.metric,
            number(row.ours),
            row.raw.map(number).unwrap_or_default(),
            row.contract.map(number).unwrap_or_default(),
            row.unit,
            row.ratio().map(|r| format!("{r:.2}")).unwrap_or_default(),
            row.contract_ratio()
                .map(|r| format!("{r:.2}"))
                .unwrap_or_default(),
            row.target_text(),
            row.verdict(),
            row.spread,
        );
    }
    out
}
