//! The gRPC scenario across real processes: three `grpc_provider` example processes
//! register with a real etcd (or Redis); this test calls them under a steady load (four
//! concurrent callers) through a [`GrpcChannel`] over discovery
//! (`InstanceSet::into_grpc_channel`), and kills, terminates or stops one of them
//! mid-load: no call may fail (the echo call is idempotent; a terminated provider
//! drains first).
//!
//! [`GrpcChannel`]: kvstore_discovery::GrpcChannel

mod processes;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvstore_discovery::{Discovery, GrpcChannel, GrpcOptions, ServingOptions};
use kvstore_examples::grpc::{EchoClient, EchoRequest};
use nix::sys::signal::Signal;
use processes::{Backend, Running, STEP_TIMEOUT, crash, signal, start, store_url, terminate};
use tokio::task::JoinSet;
use tokio::time::Instant;

const TTL_SECS: u64 = 3;
/// How long one call may take, retries included, before the test counts it failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The channel's per-try timeout.
const PER_TRY_TIMEOUT: Duration = Duration::from_millis(500);
/// Each caller's pause between calls.
const CALL_INTERVAL: Duration = Duration::from_millis(5);
/// How long calls go on after the fault.
const WINDOW: Duration = Duration::from_secs(5);

/// One call of the load: when it was sent, how long it took, who served it or why not.
type Call = (Instant, Duration, Result<String, String>);

/// Four callers calling until aborted.
struct Callers {
    calls: Arc<Mutex<Vec<Call>>>,
    tasks: JoinSet<()>,
}

impl Callers {
    fn start(channel: GrpcChannel) -> Callers {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for _ in 0..4 {
            let mut client = EchoClient::new(channel.clone());
            let calls = calls.clone();
            tasks.spawn(async move {
                loop {
                    let at = Instant::now();
                    let outcome = tokio::time::timeout(
                        CALL_TIMEOUT,
                        client.echo(EchoRequest {
                            message: "hello".into(),
                        }),
                    )
                    .await
                    .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))
                    .and_then(|reply| reply.map_err(|status| status.to_string()))
                    .map(|reply| reply.into_inner().served_by);
                    calls.lock().unwrap().push((at, at.elapsed(), outcome));
                    tokio::time::sleep(CALL_INTERVAL).await;
                }
            });
        }
        Callers { calls, tasks }
    }

    async fn until_served(&self, ids: &[&str]) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let served: BTreeSet<String> = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(_, _, outcome)| outcome.clone().ok())
                .collect();
            if ids.iter().all(|id| served.contains(*id)) {
                return;
            }
            assert!(Instant::now() < deadline, "only {served:?} answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) -> Vec<Call> {
        self.tasks.shutdown().await;
        self.calls.lock().unwrap().clone()
    }
}

/// Start three providers and callers through a retrying channel; `fault` then hits
/// provider 1, and no call from then on may fail.
async fn no_call_fails_when(backend: Backend, namespace: &str, fault: Signal) {
    let url = store_url(backend, namespace);
    let ttl = TTL_SECS.to_string();
    let mut providers: Vec<Running> = (0..3)
        .map(|i| {
            let id = format!("g{i}");
            start(
                "grpc_provider",
                &["--store", &url, "--id", &id, "--ttl", &ttl],
                "registered",
            )
            .0
        })
        .collect();
    let store = kvstore::open(&url).await.unwrap();
    let set = Discovery::new(store).watch("greeter").await.unwrap();
    let mut serving = ServingOptions::default();
    serving.per_try_timeout = PER_TRY_TIMEOUT;
    let channel = set.into_grpc_channel(GrpcOptions::default().idempotent(true).serving(serving));
    let callers = Callers::start(channel);
    callers.until_served(&["g0", "g1", "g2"]).await;

    let fault_at = Instant::now();
    match fault {
        Signal::SIGKILL => crash(&mut providers[1]),
        Signal::SIGTERM => terminate(&mut providers[1]).await,
        other => signal(&providers[1], other),
    }
    tokio::time::sleep(WINDOW).await;
    let calls = callers.stop().await;
    if fault == Signal::SIGSTOP {
        signal(&providers[1], Signal::SIGCONT);
    }
    let after: Vec<&Call> = calls.iter().filter(|(at, _, _)| *at >= fault_at).collect();
    assert!(after.len() > 100, "too few calls: {}", after.len());
    let failed: Vec<&&Call> = after
        .iter()
        .filter(|(_, _, outcome)| outcome.is_err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {failed:?}",
        failed.len(),
        after.len()
    );
    if fault == Signal::SIGSTOP {
        let slowest = after
            .iter()
            .map(|(_, took, _)| *took)
            .max()
            .unwrap_or_default();
        let bound = PER_TRY_TIMEOUT + Duration::from_secs(1);
        assert!(slowest < bound, "a call took {slowest:?} (bound {bound:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_killed_grpc_provider_fails_no_call() {
    no_call_fails_when(Backend::Etcd, "grpc-kill", Signal::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_terminated_grpc_provider_fails_no_call() {
    no_call_fails_when(Backend::Etcd, "grpc-term", Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_hung_grpc_provider_fails_no_call_and_costs_one_per_try_timeout() {
    no_call_fails_when(Backend::Etcd, "grpc-stop", Signal::SIGSTOP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_killed_grpc_provider_fails_no_call() {
    no_call_fails_when(Backend::Redis, "grpc-kill", Signal::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_terminated_grpc_provider_fails_no_call() {
    no_call_fails_when(Backend::Redis, "grpc-term", Signal::SIGTERM).await;
}
