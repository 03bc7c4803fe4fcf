//! `kvstore-bench`: the cost of the abstraction, measured against raw clients doing the
//! same work in the same run, on servers it starts itself (through the test support),
//! pinned to a core apart from the benchmark's; and the curves of the costs that grow
//! with the work (requests in flight, value size, prefix size, idle watchers, live
//! leases). Prints the report and writes it to `BENCHMARKS.md`.
//!
//! Run: `cargo run --release -p kvstore-bench` (under 10 minutes on 2 cores);
//! `--quick` for a smoke run; `--only SECTION[,SECTION...]` for parts (`--help` lists
//! them).
//!
//! Where things live:
//! - this file: the command line ([`Args`], [`Section`]), [`run`] and [`run_section`]
//!   (which calls each section's runner), and the servers ([`Servers`], started when a
//!   section first needs them) with the connections to them ([`etcd_store`],
//!   [`redis_store`], [`etcd_raw`], [`redis_raw`]);
//! - [`sections`]: each section's runner, which connects to the servers, runs the
//!   measurements and adds its tables to the report, one module per topic;
//! - the topic modules, the measurements themselves: [`kv`] (get / put / CAS / TTL put
//!   and their curves), [`coordination`] (transactions, elections, ZooKeeper), [`lock`],
//!   [`watch`], [`discovery`], [`serving`], [`list`], [`lease`] (keep-alive);
//! - [`measure`]: the harness (runs, paired rounds, spreads, verdicts, tables);
//! - [`report`]: the report's blocks and the whole document with its setup header;
//! - [`machine`]: pinning, CPU time and the machine's description; [`allocator`]: the
//!   heap-counting global allocator.

mod allocator;
mod coordination;
mod discovery;
mod kv;
mod lease;
mod list;
mod lock;
mod machine;
mod measure;
mod report;
mod sections;
mod serving;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvstore::Store;
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::{EtcdServer, RedisServer};
use redis::IntoConnectionInfo;

use crate::kv::KvTables;
use crate::machine::Placement;
use crate::measure::{BenchResult, Timing};
use crate::report::{Report, render};

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
        Section::EtcdKv => sections::kv::etcd_kv(servers, timing, kv).await,
        Section::RedisKv => sections::kv::redis_kv(servers, timing, args.raw_nodelay, kv).await,
        Section::MemoryKv => sections::kv::memory_kv(timing, kv, report).await,
        Section::Txn => sections::kv::txn(servers, timing, kv).await,
        Section::Lock => sections::lock::locks(servers, timing, args.raw_nodelay, report).await,
        Section::Watch => sections::watch::watches(servers, timing, report).await,
        Section::Discovery => sections::discovery::discovery_rows(servers, timing, report).await,
        Section::Election => sections::coordination::elections(servers, timing, report).await,
        Section::Serving => sections::serving::serving_rows(servers, report).await,
        Section::Zookeeper => sections::kv::zookeeper(servers, timing, kv, report).await,
        Section::InflightCurve | Section::ValueSizeCurve => {
            sections::kv::kv_curves(section, servers, timing, args.raw_nodelay, report).await
        }
        Section::ListCurve => sections::list::list_curves(servers, timing, report).await,
        Section::WatchersCurve => sections::watch::watchers_curves(servers, timing, report).await,
        Section::KeepaliveCurve => sections::lease::keepalive_curves(servers, timing, report).await,
    }
}
