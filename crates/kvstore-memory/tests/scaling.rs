//! The costs that must not grow with the work: a write wakes only the watchers of the
//! keys it changes (observed through the waker each parked watch registered), reads on
//! several threads share the store's lock, and an idle watcher loses nothing, and is not
//! made to resync, while unrelated writes overflow the history ring. Time is tokio's
//! paused clock; nothing sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::{ArcWake, waker};
use futures::{FutureExt, StreamExt};
use kvstore_core::backend::{EventBatchStream, WatchTarget};
use kvstore_core::{
    Key, KvPair, LockOptions, Prefix, PutOptions, Store, Txn, TxnOp, WatchEvent, WatchFrom,
};
use kvstore_memory::{MemoryConfig, MemoryStore};

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Counts the wake-ups of the task that polled with it.
#[derive(Default)]
struct WakeCounter(AtomicUsize);

impl ArcWake for WakeCounter {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backend watch, parked on a counting waker after its snapshot.
struct Probe {
    name: String,
    target: WatchTarget,
    stream: EventBatchStream,
    wakes: Arc<WakeCounter>,
    /// Wake-ups already accounted for.
    seen: usize,
}

impl Probe {
    async fn key(store: &MemoryStore, key: &'static str) -> Probe {
        let key = Key::new(key).expect("a valid key");
        Probe::new(store, key.to_string(), WatchTarget::Key(key)).await
    }

    async fn prefix(store: &MemoryStore, prefix: &'static str) -> Probe {
        let prefix = Prefix::new(prefix).expect("a valid prefix");
        Probe::new(store, format!("{prefix}/"), WatchTarget::Prefix(prefix)).await
    }

    async fn new(store: &MemoryStore, name: String, target: WatchTarget) -> Probe {
        let mut stream =
            kvstore_core::backend::Backend::watch(store, target.clone(), WatchFrom::Snapshot)
                .await
                .expect("watch");
        let first = stream.next().await.expect("a snapshot").expect("no error");
        assert!(matches!(first.as_slice(), [WatchEvent::Snapshot(_)]));
        let mut probe = Probe {
            name,
            target,
            stream,
            wakes: Arc::default(),
            seen: 0,
        };
        assert!(
            probe.poll().is_pending(),
            "{}: nothing after the snapshot",
            probe.name
        );
        probe
    }

    fn poll(&mut self) -> Poll<Option<kvstore_core::Result<Vec<WatchEvent>>>> {
        let waker = waker(self.wakes.clone());
        self.stream
            .poll_next_unpin(&mut Context::from_waker(&waker))
    }

    /// Wake-ups since the last call.
    fn new_wakes(&mut self) -> usize {
        let total = self.wakes.0.load(Ordering::SeqCst);
        let new = total - self.seen;
        self.seen = total;
        new
    }

    /// After a write of `keys`: a watcher of any of them was woken and now yields exactly
    /// their events, one per key; any other was not woken and has nothing.
    fn expect(&mut self, keys: &[&str]) {
        let mine: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|key| self.target.matches(key))
            .collect();
        let wakes = self.new_wakes();
        let name = self.name.clone();
        if mine.is_empty() {
            assert_eq!(wakes, 0, "{name} woken by a write of {keys:?}");
            assert!(self.poll().is_pending(), "{name}: no event for {keys:?}");
            return;
        }
        assert!(wakes > 0, "{name} not woken by a write of {keys:?}");
        let Poll::Ready(Some(Ok(batch))) = self.poll() else {
            panic!("{name}: no batch after a write of {keys:?}");
        };
        let got: Vec<&str> = batch
            .iter()
            .map(|event| match event {
                WatchEvent::Put(pair) => pair.key.as_str(),
                WatchEvent::Delete { key, .. } => key.as_str(),
                other => panic!("{name}: unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got, mine, "{name}");
        assert!(self.poll().is_pending(), "{name}: one batch per write");
        self.new_wakes();
    }
}

/// A watcher parked on one prefix or key is not woken by any write elsewhere: other
/// keys sharing its first characters, its parent, other namespaces, the lock area, tree
/// deletes, transactions and lease expiry. Each write wakes exactly the watchers whose
/// target contains a changed key, and they read exactly those changes.
#[tokio::test(start_paused = true)]
async fn a_write_wakes_only_the_watchers_of_the_keys_it_changes() {
    let store = MemoryStore::new();
    let other_namespace = store.with_namespace("elsewhere");
    let mut probes = vec![
        Probe::prefix(&store, "").await,
        Probe::prefix(&store, "app").await,
        Probe::prefix(&store, "app/db").await,
        Probe::key(&store, "app/db/primary").await,
        Probe::key(&store, "app").await,
        Probe::prefix(&store, "apple").await,
        Probe::prefix(&store, "other").await,
    ];
    let mut check = |keys: &[&str]| probes.iter_mut().for_each(|probe| probe.expect(keys));
    let put = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .put(key, value(key), PutOptions::default())
                .await
                .expect("put")
        }
    };

