//! An HTTP gateway as its own process: discovers a service's live instances and
//! forwards every request to one that can serve it (outlier ejection, retries on
//! another instance), printing each change of the instance set and when it goes stale
//! (the registry stops answering, or protection holds back a drop). `GET /metrics`
//! shows kvstore's metrics (store calls, watch reconnects and resyncs, lease losses,
//! registrations, ejections, retries) in Prometheus format.
//!
//! ```text
//! cargo run --features etcd,redis --example gateway -- --store etcd://127.0.0.1:2379 --service echo --listen 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/
//! curl http://127.0.0.1:8080/metrics
//! ```

use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use kvstore_discovery::{Discovery, InstanceChange, OutlierOptions, ServingOptions};
use kvstore_examples::gateway::{self, GatewayOptions};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;

/// Route HTTP requests to the live instances of a service.
#[derive(Parser)]
struct Args {
    /// Store URL: etcd://host:port, redis://host:port or memory://.
    #[arg(long, env = "KVSTORE_URL")]
    store: String,
    /// Service to route to.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// How long one try may take, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    per_try_timeout_ms: u64,
    /// Tries per request in all (1: no retries).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Never eject failing instances (route wherever discovery says).
    #[arg(long)]
    no_ejection: bool,
    /// Check every instance actively with `GET PATH` (2xx passes) each second.
    #[arg(long)]
    health_check_path: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let discovery = Discovery::new(store);
    // Two sets of one service from one `Discovery` share one watch: one is printed, the
    // other feeds the gateway.
    let mut instances = discovery.watch(&args.service).await?;
    let listener = TcpListener::bind(&args.listen).await?;
    let mut serving = ServingOptions::default();
    serving.per_try_timeout = Duration::from_millis(args.per_try_timeout_ms);
    serving.attempts = args.attempts.max(1);
    if args.no_ejection {
        serving.outlier = OutlierOptions::disabled();
    }
    let options = GatewayOptions {
        serving,
        health_check_path: args.health_check_path.clone(),
        ..GatewayOptions::default()
    };
    println!("gateway listening on {}", listener.local_addr()?);
    println!(
        "{} has {} instance(s)",
        args.service,
        instances.instances().len()
    );
    let server = gateway::serve(
        listener,
        discovery.watch(&args.service).await?,
        options,
        Some(metrics),
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            item = instances.next() => {
                let changes = match item {
                    None => break,
                    Some(Ok(changes)) => changes,
                    Some(Err(stale)) => {
                        println!("stale: {stale}");
                        continue;
                    }
                };
                for change in changes {
                    match change {
                        InstanceChange::Added { instance, revision } => {
                            println!("added {} at {} (revision {revision})", instance.id, instance.address);
                        }
                        InstanceChange::Updated { instance, revision } => {
                            println!("updated {}: {:?} (revision {revision})", instance.id, instance.status);
                        }
                        InstanceChange::Removed { instance, revision } => {
                            println!("removed {} (revision {revision})", instance.id);
                        }
                    }
                }
            }
        }
    }
    server.abort();
    Ok(())
}
