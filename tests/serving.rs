//! Serving under faults, across real processes: three `provider` example processes and
//! a `gateway` example process on a real etcd or Redis, under a steady load (four
//! clients, a request every 5 ms each, through the gateway). A provider is killed,
//! terminated, stopped or blackholed mid-load; the gateway must not let a request fail
//! that the fault did not have to fail (docs/CONTRACT.md §9, "Serving").

mod processes;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::Method;
use kvstore_examples::client::HttpClient;
use kvstore_examples::load::{Load, Sent, summarize};
use kvstore_testkit::proxy::TcpProxy;
use kvstore_testkit::server::free_port;
use nix::sys::signal::Signal;
use processes::{Backend, Running, STEP_TIMEOUT, crash, signal, start, store_url, terminate};
use tokio::time::Instant;

/// The providers' lease TTL.
const TTL_SECS: u64 = 3;
/// The gateway's per-try timeout.
const PER_TRY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the load goes on after a fault.
const WINDOW: Duration = Duration::from_secs(5);
/// The load: clients, and each client's pause between requests.
const CLIENTS: usize = 4;
const INTERVAL: Duration = Duration::from_millis(5);

/// Three providers and a gateway.
struct Fleet {
    store: String,
    providers: Vec<Option<Running>>,
    _gateway: Running,
    url: String,
}

impl Fleet {
    /// Start providers `p0`, `p1`, `p2` (each with `extra[i]` arguments) and a gateway.
    fn start(store: String, extra: [&[&str]; 3]) -> Fleet {
        Fleet::start_with(store, extra, &[])
    }

    /// As [`Fleet::start`], with `gateway_args` for the gateway.
    fn start_with(store: String, extra: [&[&str]; 3], gateway_args: &[&str]) -> Fleet {
        let ttl = TTL_SECS.to_string();
        let providers = extra
            .iter()
            .enumerate()
            .map(|(i, extra)| Some(start_provider(&store, &format!("p{i}"), &ttl, extra)))
            .collect();
        let gateway_address = format!("127.0.0.1:{}", free_port().unwrap());
        let per_try = PER_TRY_TIMEOUT.as_millis().to_string();
        let mut args = vec![
            "--store",
            &store,
            "--listen",
            &gateway_address,
            "--per-try-timeout-ms",
            &per_try,
        ];
        args.extend_from_slice(gateway_args);
        let (gateway, _) = start("gateway", &args, "gateway listening");
        Fleet {
            store,
            providers,
            _gateway: gateway,
            url: format!("http://{gateway_address}/"),
        }
    }

    fn provider(&mut self, i: usize) -> &mut Running {
        self.providers[i].as_mut().expect("a running provider")
    }
}

fn start_provider(store: &str, id: &str, ttl: &str, extra: &[&str]) -> Running {
    let mut args = vec!["--store", store, "--id", id, "--ttl", ttl];
    args.extend_from_slice(extra);
    start("provider", &args, "registered").0
}