    put("app/db/primary").await;
    check(&["app/db/primary"]);
    put("app/db/replica").await;
    check(&["app/db/replica"]);
    put("app/web").await;
    check(&["app/web"]);
    put("app").await;
    check(&["app"]);
    put("apple/pie").await;
    check(&["apple/pie"]);
    put("appx").await;
    check(&["appx"]);
    for i in 0..100 {
        store
            .put(&format!("other/{i}"), value("x"), PutOptions::default())
            .await
            .expect("put");
        check(&[format!("other/{i}").as_str()]);
    }

    // Other namespaces live in the same map, under other roots.
    other_namespace
        .put("app/db/primary", value("x"), PutOptions::default())
        .await
        .expect("put elsewhere");
    check(&[]);
    // A lock writes its waiter key in the lock area (which wakes no watcher here) and
    // its value at the lock's own key.
    let guard = store
        .new_lock("other/job", LockOptions::default())
        .expect("locker")
        .lock()
        .await
        .expect("lock");
    check(&["other/job"]);
    guard.unlock().await.expect("unlock");
    check(&["other/job"]);

    store.delete_tree("app/db").await.expect("delete_tree");
    check(&["app/db/primary", "app/db/replica"]);
    store
        .txn(Txn::new().and_then([
            TxnOp::put("other/t", value("t"), PutOptions::default()),
            TxnOp::put("app/db/primary", value("t"), PutOptions::default()),
        ]))
        .await
        .expect("txn");
    check(&["other/t", "app/db/primary"]);
    store.delete("appx").await.expect("delete");
    check(&["appx"]);
    // A failed compare-and-swap writes nothing and wakes nobody.
    let stale = KvPair {
        revision: 1,
        ..put("other/cas").await
    };
    check(&["other/cas"]);
    assert!(
        store
            .atomic_put("other/cas", value("y"), Some(&stale), PutOptions::default())
            .await
            .is_err()
    );
    check(&[]);

    // Expiry: whoever deletes the expired key (the reaper, or this read finding the
    // lease due), its watchers are woken for the delete, and nobody else.
    store
        .put(
            "app/session",
            value("s"),
            PutOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .expect("ttl put");
    check(&["app/session"]);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!store.exists("app/session").await.expect("exists"));
    check(&["app/session"]);

    // Closing wakes every watcher, and every stream ends.
    store.close().await.expect("close");
    for probe in &mut probes {
        assert!(probe.new_wakes() > 0, "{} not woken by close", probe.name);
        assert!(
            matches!(probe.poll(), Poll::Ready(None)),
            "{}: stream ended",
            probe.name
        );
    }
}

/// A watcher of a prefix sees a delete for each key an expiring lease held, at one
/// revision, whoever expired it (the reaper, or the read that found the lease due; the
/// unit tests in `src/watch.rs` pin the case of the watcher's own read).
#[tokio::test(start_paused = true)]
async fn an_expiry_reaches_the_watchers_of_its_keys_at_one_revision() {
    let store = MemoryStore::new();
    let mut events = store
        .watch_prefix_events("s", WatchFrom::Snapshot)
        .await
        .expect("watch");
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Snapshot(_)))
    ));
    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("lease");
    let mut revision = 0;
    for key in ["s/a", "s/b"] {
        let pair = store
            .put(key, value(key), PutOptions::with_lease(lease.id()))
            .await
            .expect("put");
        assert_eq!(
            events.next().await.expect("put").expect("ok"),
            WatchEvent::Put(pair.clone())
        );
        revision = pair.revision;
    }
    lease.abandon();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.list("s").await.expect("list"), Vec::new());
    for key in ["s/a", "s/b"] {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("the expiry reaches the watcher");
        assert_eq!(
            event.expect("event").expect("ok"),
            WatchEvent::Delete {
                key: key.to_owned(),
                revision: revision + 1
            }
        );
    }
}

