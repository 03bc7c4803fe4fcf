//! Serving under faults: a steady request load (four clients, a request every 5 ms
//! each) through the examples' HTTP gateway over three HTTP echo providers registered
//! on a real store, while one provider crashes (its server drops every connection and
//! its heartbeat stops, as a SIGKILLed process; in this process, so the run needs no
//! example binaries), or while every provider is restarted in turn. Each fault runs with
//! the gateway as it was before outlier ejection and retries (`ServingOptions::baseline`,
//! providers that deregister and stop at once) and with the defaults (ejection, retries,
//! providers that drain).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use kvstore::Store;
use kvstore_discovery::{Discovery, Instance, Registrar, Registration, ServingOptions};
use kvstore_examples::echo::{self, EchoServer};
use kvstore_examples::gateway::{self, GatewayOptions};
use kvstore_examples::load::{Load, Summary, summarize};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::measure::BenchResult;

/// The providers' lease TTL.
const TTL: Duration = Duration::from_secs(3);
/// The gateway's per-try timeout in these runs.
pub(crate) const PER_TRY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a stopping provider stays listed as draining.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// The load: clients, and each client's pause between requests.
const CLIENTS: usize = 4;
const INTERVAL: Duration = Duration::from_millis(5);
/// How long the load runs before a fault (its second half is the steady window).
const WARM_UP: Duration = Duration::from_secs(4);
/// The window measured after a crash.
const CRASH_WINDOW: Duration = Duration::from_secs(5);

/// Which behaviour a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One try, no ejection; providers deregister and stop at once.
    Baseline,
    /// The defaults: ejection, retries; providers drain.
    Default,
}

impl Mode {
    /// The mode's name in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (no ejection, no retries, no drain)",
            Mode::Default => "default (ejection, retries, drain)",
        }
    }
}

/// A run's steady window and its fault window.
pub(crate) struct Run {
    /// The 2 s before the fault.
    pub steady: Summary,
    /// The fault window.
    pub fault: Summary,
}

struct Provider {
    server: EchoServer,
    registration: Registration,
}

async fn start_provider(store: &Arc<dyn Store>, service: &str, id: &str) -> BenchResult<Provider> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let server = echo::serve(listener, id.to_owned(), StatusCode::OK);
    let registration = Registrar::new(store.clone())
        .register(Instance::new(service, id, address.as_str()), TTL)
        .await?;
    Ok(Provider {
        server,
        registration,
    })
}