/// Wait until every one of `ids` has answered a request of `load` sent since `since`.
async fn until_served(load: &Load, since: Instant, ids: &[&str]) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let served = load.served_since(since);
        if ids.iter().all(|id| served.contains_key(*id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {served:?} answered within {STEP_TIMEOUT:?}, expected {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The requests of `sent` from `from` on that were not answered 2xx.
fn failures(sent: &[Sent], from: Instant) -> Vec<&Sent> {
    sent.iter().filter(|s| s.at >= from && !s.ok()).collect()
}

async fn loaded_fleet(store: String, extra: [&[&str]; 3], methods: &[Method]) -> (Fleet, Load) {
    let fleet = Fleet::start(store, extra);
    let load = Load::start(&fleet.url, CLIENTS, INTERVAL, methods);
    until_served(&load, Instant::now(), &["p0", "p1", "p2"]).await;
    (fleet, load)
}

/// SIGKILL one of three providers: no idempotent request fails, and the dead one serves
/// nothing after it died.
async fn a_killed_provider_fails_no_idempotent_request(backend: Backend) {
    let (mut fleet, load) = loaded_fleet(
        store_url(backend, "serving-kill"),
        [&[], &[], &[]],
        &[Method::GET],
    )
    .await;
    crash(fleet.provider(1));
    let killed_at = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let sent = load.stop().await;
    let window = summarize(&sent, killed_at, Instant::now());
    assert!(window.requests > 100, "too few requests: {window:?}");
    assert!(
        failures(&sent, killed_at).is_empty(),
        "{window:?}: {:?}",
        failures(&sent, killed_at)
    );
    let late: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at >= killed_at && s.served_by.as_deref() == Some("p1"))
        .collect();
    assert!(late.is_empty(), "the killed provider answered: {late:?}");
}

/// SIGTERM one of three providers under GETs and POSTs: it drains, so no request of any
/// kind fails.
async fn a_terminated_provider_fails_no_request_of_any_kind(backend: Backend) {
    let (mut fleet, load) = loaded_fleet(
        store_url(backend, "serving-term"),
        [&[], &[], &[]],
        &[Method::GET, Method::POST],
    )
    .await;
    let stopped_at = Instant::now();
    terminate(fleet.provider(0)).await;
    fleet.providers[0] = None;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = load.stop().await;
    let posts = sent
        .iter()
        .filter(|s| s.at >= stopped_at && s.method == Method::POST)
        .count();
    assert!(posts > 50, "too few POSTs: {posts}");
    assert!(
        failures(&sent, stopped_at).is_empty(),
        "{:?}",
        failures(&sent, stopped_at)
    );
}

/// SIGSTOP one of three providers (hung: no RST, its heartbeat stops): no idempotent
/// request fails, and none waits much longer than one per-try timeout.
async fn a_hung_provider_fails_no_idempotent_request_and_costs_one_per_try_timeout(
    backend: Backend,
) {
    let (mut fleet, load) = loaded_fleet(
        store_url(backend, "serving-stop"),
        [&[], &[], &[]],
        &[Method::GET],
    )
    .await;
    signal(fleet.provider(2), Signal::SIGSTOP);
    let stopped_at = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let sent = load.stop().await;
    signal(fleet.provider(2), Signal::SIGCONT);
    assert!(
        failures(&sent, stopped_at).is_empty(),
        "{:?}",
        failures(&sent, stopped_at)
    );
    let slowest = sent
        .iter()
        .filter(|s| s.at >= stopped_at)
        .map(|s| s.latency)
        .max()
        .unwrap_or_default();
    // One try may wait out its timeout; the retry elsewhere answers at loopback speed.
    let bound = PER_TRY_TIMEOUT + Duration::from_secs(1);
    assert!(
        slowest < bound,
        "a request took {slowest:?} (bound {bound:?})"
    );
}

/// A provider whose network goes silent (blackholed by a proxy in front of it; its
/// heartbeat goes on, so it stays registered): no idempotent request fails.
async fn a_blackholed_provider_fails_no_idempotent_request(backend: Backend) {
    let store = store_url(backend, "serving-blackhole");
    let port = free_port().unwrap();
    let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let advertise = proxy.address();
    let (_fleet, load) = loaded_fleet(
        store,
        [&["--listen", &listen, "--advertise", &advertise], &[], &[]],
        &[Method::GET],
    )
    .await;
    proxy.blackhole();
    let silent_at = Instant::now();
    // Long enough for the first ejection to end and the probation try to time out.
    tokio::time::sleep(WINDOW + Duration::from_secs(2)).await;
    let sent = load.stop().await;
    assert!(
        failures(&sent, silent_at).is_empty(),
        "{:?}",
        failures(&sent, silent_at)
    );
}

/// Every provider killed: the gateway answers 503 at once (no hang), and serves again
/// when a provider returns.
async fn with_every_provider_dead_the_gateway_answers_503_at_once_and_recovers(backend: Backend) {
    let (mut fleet, load) = loaded_fleet(
        store_url(backend, "serving-all-dead"),
        [&[], &[], &[]],
        &[Method::GET],
    )
    .await;
    for i in 0..3 {
        crash(fleet.provider(i));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = load.stop().await;
    let after = Instant::now() - Duration::from_secs(1);
    let answers: Vec<&Sent> = sent.iter().filter(|s| s.at >= after).collect();
    assert!(answers.len() > 20, "too few requests: {}", answers.len());
    for sent in &answers {
        assert_eq!(sent.outcome, Ok(503), "{sent:?}");
        assert!(
            sent.latency < Duration::from_secs(1),
            "a 503 took {:?}",
            sent.latency
        );
    }

    let ttl = TTL_SECS.to_string();
    fleet.providers[0] = Some(start_provider(&fleet.store, "back", &ttl, &[]));
    let client = HttpClient::default();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let reply = client.get(&fleet.url).await;
        if let Ok(reply) = &reply
            && reply.status == 200
        {
            assert_eq!(reply.served_by.as_deref(), Some("back"));
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three providers all answering 500: ejection stops at its cap (half of the set: one
/// of three), so the gateway keeps passing their answers on from at least two.
async fn with_every_provider_failing_ejection_stops_at_the_cap_and_the_gateway_keeps_serving(
    backend: Backend,
) {
    let failing: &[&str] = &["--status", "500"];
    let fleet = Fleet::start(
        store_url(backend, "serving-all-500"),
        [failing, failing, failing],
    );
    let load = Load::start(&fleet.url, CLIENTS, INTERVAL, &[Method::GET]);
    tokio::time::sleep(WINDOW).await;
    let sent = load.stop().await;
    let from = Instant::now() - Duration::from_secs(3);
    let window: Vec<&Sent> = sent.iter().filter(|s| s.at >= from).collect();
    assert!(window.len() > 100, "too few requests: {}", window.len());
    for sent in &window {
        assert_eq!(sent.outcome, Ok(500), "the instances' answer: {sent:?}");
    }
    let answering: BTreeSet<&str> = window
        .iter()
        .filter_map(|s| s.served_by.as_deref())
        .collect();
    assert!(answering.len() >= 2, "only {answering:?} kept serving");
}

/// Active health checks alone (no retries, no ejection) keep an instance that fails
/// its checks out of the pick set: after the checks' threshold no request reaches it.
async fn active_health_checks_keep_a_failing_instance_out(backend: Backend) {
    let failing: &[&str] = &["--status", "503"];
    let fleet = Fleet::start_with(
        store_url(backend, "serving-active"),
        [&[], &[], failing],
        &[
            "--attempts",
            "1",
            "--no-ejection",
            "--health-check-path",
            "/",
        ],
    );
    let load = Load::start(&fleet.url, CLIENTS, INTERVAL, &[Method::GET]);
    // Two failed checks a second apart make it failing; allow a third for start-up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checked_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = load.stop().await;
    let window = summarize(&sent, checked_at, Instant::now());
    assert!(window.requests > 100, "too few requests: {window:?}");
    assert!(
        failures(&sent, checked_at).is_empty(),
        "{:?}",
        failures(&sent, checked_at)
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Etcd).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redis).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_killed_provider_fails_no_idempotent_request,
    a_terminated_provider_fails_no_request_of_any_kind,
    a_hung_provider_fails_no_idempotent_request_and_costs_one_per_try_timeout,
    a_blackholed_provider_fails_no_idempotent_request,
    with_every_provider_dead_the_gateway_answers_503_at_once_and_recovers,
    with_every_provider_failing_ejection_stops_at_the_cap_and_the_gateway_keeps_serving,
    active_health_checks_keep_a_failing_instance_out,
);