/// While one thread holds the store's read lock, reads on other threads (get, list, a
/// watch's snapshot) still complete: reads share the lock. A failure shows as a reader
/// not answering within a minute, not as a hang.
#[test]
fn reads_proceed_while_another_thread_holds_a_read() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = MemoryStore::new();
    runtime.block_on(async {
        for key in ["r/a", "r/b", "r/c"] {
            store
                .put(key, value(key), PutOptions::default())
                .await
                .expect("put");
        }
    });
    let (done, finished) = std::sync::mpsc::channel();
    let answered = std::thread::scope(|scope| {
        let held = store.read_lock_for_tests();
        for _ in 0..2 {
            let (store, done) = (store.clone(), done.clone());
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let reads = runtime.block_on(async {
                    let one = store.get("r/b").await.expect("get");
                    let present = store.exists("r/c").await.expect("exists");
                    let all = store.list("r").await.expect("list");
                    let mut tree = store.watch_tree("r").await.expect("watch_tree");
                    let snapshot = tree.next().await.expect("snapshot").expect("ok");
                    (one.key == "r/b" && present, all.len(), snapshot.len())
                });
                // The receiver may have given up; that is the failure reported below.
                let _ = done.send(reads);
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let answered: Vec<_> = (0..2)
            .map(|_| {
                finished.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            })
            .collect();
        // Release before the scope joins the readers, whatever they did.
        drop(held);
        answered
    });
    for reads in answered {
        assert_eq!(
            reads.expect("a read completed while another read held the lock"),
            (true, 3, 3)
        );
    }
}

/// A watcher whose target nothing touched is not made to resync when unrelated writes
/// overflow the history ring: it lost nothing. Its next change arrives as an event.
#[tokio::test(start_paused = true)]
async fn an_idle_watcher_does_not_resync_when_unrelated_writes_overflow_history() {
    let store = MemoryStore::with_config({
        let mut config = MemoryConfig::default();
        config.history_capacity = 4;
        config
    });
    let mut events = store
        .watch_prefix_events("quiet", WatchFrom::Snapshot)
        .await
        .expect("watch");
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Snapshot(_)))
    ));
    for i in 0..50 {
        store
            .put(&format!("busy/{i}"), value("x"), PutOptions::default())
            .await
            .expect("put");
    }
    let pair = store
        .put("quiet/a", value("a"), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(
        events.next().await.expect("event").expect("ok"),
        WatchEvent::Put(pair)
    );
    assert!(events.next().now_or_never().is_none(), "nothing more");
}

/// A watcher whose own change left the history ring before it read gets a `Resync` with
/// the full state, then live events: nothing is lost silently.
#[tokio::test(start_paused = true)]
async fn a_watcher_whose_own_change_left_history_resyncs() {
    let store = MemoryStore::with_config({
        let mut config = MemoryConfig::default();
        config.history_capacity = 4;
        config
    });
    let mut events = store
        .watch_prefix_events("mine", WatchFrom::Snapshot)
        .await
        .expect("watch");
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Snapshot(_)))
    ));
    // The watcher does not read until all of these are written.
    let a = store
        .put("mine/a", value("a"), PutOptions::default())
        .await
        .expect("put");
    for i in 0..10 {
        store
            .put(&format!("busy/{i}"), value("x"), PutOptions::default())
            .await
            .expect("put");
    }
    let b = store
        .put("mine/b", value("b"), PutOptions::default())
        .await
        .expect("put");
    match events.next().await.expect("event").expect("ok") {
        WatchEvent::Resync(snapshot) => {
            assert_eq!(snapshot.pairs, vec![a, b.clone()]);
            assert_eq!(snapshot.revision, b.revision);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    let c = store
        .put("mine/c", value("c"), PutOptions::default())
        .await
        .expect("put");
    assert_eq!(
        events.next().await.expect("event").expect("ok"),
        WatchEvent::Put(c)
    );
}

/// One tree delete larger than the whole history ring still reaches the watchers of its
/// keys, as a `Resync`, since the ring could not hold the deletes.
#[tokio::test(start_paused = true)]
async fn a_write_larger_than_the_history_ring_reaches_its_watchers() {
    let store = MemoryStore::with_config({
        let mut config = MemoryConfig::default();
        config.history_capacity = 4;
        config
    });
    for i in 0..10 {
        store
            .put(&format!("big/{i}"), value("x"), PutOptions::default())
            .await
            .expect("put");
    }
    let mut events = store
        .watch_prefix_events("big", WatchFrom::Snapshot)
        .await
        .expect("watch");
    assert!(matches!(
        events.next().await,
        Some(Ok(WatchEvent::Snapshot(s))) if s.pairs.len() == 10
    ));
    store.delete_tree("big").await.expect("delete_tree");
    match events.next().await.expect("event").expect("ok") {
        WatchEvent::Resync(snapshot) => assert_eq!(snapshot.pairs, Vec::new()),
        other => panic!("expected a resync, got {other:?}"),
    }
}
