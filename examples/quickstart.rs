//! The whole job in one process, on the in-memory store, under a steady load (four
//! clients, a GET every 5 ms each, through the gateway, from start to end):
//!
//! 1. three HTTP echo providers on loopback register themselves (lease + heartbeat);
//! 2. a gateway discovers them and forwards every request to a live instance;
//! 3. one provider crashes (its server and heartbeat stop, no deregistration): the
//!    gateway ejects it at its first refused or reset connection and retries the
//!    requests that met it on another provider; discovery removes it after its TTL;
//! 4. a new provider starts and joins;
//! 5. one provider stops gracefully: it drains, deregisters, and finishes in flight.
//!
//! Prints how many requests failed (the goal, and what it exits non-zero without, is 0).
//! Run: `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use kvstore::Store;
use kvstore_discovery::{
    Discovery, Instance, InstanceChange, InstanceSet, Registrar, Registration,
};
use kvstore_examples::echo::{self, EchoServer};
use kvstore_examples::gateway::{self, GatewayOptions};
use kvstore_examples::load::{Load, summarize};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Short, so the demo finishes quickly; real services use 10–30 s.
const TTL: Duration = Duration::from_secs(2);
/// How long a stopping provider stays listed as draining.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long any step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// The load: clients, and the pause between one client's requests.
const CLIENTS: usize = 4;
const INTERVAL: Duration = Duration::from_millis(5);

type Failure = Box<dyn std::error::Error>;

struct Provider {
    id: String,
    server: EchoServer,
    registration: Registration,
}

async fn start_provider(store: &Arc<dyn Store>, id: &str) -> Result<Provider, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let server = echo::serve(listener, id.to_owned(), StatusCode::OK);
    let registration = Registrar::new(store.clone())
        .register(Instance::new("echo", id, address.as_str()), TTL)
        .await?;
    println!("  provider {id} listening on {address}, registered with a {TTL:?} lease");
    Ok(Provider {
        id: id.to_owned(),
        server,
        registration,
    })
}

/// Wait until every one of `expected` has answered a request of the load sent since
/// `since`, and print who answered how many.
async fn until_served(load: &Load, since: Instant, expected: &[&str]) -> Result<(), Failure> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let served = load.served_since(since);
        if expected.iter().all(|id| served.contains_key(*id)) {
            let line: Vec<String> = served.iter().map(|(id, n)| format!("{id} {n}")).collect();
            println!("  served by: {}", line.join(", "));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("only {served:?} answered, expected {expected:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait for the next change of `set` that satisfies `done`.
async fn wait_for(
    set: &mut InstanceSet,
    what: &str,
    done: impl Fn(&InstanceChange) -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let changes = tokio::time::timeout_at(deadline, set.next_change())
            .await
            .map_err(|_| format!("timed out waiting for {what}"))?
            .ok_or("the store closed")?;
        if changes.iter().any(&done) {
            return Ok(());
        }
    }
}

/// Print the requests sent since `since`, and how many failed.
fn report(load: &Load, since: Instant) -> usize {
    let summary = summarize(&load.sent(), since, Instant::now());
    println!(
        "  {} requests meanwhile, {} failed (p50 {:.1?}, p99 {:.1?})",
        summary.requests, summary.failed, summary.p50, summary.p99
    );
    summary.failed
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let store = kvstore::open("memory://").await?;
    let discovery = Discovery::new(store.clone());

    println!("1. three echo providers register");
    let mut watcher = discovery.watch("echo").await?;
    let mut providers = Vec::new();
    for id in ["echo-1", "echo-2", "echo-3"] {
        providers.push(start_provider(&store, id).await?);
    }
    while watcher.instances().len() < 3 {
        wait_for(&mut watcher, "three registrations", |_| true).await?;
    }

    println!("2. a gateway discovers them; {CLIENTS} clients send a GET every {INTERVAL:?} each");
    // Shares the watcher's backend watch and decoded instances: one `Discovery`.
    let gateway_set = discovery.watch("echo").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?.to_string();
    println!(
        "  gateway listening on {gateway}, sees {} instances",
        gateway_set.instances().len()
    );
    let _gateway = gateway::serve(listener, gateway_set, GatewayOptions::default(), None);
    let started = Instant::now();
    let load = Load::start(
        &format!("http://{gateway}/hello"),
        CLIENTS,
        INTERVAL,
        &[Method::GET],
    );
    until_served(&load, started, &["echo-1", "echo-2", "echo-3"]).await?;

    println!("3. echo-2 crashes: its server and heartbeat stop, it does not deregister");
    let crashed = providers.remove(1);
    crashed.server.crash();
    crashed.registration.abandon();
    let crashed_at = Instant::now();
    wait_for(
        &mut watcher,
        "echo-2 to expire",
        |c| matches!(c, InstanceChange::Removed { instance, .. } if instance.id == crashed.id),
    )
    .await?;
    println!(
        "  echo-2 removed from the registry {:.1?} after the crash (TTL {TTL:?})",
        crashed_at.elapsed()
    );
    let mut failed = report(&load, crashed_at);

    println!("4. a new provider, echo-4, starts and joins");
    let joined_at = Instant::now();
    providers.push(start_provider(&store, "echo-4").await?);
    until_served(&load, joined_at, &["echo-4"]).await?;
    failed += report(&load, joined_at);

    println!(
        "5. echo-1 stops gracefully: drains, deregisters after {DRAIN_GRACE:?}, finishes in flight"
    );
    let stopping = providers.remove(0);
    let stopped_at = Instant::now();
    stopping
        .registration
        .drain_and_deregister(DRAIN_GRACE)
        .await?;
    stopping.server.shutdown().await;
    println!("  {} stopped", stopping.id);
    until_served(&load, Instant::now(), &["echo-3", "echo-4"]).await?;
    failed += report(&load, stopped_at);

    let sent = load.stop().await;
    let all = summarize(&sent, started, Instant::now());
    for provider in providers {
        provider.registration.deregister().await?;
        provider.server.shutdown().await;
    }
    println!(
        "done: {} requests through a crash, a join and a graceful stop; {} failed",
        all.requests, all.failed
    );
    if failed > 0 || all.failed > 0 {
        return Err(format!("{} requests failed", all.failed).into());
    }
    Ok(())
}
