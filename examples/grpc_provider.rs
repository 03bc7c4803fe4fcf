//! A gRPC provider as its own process: serves the echo service (`kvstore.examples.Echo`)
//! and `grpc.health.v1` on a loopback port with tonic, and registers itself under a
//! service until interrupted. Ctrl-C or SIGTERM stops it gracefully: it drains
//! (advertises `Draining` and reports `NOT_SERVING`), keeps serving for the drain
//! grace, deregisters, finishes the calls in flight and exits. SIGKILL leaves the record
//! to expire after the TTL.
//!
//! ```text
//! cargo run --features etcd,redis --example grpc_provider -- --store etcd://127.0.0.1:2379 --id greeter-1
//! ```

use std::time::Duration;

use clap::Parser;
use kvstore_discovery::{Instance, Registrar, RegistrationStatus};
use kvstore_examples::grpc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// Register a gRPC echo provider under a service.
#[derive(Parser)]
struct Args {
    /// Store URL: etcd://host:port, redis://host:port or memory://.
    #[arg(long, env = "KVSTORE_URL")]
    store: String,
    /// Service name to register under.
    #[arg(long, default_value = "greeter")]
    service: String,
    /// Instance id, unique within the service.
    #[arg(long)]
    id: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Lease TTL in seconds: how long a crashed provider stays listed at most.
    #[arg(long, default_value_t = 3)]
    ttl: u64,
    /// How long to stay listed as draining before deregistering, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    drain_grace_ms: u64,
    /// Availability zone to advertise.
    #[arg(long)]
    zone: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let listener = TcpListener::bind(&args.listen).await?;
    let address = listener.local_addr()?.to_string();
    let server = grpc::serve(listener, args.id.clone()).await;
    let mut instance = Instance::new(args.service.as_str(), args.id.as_str(), address.as_str());
    instance.zone = args.zone.clone();
    instance.metadata.insert("protocol".into(), "grpc".into());
    let registration = Registrar::new(store)
        .register(instance, Duration::from_secs(args.ttl))
        .await?;
    println!("grpc provider {} listening on {address}", args.id);
    println!(
        "registered {}/{} with a {} s lease",
        args.service, args.id, args.ttl
    );

    let mut status = registration.status_changes();
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                match &*status.borrow() {
                    RegistrationStatus::Registered { lease, revision } => {
                        println!("registered (lease {lease}, revision {revision})");
                    }
                    RegistrationStatus::Reregistering { attempt, reason } => {
                        println!("registration lost ({reason}); retry {attempt}");
                    }
                    RegistrationStatus::Replaced { revision } => {
                        println!("replaced by a newer registration of {} (revision {revision})", args.id);
                    }
                    RegistrationStatus::Stopped => println!("registration stopped"),
                }
            }
        }
    }
    println!("draining {}/{}", args.service, args.id);
    server.set_not_serving().await;
    registration
        .drain_and_deregister(Duration::from_millis(args.drain_grace_ms))
        .await?;
    println!("deregistered {}/{}", args.service, args.id);
    server.shutdown().await?;
    println!("stopped {}/{}", args.service, args.id);
    Ok(())
}
