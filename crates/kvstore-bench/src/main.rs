//! `kvstore-bench`: the cost of the abstraction, measured against raw clients doing the
//! same work in the same run, on servers it starts itself (through the test support),
//! pinned to a core apart from the benchmark's; and the curves of the costs that grow
//! with the work (requests in flight, value size, prefix size, idle watchers, live
//! leases). Prints the report and writes it to `BENCHMARKS.md`.
//!
//! Run: `cargo run --release -p kvstore-bench` (under 10 minutes on 2 cores);
//! `--quick` for a smoke run; `--only SECTION[,SECTION...]` for parts (`--help` lists
//! them).

mod allocator;
mod coordination;
mod discovery;
mod kv;
mod lease;
mod list;
mod lock;
mod machine;
mod measure;
mod serving;
mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Parser;
use kvstore::Store;
use kvstore::layer::{LayerExt, ObserveLayer};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_memory::MemoryStore;
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::{EtcdServer, RedisServer};
use redis::IntoConnectionInfo;

use crate::kv::{Client, KvTables, Op, RowSpec, Workload};
use crate::machine::Placement;
use crate::measure::{BenchResult, Plan, Spread, Table, Target, Timing, median, number};

/// Measure kvstore against raw clients doing the same work, and write BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where to write the report. A full run writes BENCHMARKS.md unless told otherwise;
    /// with --only the report is printed and written only when this is given.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Run only these sections (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// The same as `--only memory-kv` (kept for profiling scripts).
    #[arg(long, hide = true)]
    memory_only: bool,
    /// Seconds each side runs in each round of a headline row (etcd and Redis get/put).
    #[arg(long, default_value_t = 2.0)]
    round_secs: f64,
    /// Rounds per comparison; odd rounds run ours first, even rounds the reverse order.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Seconds each side runs in each round of a secondary row (CAS, TTL put, locks,
    /// transactions, memory, ZooKeeper).
    #[arg(long, default_value_t = 0.3)]
    short_round_secs: f64,
    /// Seconds each side runs per pass at each curve point.
    #[arg(long, default_value_t = 0.15)]
    step_secs: f64,
    /// Passes per curve point (alternating which side goes first).
    #[arg(long, default_value_t = 2)]
    passes: usize,
    /// Sequential samples of watch-delivery latency per backend.
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// A smoke run: 0.2 s rounds, 3 rounds, short curves, smaller sizes.
    #[arg(long)]
    quick: bool,
    /// Do not pin the benchmark and its servers to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// `TCP_NODELAY` on the raw Redis connections, as ours sets it. With Nagle's
    /// algorithm, requests in flight together are coalesced into fewer segments, which
    /// makes the raw side faster at many in flight for a reason unrelated to the work.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    raw_nodelay: bool,
}

/// Parts of the benchmark for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Section {
    /// etcd get/put (headline), create-only CAS and TTL put, ours against raw.
    EtcdKv,
    /// Redis get/put (headline), create-only CAS and TTL put, ours against the raw
    /// same-work baseline and plain GET/SET.
    RedisKv,
    /// The memory store's get/put against a `RwLock<BTreeMap>`.
    MemoryKv,
    /// etcd transactions, ours against a raw Txn.
    Txn,
    /// Lock acquire+release, alone and contended, ours against raw recipes on equal
    /// connections; etcd's unsynced-watch delay.
    Lock,
    /// Watch delivery latency and fan-out (1,000 watchers; Redis 10,000).
    Watch,
    /// Discovery: register → visible, resolve, heap, fan-out, on every backend.
    Discovery,
    /// Election failover time on etcd and Redis.
    Election,
    /// Requests through the gateway while a provider crashes or all restart in turn.
    Serving,
    /// ZooKeeper get/put against the raw client.
    Zookeeper,
    /// Throughput against requests in flight (1 → 256).
    InflightCurve,
    /// get/put against value size (10 B → 1 MiB).
    ValueSizeCurve,
    /// List and watch-snapshot time against prefix size (10 → 100,000 keys), and a 20 MiB prefix.
    ListCurve,
    /// Writes and delivery lag against idle watchers on other prefixes (0 → 10,000).
    WatchersCurve,
    /// Keep-alive cost against live leases (10 → 10,000).
    KeepaliveCurve,
}

