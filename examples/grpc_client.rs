//! A gRPC client as its own process: calls the echo service of whichever providers are
//! registered, through a `GrpcChannel` over the live `Up` instances
//! (`InstanceSet::into_grpc_channel`): providers that join get calls; a provider that
//! crashes is ejected at its first refused or reset connection, and the call that met
//! it is retried on another (the echo call is idempotent); a provider that stops
//! gracefully drains first, so no call meets it.
//!
//! ```text
//! cargo run --features etcd,redis --example grpc_client -- --store etcd://127.0.0.1:2379 --calls 10
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use kvstore_discovery::{
    ActiveHealth, ActiveHealthOptions, Discovery, GrpcHealthCheck, GrpcOptions,
};
use kvstore_examples::grpc::{EchoClient, EchoRequest};

/// The echo service's gRPC name, as `grpc.health.v1` reports it.
const ECHO_SERVICE: &str = "kvstore.examples.Echo";

/// How long one call may take, waiting for an instance included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Call a gRPC echo service found through discovery.
#[derive(Parser)]
struct Args {
    /// Store URL: etcd://host:port, redis://host:port or memory://.
    #[arg(long, env = "KVSTORE_URL")]
    store: String,
    /// Service to call.
    #[arg(long, default_value = "greeter")]
    service: String,
    /// How many calls to make (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    calls: u64,
    /// Also check every instance's `grpc.health.v1` status of the echo service each
    /// second, keeping those not `SERVING` out.
    #[arg(long)]
    health_check: bool,
    /// Pause between calls, in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let set = Discovery::new(store).watch(&args.service).await?;
    println!("{} has {} instance(s)", args.service, set.instances().len());
    let reader = set.reader();
    let channel = set.into_grpc_channel(GrpcOptions::default().idempotent(true));
    let _checks = args.health_check.then(|| {
        ActiveHealth::start(
            reader,
            channel.upstreams().detector().clone(),
            GrpcHealthCheck::new(ECHO_SERVICE),
            ActiveHealthOptions::default(),
        )
    });
    let mut client = EchoClient::new(channel);
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0;
    let mut call = 0;
    while args.calls == 0 || call < args.calls {
        call += 1;
        let request = EchoRequest {
            message: format!("hello {call}"),
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            reply = tokio::time::timeout(CALL_TIMEOUT, client.echo(request)) => match reply {
                Err(_) => {
                    failed += 1;
                    println!("call {call} timed out after {CALL_TIMEOUT:?} (no instance?)");
                }
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    println!("call {call}: {:?} from {}", reply.message, reply.served_by);
                    *served.entry(reply.served_by).or_default() += 1;
                }
                Ok(Err(status)) => {
                    failed += 1;
                    println!("call {call} failed: {}", status.message());
                }
            },
        }
        tokio::time::sleep(Duration::from_millis(args.interval)).await;
    }
    println!("served: {served:?}, failed: {failed}");
    Ok(())
}
