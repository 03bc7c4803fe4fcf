//! Dynamic configuration: watch one key and apply every change live.
//!
//! ```text
//! cargo run --features etcd,redis --example config_watch -- --store etcd://127.0.0.1:2379 --key config/app
//! etcdctl put kvstore/config/app '{"log_level":"debug","workers":8}'
//! ```
//!
//! With `--store memory://` (the default) nobody else can write, so the example writes a
//! few configurations itself and exits after applying them.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use kvstore::PutOptions;

/// Watch a configuration key and apply changes as they arrive.
#[derive(Parser)]
struct Args {
    /// Store URL: etcd://host:port, redis://host:port or memory://.
    #[arg(long, env = "KVSTORE_URL", default_value = "memory://")]
    store: String,
    /// The configuration key.
    #[arg(long, default_value = "config/app")]
    key: String,
}

/// The configuration this "service" runs with.
#[derive(Debug, Default)]
struct Config {
    text: Option<String>,
    revision: u64,
}

fn apply(config: &mut Config, value: Option<kvstore::KvPair>) {
    match value {
        Some(pair) => {
            config.text = Some(String::from_utf8_lossy(&pair.value).into_owned());
            config.revision = pair.revision;
            println!(
                "applied configuration at revision {}: {}",
                pair.revision,
                config.text.as_deref().unwrap_or("")
            );
        }
        None => {
            config.text = None;
            println!("no configuration: running on defaults");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = kvstore::open(&args.store).await?;
    let mut changes = store.watch(&args.key).await?;
    let mut config = Config::default();

    let demo = store.backend() == "memory";
    let writer = demo.then(|| {
        let store = store.clone();
        let key = args.key.clone();
        tokio::spawn(async move {
            for text in [
                r#"{"log_level":"info","workers":4}"#,
                r#"{"log_level":"debug","workers":8}"#,
            ] {
                tokio::time::sleep(Duration::from_millis(300)).await;
                store
                    .put(&key, Bytes::from(text), PutOptions::default())
                    .await?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.delete(&key).await
        })
    });
    println!("watching {} on {}", args.key, store.backend());
    let mut applied = 0;
    while let Some(change) = changes.next().await {
        apply(&mut config, change?);
        applied += 1;
        if demo && applied == 4 {
            break;
        }
    }
    if let Some(writer) = writer {
        writer.await??;
    }
    println!("final configuration: {config:?}");
    Ok(())
}