impl Section {
    /// Every section, in the order of a full run.
    const ALL: [Section; 15] = [
        Section::EtcdKv,
        Section::RedisKv,
        Section::MemoryKv,
        Section::Txn,
        Section::Lock,
        Section::Watch,
        Section::Discovery,
        Section::Election,
        Section::Serving,
        Section::InflightCurve,
        Section::ValueSizeCurve,
        Section::ListCurve,
        Section::WatchersCurve,
        Section::KeepaliveCurve,
        Section::Zookeeper,
    ];
}

#[global_allocator]
static ALLOCATOR: allocator::Counting = allocator::Counting;

/// Pin, start the runtime, run the selected sections, write the report.
fn main() -> ExitCode {
    let args = Args::parse();
    // First, before any thread exists: every thread started later inherits the CPU.
    let placement = machine::pin_client(!args.no_pin);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvstore-bench: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, placement)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvstore-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The servers of the run, started when a section first needs them and pinned.
struct Servers {
    placement: Placement,
    etcd: Option<(EtcdServer, Option<i32>)>,
    redis: Option<(RedisServer, Option<i32>)>,
    /// CPU time of servers already stopped (ZooKeeper).
    stopped_cpu: Duration,
}

impl Servers {
    /// CPU time all servers of the run have used.
    fn cpu_time(&self) -> Duration {
        let running = [
            self.etcd.as_ref().and_then(|(_, pid)| *pid),
            self.redis.as_ref().and_then(|(_, pid)| *pid),
        ];
        self.stopped_cpu
            + running
                .into_iter()
                .flatten()
                .filter_map(machine::process_cpu_time)
                .sum::<Duration>()
    }
}

/// What else ran on the machine during the benchmark.
struct Accounting {
    machine_busy: Option<Duration>,
    own: Duration,
    load: String,
}

impl Accounting {
    fn start() -> Accounting {
        Accounting {
            machine_busy: machine::machine_busy_time(),
            own: machine::own_cpu_time(),
            load: machine::load_average(),
        }
    }

    /// A line for the header: CPU used by processes other than the benchmark and its
    /// servers during the run, and the load averages.
    fn summary(&self, servers: &Servers, wall: Duration) -> String {
        let cpus = machine::online_cpus();
        let others = match (self.machine_busy, machine::machine_busy_time()) {
            (Some(before), Some(after)) => {
                let ours = machine::own_cpu_time().saturating_sub(self.own) + servers.cpu_time();
                let other = after.saturating_sub(before).saturating_sub(ours);
                format!(
                    "{:.0} CPU-seconds ({:.0}% of the machine's {cpus} CPUs over the run)",
                    other.as_secs_f64(),
                    100.0 * other.as_secs_f64() / (wall.as_secs_f64() * cpus as f64)
                )
            }
            _ => "unknown".into(),
        };
        format!(
            "Other processes on the machine used {others}; 1-minute load average {} at the start, {} at the end",
            self.load,
            machine::load_average()
        )
    }
}

impl Servers {
    fn etcd(&mut self) -> BenchResult<(&EtcdServer, Option<i32>)> {
        if self.etcd.is_none() {
            eprintln!("starting etcd ...");
            let server = EtcdServer::start()?;
            let port = port_of(&server.address())?;
            let pid = self.placement.pin_server("etcd", port);
            self.etcd = Some((server, pid));
        }
        let (server, pid) = self.etcd.as_ref().ok_or("etcd did not start")?;
        Ok((server, *pid))
    }

    fn redis(&mut self) -> BenchResult<(&RedisServer, Option<i32>)> {
        if self.redis.is_none() {
            eprintln!("starting redis-server ...");
            let server = RedisServer::start()?;
            let pid = self.placement.pin_server("redis-server", server.port());
            self.redis = Some((server, pid));
        }
        let (server, pid) = self.redis.as_ref().ok_or("redis did not start")?;
        Ok((server, *pid))
    }
}

/// The port of `host:port`.
fn port_of(address: &str) -> BenchResult<u16> {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {address:?}").into())
}

