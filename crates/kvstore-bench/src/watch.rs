//! Watch delivery latency (put → watcher receives it) and fan-out to 1,000 watchers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kvstore::{PutOptions, Store, WatchEvent, WatchFrom};

use crate::measure::{Latency, latency};

const SAMPLES: usize = 500;

/// Time from putting a key through our store until our prefix watch delivers it.
async fn ours_once(
    store: &Arc<dyn Store>,
    events: &mut futures::stream::BoxStream<'static, kvstore::Result<WatchEvent>>,
    i: usize,
) -> Duration {
    let started = Instant::now();
    store
        .put(
            &format!("w/{}", i % 10),
            Bytes::from_static(b"x"),
            PutOptions::default(),
        )
        .await
        .expect("put");
    loop {
        if let Some(Ok(WatchEvent::Put(_))) = events.next().await {
            break;
        }
    }
    started.elapsed()
}

async fn ours_watch(
    store: &Arc<dyn Store>,
) -> futures::stream::BoxStream<'static, kvstore::Result<WatchEvent>> {
    let mut events = store
        .watch_prefix_events("w", WatchFrom::Snapshot)
        .await
        .expect("watch");
    events.next().await;
    events
}

/// Put a key and time until our own prefix watch delivers it, `SAMPLES` times.
pub async fn ours(store: &Arc<dyn Store>) -> Latency {
    let mut events = ours_watch(store).await;
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        samples.push(ours_once(store, &mut events, i).await);
    }
    latency(samples)
}

/// Ours and etcd's own watch (with etcd's own put), sample by sample in turn, so both
/// see the same server conditions. Returns (ours, raw).
pub async fn ours_and_raw_etcd(
    store: &Arc<dyn Store>,
    client: &etcd_client::Client,
) -> (Latency, Latency) {
    let mut events = ours_watch(store).await;
    let mut client = client.clone();
    let mut raw = client
        .watch(
            "raw-watch/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("raw watch");
    let (mut ours_samples, mut raw_samples) =
        (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for i in 0..SAMPLES {
        ours_samples.push(ours_once(store, &mut events, i).await);
        let started = Instant::now();
        client
            .put(format!("raw-watch/{}", i % 10), "x", None)
            .await
            .expect("raw put");
        loop {
            let response = raw
                .message()
                .await
                .expect("raw watch message")
                .expect("open");
            if !response.events().is_empty() {
                break;
            }
        }
        raw_samples.push(started.elapsed());
    }
    (latency(ours_samples), latency(raw_samples))
}

/// Start `watchers` prefix watches, put one key, and time until the last one has it.
pub async fn fan_out(stores: &[Arc<dyn Store>], watchers: usize) -> Duration {
    let mut streams = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let store = &stores[i % stores.len()];
        let mut events = store
            .watch_prefix_events("fan", WatchFrom::Snapshot)
            .await
            .expect("watch");
        events.next().await;
        streams.push(events);
    }
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for mut events in streams {
        let done = done.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Ok(WatchEvent::Put(_)) = event {
                    let _ = done.send(Instant::now());
                    break;
                }
            }
        });
    }
    let started = Instant::now();
    stores[0]
        .put("fan/out", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .expect("put");
    let mut last = started;
    for _ in 0..watchers {
        last = last.max(finished.recv().await.expect("every watcher reports"));
    }
    last - started
}

/// The same with raw etcd watches: `watchers` watch streams on one prefix.
pub async fn fan_out_raw_etcd(client: &etcd_client::Client, watchers: usize) -> Duration {
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..watchers {
        let mut stream = client
            .clone()
            .watch(
                "raw-fan/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .expect("raw watch");
        let done = done.clone();
        tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                if !response.events().is_empty() {
                    let _ = done.send(Instant::now());
                    break;
                }
            }
        });
    }
    let started = Instant::now();
    client
        .clone()
        .put("raw-fan/out", "x", None)
        .await
        .expect("raw put");
    let mut last = started;
    for _ in 0..watchers {
        last = last.max(finished.recv().await.expect("every watcher reports"));
    }
    last - started
}
