//! The whole job in one process, on the in-memory store:
//!
//! 1. three HTTP echo providers on loopback register themselves (lease + heartbeat);
//! 2. a gateway discovers them and balances real HTTP requests over them (tower's p2c);
//! 3. one provider crashes (server and heartbeat stop, no deregistration) and the
//!    gateway routes only to the survivors once its TTL has run out;
//! 4. a new provider starts and joins.
//!
//! Exits non-zero if anything did not happen as printed. Run: `cargo run --example quickstart`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kvstore::Store;
use kvstore_discovery::{
    Discovery, Instance, InstanceChange, InstanceSet, Registrar, Registration,
};
use kvstore_examples::client::HttpClient;
use kvstore_examples::{echo, gateway};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Short, so the demo finishes quickly; real services use 10–30 s.
const TTL: Duration = Duration::from_secs(2);
/// How long any step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests sent per step, at most: the balancer picks at random between the less
/// loaded of two instances, so it takes a few requests to reach every one.
const MAX_REQUESTS: usize = 30;

type Failure = Box<dyn std::error::Error>;

struct Provider {
    id: String,
    server: JoinHandle<std::io::Result<()>>,
    registration: Registration,
}

async fn start_provider(store: &Arc<dyn Store>, id: &str) -> Result<Provider, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let server = echo::serve(listener, id.to_owned());
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

/// Send requests through the gateway until every `expected` provider has answered (at
/// most `MAX_REQUESTS`); fails on any failed request or any other provider answering.
async fn send_requests(
    client: &HttpClient,
    gateway: &str,
    expected: &[&str],
) -> Result<(), Failure> {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let mut answered = BTreeSet::new();
    for i in 1..=MAX_REQUESTS {
        let reply = client.get(&format!("http://{gateway}/hello")).await?;
        let by = reply.served_by.clone().unwrap_or_default();
        println!(
            "  request {i}: {} from {by}: {}",
            reply.status,
            reply.body.trim_end()
        );
        if reply.status != 200 {
            return Err(format!("request {i} failed with {}", reply.status).into());
        }
        if !expected.contains(&by) {
            return Err(
                format!("request {i} was served by {by}, expected one of {expected:?}").into(),
            );
        }
        answered.insert(by);
        if answered == expected {
            println!(
                "  answered by: {}",
                expected.into_iter().collect::<Vec<_>>().join(", ")
            );
            return Ok(());
        }
    }
    Err(format!("after {MAX_REQUESTS} requests only {answered:?} of {expected:?} answered").into())
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

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let store = kvstore::open("memory://").await?;
    let discovery = Discovery::new(store.clone());
    let client = HttpClient::default();

    println!("1. three echo providers register");
    let mut watcher = discovery.watch("echo").await?;
    let mut providers = Vec::new();
    for id in ["echo-1", "echo-2", "echo-3"] {
        providers.push(start_provider(&store, id).await?);
    }
    while watcher.instances().len() < 3 {
        wait_for(&mut watcher, "three registrations", |_| true).await?;
    }

    println!("2. a gateway discovers them and balances requests over them");
    // Shares the watcher's backend watch and decoded instances: one `Discovery`.
    let gateway_set = discovery.watch("echo").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?.to_string();
    println!(
        "  gateway listening on {gateway}, sees {} instances",
        gateway_set.instances().len()
    );
    let _gateway = gateway::serve(listener, gateway_set, None);
    send_requests(&client, &gateway, &["echo-1", "echo-2", "echo-3"]).await?;

    println!("3. echo-2 crashes: its server and heartbeat stop, it does not deregister");
    let crashed = providers.remove(1);
    crashed.server.abort();
    crashed.registration.abandon();
    let crashed_at = Instant::now();
    wait_for(
        &mut watcher,
        "echo-2 to expire",
        |c| matches!(c, InstanceChange::Removed { instance, .. } if instance.id == crashed.id),
    )
    .await?;
    let took = crashed_at.elapsed();
    println!("  echo-2 removed {took:.1?} after the crash (TTL {TTL:?})");
    if took > TTL + Duration::from_secs(1) {
        return Err(format!("echo-2 was removed after {took:?}, more than TTL + 1 s").into());
    }
    send_requests(&client, &gateway, &["echo-1", "echo-3"]).await?;

    println!("4. a new provider, echo-4, starts and joins");
    providers.push(start_provider(&store, "echo-4").await?);
    wait_for(
        &mut watcher,
        "echo-4 to join",
        |c| matches!(c, InstanceChange::Added { instance, .. } if instance.id == "echo-4"),
    )
    .await?;
    send_requests(&client, &gateway, &["echo-1", "echo-3", "echo-4"]).await?;

    for provider in providers {
        provider.registration.deregister().await?;
        provider.server.abort();
    }
    println!("done: registration, routing, a crash removed within the TTL, and a join");
    Ok(())
}