/// Our store on etcd, namespace `namespace`, on its own connection.
async fn etcd_store(server: &EtcdServer, namespace: &str) -> BenchResult<Arc<dyn Store>> {
    let mut config = EtcdConfig::new([server.address()]);
    config.namespace = namespace.to_owned();
    Ok(Arc::new(EtcdStore::connect(config).await?))
}

/// Our store on Redis, namespace `namespace`, on its own connection.
async fn redis_store(server: &RedisServer, namespace: &str) -> BenchResult<Arc<dyn Store>> {
    let mut config = RedisConfig::new(server.url());
    config.namespace = namespace.to_owned();
    Ok(Arc::new(RedisStore::connect(config).await?))
}

/// A raw etcd client on its own connection.
async fn etcd_raw(server: &EtcdServer) -> BenchResult<etcd_client::Client> {
    Ok(etcd_client::Client::connect([server.endpoint()], None).await?)
}

/// A raw Redis connection of its own, with our store's response timeout (the redis
/// crate's default of 500 ms is shorter than a long script).
async fn redis_raw(
    server: &RedisServer,
    nodelay: bool,
) -> BenchResult<redis::aio::MultiplexedConnection> {
    let info = server
        .url()
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(nodelay));
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(kvstore_redis::DEFAULT_REQUEST_TIMEOUT));
    Ok(redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Compact etcd's history up to now, so the database does not grow across sections
/// (no watch is open between sections).
async fn compact_etcd(client: &etcd_client::Client) -> BenchResult<()> {
    let mut client = client.clone();
    let revision = client
        .get("compact-probe", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    if revision > 1 {
        client.compact(revision, None).await?;
    }
    Ok(())
}

/// The report: markdown blocks by section, in run order.
#[derive(Default)]
struct Report {
    blocks: BTreeMap<Section, Vec<String>>,
}

impl Report {
    fn add(&mut self, section: Section, block: String) {
        self.blocks.entry(section).or_default().push(block);
    }

    fn table(&mut self, section: Section, table: &Table) {
        self.add(section, table.render());
    }
}

/// Run the selected sections and write the report.
async fn run(args: Args, placement: Placement) -> BenchResult<()> {
    let started = Instant::now();
    let timing = if args.quick {
        Timing {
            round: Duration::from_millis(200),
            rounds: 3,
            short_round: Duration::from_millis(100),
            step: Duration::from_millis(50),
            passes: 1,
            samples: 500,
            quick: true,
        }
    } else {
        Timing {
            round: Duration::from_secs_f64(args.round_secs),
            rounds: args.rounds.max(1),
            short_round: Duration::from_secs_f64(args.short_round_secs),
            step: Duration::from_secs_f64(args.step_secs),
            passes: args.passes.max(1),
            samples: args.samples.max(1),
            quick: false,
        }
    };
    let mut only = args.only.clone();
    if args.memory_only {
        only.push(Section::MemoryKv);
    }
    let partial = !only.is_empty();
    let sections: Vec<Section> = if partial {
        Section::ALL
            .iter()
            .copied()
            .filter(|s| only.contains(s))
            .collect()
    } else {
        Section::ALL.to_vec()
    };
    let accounting = Accounting::start();
    let mut servers = Servers {
        placement,
        etcd: None,
        redis: None,
        stopped_cpu: Duration::ZERO,
    };
    let mut report = Report::default();
    let mut kv_tables = KvTables::new(&timing);
    for &section in &sections {
        eprintln!(
            "== {section:?} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        if section != Section::Zookeeper && section != Section::MemoryKv {
            let (etcd, _) = servers.etcd()?;
            compact_etcd(&etcd_raw(etcd).await?).await?;
        }
        let section_started = Instant::now();
        run_section(
            section,
            &mut servers,
            &timing,
            &args,
            &mut report,
            &mut kv_tables,
        )
        .await?;
        eprintln!(
            "   {section:?} took {:.1} s",
            section_started.elapsed().as_secs_f64()
        );
    }
    if !kv_tables.throughput.rows.is_empty() {
        report.blocks.entry(Section::EtcdKv).or_default().insert(
            0,
            format!(
                "{}\n{}",
                kv_tables.throughput.render(),
                kv_tables.latency.render()
            ),
        );
    }
    let wall = started.elapsed();
    let others = accounting.summary(&servers, wall);
    let text = render(
        &report, &servers, &timing, &sections, wall, partial, &others,
    );
    println!("{text}");
    let output = match (&args.output, partial) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(PathBuf::from("BENCHMARKS.md")),
        (None, true) => None,
    };
    if let Some(path) = output {
        std::fs::write(&path, text)?;
        eprintln!("wrote {} after {:.0} s", path.display(), wall.as_secs_f64());
    }
    Ok(())
}

/// Run one section, adding its tables to `report` (key-value rows go to `kv`).
async fn run_section(
    section: Section,
    servers: &mut Servers,
    timing: &Timing,
    args: &Args,
    report: &mut Report,
    kv: &mut KvTables,
) -> BenchResult<()> {
    match section {
        Section::EtcdKv => etcd_kv(servers, timing, kv).await,
        Section::RedisKv => redis_kv(servers, timing, args.raw_nodelay, kv).await,
        Section::MemoryKv => memory_kv(timing, kv, report).await,
        Section::Txn => txn(servers, timing, kv).await,
        Section::Lock => locks(servers, timing, args.raw_nodelay, report).await,
        Section::Watch => watches(servers, timing, report).await,
        Section::Discovery => discovery_rows(servers, timing, report).await,
        Section::Election => elections(servers, timing, report).await,
        Section::Serving => serving_rows(servers, report).await,
        Section::Zookeeper => zookeeper(servers, timing, kv, report).await,
        Section::InflightCurve | Section::ValueSizeCurve => {
            kv_curves(section, servers, timing, args.raw_nodelay, report).await
        }
        Section::ListCurve => list_curves(servers, timing, report).await,
        Section::WatchersCurve => watchers_curves(servers, timing, report).await,
        Section::KeepaliveCurve => keepalive_curves(servers, timing, report).await,
    }
}

/// etcd: get and put are the headline rows; create-only CAS and TTL put are secondary.
async fn etcd_kv(servers: &mut Servers, timing: &Timing, kv: &mut KvTables) -> BenchResult<()> {
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
async fn redis_kv(
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
async fn memory_kv(timing: &Timing, kv: &mut KvTables, report: &mut Report) -> BenchResult<()> {
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
async fn txn(servers: &mut Servers, timing: &Timing, kv: &mut KvTables) -> BenchResult<()> {
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

/// Lock acquire+release: alone and with 4 contenders, on equal connections.
async fn locks(
    servers: &mut Servers,
    timing: &Timing,
    nodelay: bool,
    report: &mut Report,
) -> BenchResult<()> {
    let mut table = Table::new(
        "Locks: acquire + release, ours against raw on the same number of connections",
        format!(
            "Every contender has its own connection on both sides. Raw etcd: a lease grant, etcd's Lock RPC on it, Unlock, lease revoke (what a raw etcd user does per acquisition; the server runs the same `concurrency` recipe ours does). Raw Redis: `SET key token NX PX {} ` retried at once while taken, then a Lua compare-and-delete. Ours: `new_lock(..).lock()` then `unlock()`. {} paired rounds of {:.2} s per side, alternating order; acquire latency is the time in `lock()` (µs), from all rounds.",
            lock::TTL.as_millis(),
            timing.rounds,
            timing.short_round.as_secs_f64()
        ),
        &[
            "backend",
            "contenders",
            "ours acq+rel /s",
            "raw acq+rel /s",
            "ours/raw per round: min / median / max",
            "ours acquire p50 / p99 µs",
            "raw acquire p50 / p99 µs",
        ],
    );
    let (etcd, _) = servers.etcd()?;
    let mut etcd_sides = (Vec::new(), Vec::new());
    for _ in 0..4 {
        etcd_sides
            .0
            .push(lock::Contender::Ours(etcd_store(etcd, "bench-lock").await?));
        etcd_sides
            .1
            .push(lock::Contender::Etcd(Box::new(etcd_raw(etcd).await?)));
    }
    let raw_etcd = etcd_raw(etcd).await?;
    let (redis, _) = servers.redis()?;
    let mut redis_sides = (Vec::new(), Vec::new());
    for _ in 0..4 {
        redis_sides.0.push(lock::Contender::Ours(
            redis_store(redis, "bench-lock").await?,
        ));
        redis_sides
            .1
            .push(lock::Contender::Redis(redis_raw(redis, nodelay).await?));
    }
    let mut etcd_results = Vec::new();
    for (backend, (ours, raw)) in [("etcd", &etcd_sides), ("redis", &redis_sides)] {
        for contenders in [1usize, 4] {
            eprintln!("  {backend} lock, {contenders} contender(s)");
            let result = lock::compare(
                &ours[..contenders],
                &raw[..contenders],
                &format!("bench-{contenders}"),
                timing.rounds,
                timing.short_round,
            )
            .await?;
            let (ours_rate, raw_rate) = result.medians();
            let latency =
                |p: &measure::Percentiles| format!("{} / {}", number(p.p50), number(p.p99));
            table.row(vec![
                backend.into(),
                format!("{contenders} ({contenders} connection(s) per side)"),
                number(ours_rate),
                number(raw_rate),
                result.spread().text(),
                latency(&result.ours_latency),
                latency(&result.raw_latency),
            ]);
            if backend == "etcd" {
                etcd_results.push(result);
            }
        }
    }
    report.table(Section::Lock, &table);
    let samples = if timing.quick { 5 } else { 30 };
    eprintln!("  etcd unsynced watch, {samples} samples each way");
    let unsynced = lock::etcd_unsynced_watch(&raw_etcd, samples).await?;
    let mut why = Table::new(
        "Why a contended etcd lock is slow: etcd's unsynced watchers",
        format!(
            "Raw etcd-client: a watch created on a fresh key, then a put of that key; time from the put to the event, {samples} samples each way (µs). A watch whose start revision etcd has already passed goes to its *unsynced* group, which a background loop catches up only every 100 ms (`syncWatchersLoop`); a watch starting at the next revision is *synced* and gets events as they are written."
        ),
        &["watch created at", "p50 µs", "p99 µs", "max µs"],
    );
    for (name, p) in [
        (
            "a revision already passed (as a lock waiter's watch after a write by another contender)",
            unsynced.past,
        ),
        ("the next revision", unsynced.next),
    ] {
        why.row(vec![
            name.into(),
            number(p.p50),
            number(p.p99),
            number(p.max),
        ]);
    }
    report.table(Section::Lock, &why);
    if let [alone, contended] = etcd_results.as_slice() {
        report.add(Section::Lock, lock_explanation(alone, contended, &unsynced));
    }
    Ok(())
}

/// What the etcd lock rows show, and where the cost of a contended lock comes from.
fn lock_explanation(
    alone: &lock::LockComparison,
    contended: &lock::LockComparison,
    unsynced: &lock::UnsyncedWatch,
) -> String {
    let ms = |micros: f64| number(micros / 1000.0);
    format!(
        "**Where an etcd lock's time goes.** Alone, one acquire+release is five requests: a lease grant, a create-only put of the waiter key and a list of the queue, then the lock key's put; the release is a lease revoke. Four of them are raft writes with an fsync each: {} acquisitions per second here, {} ms to acquire (p50). With four contenders each hand-over also waits until the release reaches the next waiter through a watch on its predecessor's key: {} acquisitions per second, {} ms to acquire (p50), {} ms (p99). That watch is `Store::watch`, called by `wait_deleted` in `Queue::wait_for_turn` (kvstore-core `lock.rs`). kvstore-etcd (`watch.rs`) creates the etcd watch without a start revision, so etcd syncs it at once, and reads the snapshot at the revision the watch was created at: nothing is missed and nothing waits for etcd's sync loop. A watch created at a start revision etcd has already passed (as one created at `snapshot revision + 1` after another contender wrote in between: a join, a lock-key put, a revoke) sits in etcd's *unsynced* group until the next pass of its 100 ms sync loop; the table above shows that delay directly ({} ms p50 against {} ms for a watch created at the next revision). kvstore-etcd worked that way until commit 15e58ca, when four contenders made 77–94 acquisitions per second with a p90 near 100 ms. etcd's own Lock RPC still waits that way (its `waitDeletes` watches from a past revision), so the raw row pays it. On Redis the same recipe is five scripts against two commands raw, and a hand-over goes through the change stream (`XREAD`), with no such delay.\n",
        number(median(&alone.ours)),
        ms(alone.ours_latency.p50),
        number(median(&contended.ours)),
        ms(contended.ours_latency.p50),
        ms(contended.ours_latency.p99),
        ms(unsynced.past.p50),
        ms(unsynced.next.p50),
    )
}

/// Watch delivery latency and fan-out.
async fn watches(servers: &mut Servers, timing: &Timing, report: &mut Report) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-watch").await?;
    let etcd_client = etcd_raw(etcd).await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-watch").await?;
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut table = Table::new(
        "Watch delivery: put → the watcher has it",
        format!(
            "Sequential samples (µs, HDR histogram). On etcd, ours and etcd's own put and watch alternate sample by sample; the p99 ratio is computed over {} consecutive blocks of samples and shown as min / median / max.",
            timing.rounds
        ),
        &[
            "backend",
            "samples",
            "ours p50 / p99 / p99.9",
            "raw p50 / p99 / p99.9",
            "p99 ours/raw per block: min / median / max",
            "target",
            "verdict",
        ],
    );
    let text = |p: measure::Percentiles| {
        format!("{} / {} / {}", number(p.p50), number(p.p99), number(p.p999))
    };
    for (backend, store, raw) in [
        ("memory", &memory, None),
        ("etcd", &etcd_ours, Some(&etcd_client)),
        ("redis", &redis_ours, None),
    ] {
        eprintln!("  {backend} watch delivery, {} samples", timing.samples);
        let delivery = watch::delivery(store, raw, timing.samples).await?;
        let ours = watch::percentiles(&delivery.ours);
        let (raw_text, spread, target) = if delivery.raw.is_empty() {
            (String::new(), Spread::default(), Target::None)
        } else {
            (
                text(watch::percentiles(&delivery.raw)),
                watch::block_p99_ratios(&delivery, timing.rounds),
                Target::AtMost(1.2),
            )
        };
        table.row(vec![
            backend.into(),
            delivery.ours.len().to_string(),
            text(ours),
            raw_text,
            spread.text(),
            target.text(""),
            target.verdict(&spread),
        ]);
    }
    report.table(Section::Watch, &table);

    let repetitions = if timing.quick { 2 } else { 7 };
    let mut fan = Table::new(
        "Fan-out: one put, many watchers of its prefix, until the last has it",
        format!(
            "The watchers each run in a task; one put, {repetitions} times over the same watchers; ms as min / median / max. Ours on one store (one connection); raw etcd: that many watch streams of one client."
        ),
        &[
            "backend",
            "watchers",
            "ours ms: min / median / max",
            "raw ms: min / median / max",
            "target",
            "verdict",
        ],
    );
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} fan-out to 1,000 watchers");
        let ours = Spread::of(
            watch::fan_out(std::slice::from_ref(store), "fan", 1000, repetitions).await?,
        );
        let raw = if backend == "etcd" {
            Spread::of(watch::fan_out_raw_etcd(&etcd_client, 1000, repetitions).await?)
        } else {
            Spread::default()
        };
        let target = if backend == "redis" {
            Target::None
        } else {
            Target::Under(100.0)
        };
        fan.row(vec![
            backend.into(),
            "1,000".into(),
            spread_ms(&ours),
            spread_ms(&raw),
            target.text("ms"),
            target.verdict(&ours),
        ]);
    }
    let big = if timing.quick { 1000 } else { 10_000 };
    eprintln!("  redis fan-out to {big} watchers of one store");
    let fan_store = redis_store(redis, "bench-fan").await?;
    let ours = Spread::of(
        watch::fan_out(
            std::slice::from_ref(&fan_store),
            "fan",
            big,
            repetitions.min(3),
        )
        .await?,
    );
    fan.row(vec![
        "redis".into(),
        format!(
            "{} (one store: one request and one stream-reading connection)",
            thousands(big)
        ),
        spread_ms(&ours),
        String::new(),
        String::new(),
        String::new(),
    ]);
    report.table(Section::Watch, &fan);
    Ok(())
}

/// `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `min / median / max` of values in ms.
fn spread_ms(spread: &Spread) -> String {
    if spread.values.is_empty() {
        return String::new();
    }
    format!(
        "{} / {} / {}",
        number(spread.min()),
        number(spread.median()),
        number(spread.max())
    )
}

/// Discovery on every backend.
async fn discovery_rows(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-discovery").await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-discovery").await?;
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let samples = if timing.quick { 50 } else { 1000 };
    let resolves = if timing.quick { 10 } else { 100 };
    let repetitions = if timing.quick { 2 } else { 7 };
    let mut table = Table::new(
        "Discovery",
        format!(
            "*register → visible*: from `register` until a consumer watching the service has the instance, {samples} samples (µs). *resolve*: all 1,000 instances, {resolves} samples (µs). *heap*: client heap held by 1,000 live registrations (for memory including the stored records) and by 1,000 watchers of that service from one `Discovery` (one shared watch), counted only in those phases. *fan-out*: one more registration until the last of 1,000 watchers of the 1,000-instance service has it, {repetitions} times, ms min / median / max."
        ),
        &[
            "backend",
            "register → visible p50 / p99 µs",
            "resolve p50 / p99 µs",
            "heap: 1,000 registrations MiB",
            "heap: 1,000 watchers MiB",
            "target (watchers)",
            "verdict",
            "fan-out ms",
            "target (fan-out)",
            "verdict",
        ],
    );
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} discovery");
        let visible = discovery::register_to_visible(store, samples).await?;
        let scale = discovery::scale(store, 1000, resolves).await?;
        let fan_out = Spread::of(discovery::fan_out(store, 1000, 1000, repetitions).await?);
        let heap_target = Target::Under(16.0);
        let fan_target = Target::Under(100.0);
        table.row(vec![
            backend.into(),
            format!("{} / {}", number(visible.p50), number(visible.p99)),
            format!(
                "{} / {}",
                number(scale.resolve.p50),
                number(scale.resolve.p99)
            ),
            number(scale.registrations_mib),
            number(scale.watchers_mib),
            heap_target.text("MiB"),
            heap_target.verdict(&Spread::of(vec![scale.watchers_mib])),
            spread_ms(&fan_out),
            fan_target.text("ms"),
            fan_target.verdict(&fan_out),
        ]);
    }
    report.table(Section::Discovery, &table);
    Ok(())
}

