//! Typed live configuration steering a running HTTP service (kvstore-config).
//!
//! The service answers `GET /` with a greeting, limits itself to a number of requests
//! per second, and has a maintenance switch: all three come from one JSON key, applied
//! live as it changes. A push that does not parse or validate is refused and the service
//! keeps running on the last good configuration.
//!
//! ```text
//! cargo run --example config_watch                # the demo on the in-memory store
//! cargo run --features etcd,redis --example config_watch -- --store etcd://127.0.0.1:2379 --key config/app --listen 127.0.0.1:8081
//! etcdctl put kvstore/config/app '{"greeting":"hi","requests_per_second":2,"maintenance":false}'
//! curl http://127.0.0.1:8081/                      # hi (twice a second at most, then 429)
//! etcdctl put kvstore/config/app '{"greeting":"","requests_per_second":0}'   # refused: logged, ignored
//! etcdctl put kvstore/config/app '{"greeting":"hi","requests_per_second":2,"maintenance":true}'
//! curl -i http://127.0.0.1:8081/                   # 503 maintenance
//! ```
//!
//! With `--store memory://` (the default) nobody else can write, so the example pushes a
//! few configurations itself, a bad one among them, shows the service's answers, and
//! exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use clap::Parser;
use kvstore::{PutOptions, Store};
use kvstore_config::{ConfigOptions, LiveConfig, Status};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Serve HTTP with a configuration read live from a store key.
#[derive(Parser)]
struct Args {
    /// Store URL: etcd://host:port, redis://host:port or memory://.
    #[arg(long, env = "KVSTORE_URL", default_value = "memory://")]
    store: String,
    /// The configuration key (JSON).
    #[arg(long, default_value = "config/app")]
    key: String,
    /// Address to serve on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// What the service runs with. Missing fields take their defaults; unknown ones are
/// ignored, so a newer writer does not break an older service.
#[derive(Debug, serde::Deserialize)]
#[serde(default)]
struct ServiceConfig {
    greeting: String,
    requests_per_second: u32,
    maintenance: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            greeting: "hello".into(),
            requests_per_second: 10,
            maintenance: false,
        }
    }
}

/// The service's own rules, beyond what parses.
fn validate(config: &ServiceConfig) -> Result<(), String> {
    if config.greeting.is_empty() {
        return Err("greeting must not be empty".into());
    }
    if !(1..=10_000).contains(&config.requests_per_second) {
        return Err(format!(
            "requests_per_second must be 1..=10000, got {}",
            config.requests_per_second
        ));
    }
    Ok(())
}

/// The service: the live configuration and a one-second request window.
struct Service {
    config: LiveConfig<ServiceConfig>,
    window: Mutex<(Instant, u64)>,
    served: AtomicU64,
}

async fn hello(State(service): State<Arc<Service>>) -> (StatusCode, String) {
    let config = service.config.get();
    if config.maintenance {
        return (StatusCode::SERVICE_UNAVAILABLE, "maintenance\n".into());
    }
    let mut window = service.window.lock().await;
    if window.0.elapsed() >= Duration::from_secs(1) {
        *window = (Instant::now(), 0);
    }
    if window.1 >= u64::from(config.requests_per_second) {
        return (StatusCode::TOO_MANY_REQUESTS, "slow down\n".into());
    }
    window.1 += 1;
    service.served.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, format!("{}\n", config.greeting))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let options = ConfigOptions::json()
        .default_when_missing()
        .validate(validate);
    let config = LiveConfig::watch(store.clone(), &args.key, options).await?;
    println!(
        "configuration {} on {}: {:?} ({:?})",
        args.key,
        store.backend(),
        config.get(),
        config.status()
    );
    let service = Arc::new(Service {
        config,
        window: Mutex::new((Instant::now(), 0)),
        served: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(hello))
        .with_state(service.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{address}/");

    if store.backend() == "memory" {
        demo(&store, &args.key, &service, address).await?;
        server.abort();
        return Ok(());
    }
    // Report every status change until interrupted.
    let mut last = service.config.status();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let status = service.config.status();
        if status != last {
            println!("configuration now {:?}: {:?}", service.config.get(), status);
            last = status;
        }
    }
}

/// Push configurations (one of them bad) and show how the running service answers.
async fn demo(
    store: &Arc<dyn Store>,
    key: &str,
    service: &Service,
    address: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = kvstore_examples::client::HttpClient::default();
    let url = format!("http://{address}/");
    let pushes = [
        r#"{"greeting":"hi from v1","requests_per_second":3}"#,
        r#"{"greeting":"","requests_per_second":0}"#,
        r#"{"greeting":"hi from v2","requests_per_second":3,"maintenance":true}"#,
    ];
    for push in pushes {
        let written = store
            .put(key, Bytes::from(push), PutOptions::default())
            .await?;
        // Wait until the service has taken the push in, whichever way.
        loop {
            match service.config.status() {
                Status::Applied { revision } | Status::Rejected { revision, .. }
                    if revision == written.revision =>
                {
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        println!("pushed {push}");
        println!("  status: {:?}", service.config.status());
        // A fresh one-second window, so the rate limit shows from zero.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut answers = Vec::new();
        for _ in 0..5 {
            let reply = client.get(&url).await?;
            answers.push(format!("{} {}", reply.status, reply.body.trim()));
        }
        println!("  5 requests: {}", answers.join(" | "));
    }
    println!(
        "served {} requests; running on {:?}",
        service.served.load(Ordering::Relaxed),
        service.config.get()
    );
    Ok(())
}
