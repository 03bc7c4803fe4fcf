//! An HTTP gateway as its own process: discovers a service's live instances and
//! round-robins every request to them, printing each change of the instance set.
//!
//! ```text
//! cargo run --features etcd,redis --example gateway -- --store etcd://127.0.0.1:2379 --service echo --listen 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/
//! ```

use clap::Parser;
use kvstore_discovery::{Discovery, InstanceChange};
use kvstore_examples::gateway;
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let mut instances = Discovery::new(store).watch(&args.service).await?;
    let listener = TcpListener::bind(&args.listen).await?;
    println!("gateway listening on {}", listener.local_addr()?);
    println!(
        "{} has {} instance(s)",
        args.service,
        instances.instances().len()
    );
    let server = gateway::serve(listener, instances.reader());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changes = instances.next_change() => {
                let Some(changes) = changes else { break };
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