/// Election failover on etcd and Redis.
async fn elections(servers: &mut Servers, timing: &Timing, report: &mut Report) -> BenchResult<()> {
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

/// Requests through the gateway while a provider crashes or all restart in turn, on etcd
/// and Redis ([`serving`]).
async fn serving_rows(servers: &mut Servers, report: &mut Report) -> BenchResult<()> {
    let (etcd, _) = servers.etcd()?;
    let etcd = etcd_store(etcd, "bench-serving").await?;
    let (redis, _) = servers.redis()?;
    let redis = redis_store(redis, "bench-serving").await?;
    let table = serving::table(&[("etcd", etcd), ("redis", redis)]).await?;
    report.table(Section::Serving, &table);
    Ok(())
}

/// ZooKeeper get/put at 1 and 64 in flight (points, short rounds).
async fn zookeeper(
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
async fn kv_curves(
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

/// The list curve on memory, etcd and Redis.
async fn list_curves(
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

/// The idle-watchers curve on memory, etcd and Redis.
async fn watchers_curves(
    servers: &mut Servers,
    timing: &Timing,
    report: &mut Report,
) -> BenchResult<()> {
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (etcd, _) = servers.etcd()?;
    let etcd_ours = etcd_store(etcd, "bench-watchers").await?;
    let (redis, _) = servers.redis()?;
    let redis_ours = redis_store(redis, "bench-watchers").await?;
    for (backend, store) in [
        ("memory", &memory),
        ("etcd", &etcd_ours),
        ("redis", &redis_ours),
    ] {
        eprintln!("  {backend} watchers curve");
        let table = watch::watchers_curve(backend, store, timing).await?;
        report.table(Section::WatchersCurve, &table);
    }
    Ok(())
}

/// The keep-alive curve on memory, etcd (with raw keepers) and Redis.
async fn keepalive_curves(
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

/// Section headings of the report.
fn heading(section: Section) -> &'static str {
    match section {
        Section::EtcdKv
        | Section::RedisKv
        | Section::MemoryKv
        | Section::Txn
        | Section::Zookeeper => "Ours against raw: key-value operations",
        Section::Lock => "Locks",
        Section::Watch => "Watches",
        Section::Discovery => "Discovery",
        Section::Election => "Elections",
        Section::Serving => "Serving under faults",
        Section::InflightCurve => "Curve: requests in flight",
        Section::ValueSizeCurve => "Curve: value size",
        Section::ListCurve => "Curve: prefix size (list and watch snapshot)",
        Section::WatchersCurve => "Curve: idle watchers on other prefixes",
        Section::KeepaliveCurve => "Curve: live leases (keep-alive cost)",
    }
}

/// The whole report.
fn render(
    report: &Report,
    servers: &Servers,
    timing: &Timing,
    sections: &[Section],
    wall: Duration,
    partial: bool,
    others: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo run --release -p kvstore-bench`{}: our store against raw clients doing **the same work** in the same run, on servers the benchmark started on loopback, and the curves of the costs that grow with the work. Every comparison runs in paired, time-based rounds in alternating order (ours first on odd rounds, the reverse on even rounds), and every ratio is shown as the min / median / max of its per-round ratios; a verdict is *met* only when the whole range clears the target, *MISSED* only when none of it does, and *mixed* otherwise.\n",
        if partial {
            format!(
                " --only {}",
                sections
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "Parts run alone with `--only SECTION[,SECTION...]` (see `--help`), e.g. `cargo run --release -p kvstore-bench -- --only keepalive-curve,list-curve --output /tmp/after.md`; run the same on two commits for a before/after of a fix. `--quick` is a smoke run.\n"
    );
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(out, "- Commit: {}", machine::commit());
    let _ = writeln!(
        out,
        "- rustc: {}",
        machine::first_line("rustc", &["--version"])
    );
    let _ = writeln!(out, "- Kernel: {}", machine::first_line("uname", &["-r"]));
    let _ = writeln!(out, "- CPU: {}", machine::cpu_layout());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- Placement: {}; tokio multi-thread runtime with {threads} worker thread(s) (as many as CPUs the process may use)",
        servers.placement.notes.join("; ")
    );
    if servers.etcd.is_some() {
        let _ = writeln!(
            out,
            "- etcd: {} (single member, data on the local disk)",
            machine::first_line("etcd", &["--version"])
        );
    }
    if servers.redis.is_some() {
        let _ = writeln!(
            out,
            "- Redis: {} (no persistence)",
            machine::first_line("redis-server", &["--version"])
        );
    }
    let _ = writeln!(
        out,
        "- Timing: headline rows {} rounds × {:.2} s per side; secondary rows {} rounds × {:.2} s per side; curve points {} pass(es) × {:.2} s per side; {} watch-delivery samples; {}",
        timing.rounds,
        timing.round.as_secs_f64(),
        timing.rounds,
        timing.short_round.as_secs_f64(),
        timing.passes,
        timing.step.as_secs_f64(),
        timing.samples,
        if timing.quick {
            "**--quick smoke run: sizes reduced, not for conclusions**"
        } else {
            "full run"
        }
    );
    let _ = writeln!(
        out,
        "- Heap is counted by a global allocator only inside heap-measuring phases (a flag checked first; off in every timed row)."
    );
    let _ = writeln!(out, "- {others}");
    let _ = writeln!(
        out,
        "- Wall time of this run: {:.0} s\n",
        wall.as_secs_f64()
    );
    let mut last_heading = "";
    for (section, blocks) in &report.blocks {
        let title = heading(*section);
        if title != last_heading {
            let _ = writeln!(out, "## {title}\n");
            last_heading = title;
        }
        for block in blocks {
            let _ = writeln!(out, "{block}");
        }
    }
    out
}
