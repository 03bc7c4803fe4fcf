//! The first thing to run: the store contract on the in-memory backend, in one process.
//! Compare-and-swap, a TTL key expiring, a watch that sees every change and a lock with
//! its fencing token. Exits non-zero if anything did not happen as printed.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kvstore::{Error, LockOptions, PutOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = kvstore::open("memory://").await?;

    let mut config = store.watch("config/mode").await?;
    println!(
        "watch config/mode: starts at {:?}",
        config.next().await.transpose()?.flatten().map(|p| p.value)
    );

    let first = store
        .put("config/mode", Bytes::from("blue"), PutOptions::default())
        .await?;
    println!("put config/mode=blue at revision {}", first.revision);
    let second = store
        .atomic_put(
            "config/mode",
            Bytes::from("green"),
            Some(&first),
            PutOptions::default(),
        )
        .await?;
    println!(
        "compare-and-swap blue -> green at revision {}",
        second.revision
    );
    match store
        .atomic_put(
            "config/mode",
            Bytes::from("red"),
            Some(&first),
            PutOptions::default(),
        )
        .await
    {
        Err(Error::KeyModified {
            expected, actual, ..
        }) => {
            println!("stale compare-and-swap refused: expected {expected}, found {actual}")
        }
        other => return Err(format!("a stale compare-and-swap must fail, got {other:?}").into()),
    }
    for _ in 0..2 {
        let seen = config
            .next()
            .await
            .ok_or("watch ended")??
            .ok_or("value missing")?;
        println!(
            "watch saw config/mode={:?} at revision {}",
            seen.value, seen.revision
        );
    }

    store
        .put(
            "sessions/alice",
            Bytes::from("token"),
            PutOptions::with_ttl(Duration::from_secs(1)),
        )
        .await?;
    let mut session = store.watch("sessions/alice").await?;
    session.next().await;
    match tokio::time::timeout(Duration::from_secs(5), session.next()).await {
        Ok(Some(Ok(None))) => println!("sessions/alice expired after its 1 s TTL"),
        other => return Err(format!("the TTL key must expire, got {other:?}").into()),
    }

    let locker = store.new_lock(
        "jobs/nightly",
        LockOptions {
            value: Bytes::from("worker-1"),
            ttl: Duration::from_secs(5),
        },
    )?;
    let guard = locker.lock().await?;
    println!(
        "lock jobs/nightly held by {:?} with fencing token {}",
        store.get("jobs/nightly").await?.value,
        guard.fencing_token()
    );
    guard.unlock().await?;
    println!(
        "lock released: jobs/nightly exists = {}",
        store.exists("jobs/nightly").await?
    );
    Ok(())
}