/// Three providers of `service` and a gateway over them in `mode`, and the load.
async fn fleet(
    store: &Arc<dyn Store>,
    service: &str,
    mode: Mode,
    methods: &[Method],
) -> BenchResult<(
    Vec<Provider>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    Load,
)> {
    let mut providers = Vec::new();
    for i in 0..3 {
        providers.push(start_provider(store, service, &format!("p{i}")).await?);
    }
    let set = Discovery::new(store.clone()).watch(service).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while set.instances().len() < 3 {
        if Instant::now() > deadline {
            return Err("the gateway's set never had three instances".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let mut serving = match mode {
        Mode::Baseline => ServingOptions::baseline(),
        Mode::Default => ServingOptions::default(),
    };
    serving.per_try_timeout = PER_TRY_TIMEOUT;
    let options = GatewayOptions {
        serving,
        ..GatewayOptions::default()
    };
    let gateway = gateway::serve(listener, set, options, None);
    let load = Load::start(&url, CLIENTS, INTERVAL, methods);
    Ok((providers, gateway, load))
}

/// Stop the load, the gateway and the providers; every request the load sent.
async fn stop(
    load: Load,
    gateway: tokio::task::JoinHandle<std::io::Result<()>>,
    providers: Vec<Provider>,
) -> BenchResult<Vec<kvstore_examples::load::Sent>> {
    let sent = load.stop().await;
    gateway.abort();
    for provider in providers {
        provider.registration.deregister().await?;
        provider.server.crash();
    }
    Ok(sent)
}

/// One of three providers crashes under a GET load.
///
/// # Errors
/// A failed registration, watch or listener.
pub(crate) async fn crash(store: &Arc<dyn Store>, service: &str, mode: Mode) -> BenchResult<Run> {
    let (mut providers, gateway, load) = fleet(store, service, mode, &[Method::GET]).await?;
    tokio::time::sleep(WARM_UP).await;
    let crashed_at = Instant::now();
    let crashed = providers.remove(1);
    crashed.server.crash();
    crashed.registration.abandon();
    tokio::time::sleep(CRASH_WINDOW).await;
    let sent = stop(load, gateway, providers).await?;
    Ok(Run {
        steady: summarize(&sent, crashed_at - WARM_UP / 2, crashed_at),
        fault: summarize(&sent, crashed_at, crashed_at + CRASH_WINDOW),
    })
}

/// Every provider stopped and started again in turn under a GET + POST load: in the
/// baseline a stop deregisters and stops the server at once; by default it drains
/// ([`Registration::drain_and_deregister`]) and finishes in flight.
///
/// # Errors
/// A failed registration, watch or listener.
pub(crate) async fn rolling_restart(
    store: &Arc<dyn Store>,
    service: &str,
    mode: Mode,
) -> BenchResult<Run> {
    let (mut providers, gateway, load) =
        fleet(store, service, mode, &[Method::GET, Method::POST]).await?;
    tokio::time::sleep(WARM_UP).await;
    let started = Instant::now();
    for (i, slot) in providers.iter_mut().enumerate() {
        let replacement = start_provider(store, service, &format!("p{i}-new")).await?;
        let stopping = std::mem::replace(slot, replacement);
        match mode {
            Mode::Baseline => {
                stopping.registration.deregister().await?;
                stopping.server.crash();
            }
            Mode::Default => {
                stopping
                    .registration
                    .drain_and_deregister(DRAIN_GRACE)
                    .await?;
                stopping.server.shutdown().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ended = Instant::now();
    let sent = stop(load, gateway, providers).await?;
    Ok(Run {
        steady: summarize(&sent, started - WARM_UP / 2, started),
        fault: summarize(&sent, started, ended),
    })
}

/// The section's table: a crash and a rolling restart on each of `stores`, in both
/// modes.
///
/// # Errors
/// A failed run.
pub(crate) async fn table(stores: &[(&str, Arc<dyn Store>)]) -> BenchResult<crate::measure::Table> {
    let mut table = crate::measure::Table::new(
        "Serving through a provider crash and a rolling restart",
        format!(
            "Four clients, each sending a request every {} ms through the examples' HTTP gateway to three HTTP echo providers (lease TTL {} s, gateway per-try timeout {} ms). *crash*: one provider drops every connection and stops its heartbeat (in this process, as a SIGKILL would; the cross-process tests SIGKILL real processes), GETs, the {} s after it. *rolling restart*: each provider in turn is replaced (the new one starts, the old one stops), GETs and POSTs, from the first stop to 0.5 s after the last. Latency is each request's, in ms; *steady p99* is the 2 s before the fault. Target: 0 failed, and a crash-window p99 within 2 × the steady p99 + one per-try timeout.",
            INTERVAL.as_millis(),
            TTL.as_secs(),
            PER_TRY_TIMEOUT.as_millis(),
            CRASH_WINDOW.as_secs(),
        ),
        &[
            "backend",
            "fault",
            "gateway and providers",
            "requests",
            "failed",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "steady p99 ms",
            "target",
        ],
    );
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    for (backend, store) in stores {
        for (fault, crash_fault) in [("crash", true), ("rolling restart", false)] {
            for mode in [Mode::Baseline, Mode::Default] {
                eprintln!("  {backend} {fault}, {}", mode.name());
                let service =
                    format!("serving-{}-{:?}", fault.replace(' ', "-"), mode).to_lowercase();
                let run = if crash_fault {
                    crash(store, &service, mode).await?
                } else {
                    rolling_restart(store, &service, mode).await?
                };
                let bound = run.steady.p99 * 2 + PER_TRY_TIMEOUT;
                let met = run.fault.failed == 0 && (!crash_fault || run.fault.p99 <= bound);
                let target = match (mode, met) {
                    (Mode::Baseline, _) => "—".to_owned(),
                    (Mode::Default, true) => "met".to_owned(),
                    (Mode::Default, false) => "**missed**".to_owned(),
                };
                table.row(vec![
                    (*backend).to_owned(),
                    fault.to_owned(),
                    mode.name().to_owned(),
                    run.fault.requests.to_string(),
                    run.fault.failed.to_string(),
                    ms(run.fault.p50),
                    ms(run.fault.p99),
                    ms(run.fault.p999),
                    ms(run.steady.p99),
                    target,
                ]);
            }
        }
    }
    Ok(table)
}
