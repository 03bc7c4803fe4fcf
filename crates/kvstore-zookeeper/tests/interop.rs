//! kvstore and `zkCli.sh` (Debian's ZooKeeper client) see the same data, and refused
//! credentials arrive typed.

use std::sync::Arc;

use bytes::Bytes;
use kvstore_core::{Error, PutOptions, Store, WatchEvent, WatchFrom};
use kvstore_testkit::zookeeper::{ZooKeeperServer, shared_zookeeper};
use kvstore_testsuite::unique_namespace;
use kvstore_zookeeper::{ZooKeeperConfig, ZooKeeperStore};

async fn store(namespace: &str) -> ZooKeeperStore {
    let mut config = ZooKeeperConfig::new(shared_zookeeper().address());
    config.namespace = namespace.to_owned();
    ZooKeeperStore::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_reads_a_value_at_the_documented_place() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    store
        .put("config/mode", Bytes::from("blue"), PutOptions::default())
        .await
        .unwrap();
    let path = format!("/{namespace}/kv/config%2Fmode");
    assert_eq!(store.znode_path("config/mode"), path);
    let read = shared_zookeeper().zk_cli(&["get", &path]).unwrap();
    assert_eq!(read.trim(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_with_zkcli_is_a_key_without_lease() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    let path = store.znode_path("from/cli");
    shared_zookeeper()
        .zk_cli(&["create", &path, "hello"])
        .unwrap();
    let pair = store.get("from/cli").await.unwrap();
    assert_eq!((&pair.value[..], pair.lease), (&b"hello"[..], None));
    let listed: Vec<String> = store
        .list("from")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(listed, ["from/cli"]);
    // Overwritten by us, then read back by the CLI.
    store
        .atomic_put(
            "from/cli",
            Bytes::from("again"),
            Some(&pair),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let read = shared_zookeeper().zk_cli(&["get", &path]).unwrap();
    assert_eq!(read.trim(), "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_credentials_are_refused_with_an_auth_error() {
    let server = ZooKeeperServer::start().unwrap();
    let namespace = unique_namespace();
    let url = |password: &str| {
        format!(
            "zookeeper://app:{password}@{}/{namespace}",
            server.address()
        )
    };
    let owner = ZooKeeperStore::connect(ZooKeeperConfig::from_url(&url("s3cret")).unwrap())
        .await
        .unwrap();
    owner
        .put("k", Bytes::from("v"), PutOptions::default())
        .await
        .unwrap();
    let intruder = ZooKeeperStore::connect(ZooKeeperConfig::from_url(&url("wrong")).unwrap()).await;
    match intruder {
        Err(error @ Error::Auth { .. }) => {
            assert!(!format!("{error} {error:?}").contains("wrong"), "{error:?}");
        }
        Ok(store) => {
            let read = Arc::new(store).get("k").await;
            assert!(matches!(read, Err(Error::Auth { .. })), "{read:?}");
        }
        Err(other) => panic!("expected Auth, got {other:?}"),
    }
}

/// A change-log entry that does not decode (written by another tool, or corrupted) is
/// history lost: a watcher behind it gets a `Resync` with the current state, never a
/// silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_change_log_entry_makes_watchers_resync() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    store
        .put("a", Bytes::from("1"), PutOptions::default())
        .await
        .unwrap();
    let mut events = store
        .watch_prefix_events("", WatchFrom::Snapshot)
        .await
        .unwrap();
    let first = kvstore_testsuite::next_item(&mut events, "the snapshot").await;
    assert!(matches!(first, WatchEvent::Snapshot(_)), "{first:?}");
    shared_zookeeper()
        .zk_cli(&["create", "-s", &format!("/{namespace}/log/e-"), "garbage"])
        .unwrap();
    store
        .put("b", Bytes::from("2"), PutOptions::default())
        .await
        .unwrap();
    let next = kvstore_testsuite::next_item(&mut events, "what follows the bad entry").await;
    match next {
        WatchEvent::Resync(snapshot) => {
            let keys: Vec<&str> = snapshot.pairs.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["a", "b"]);
        }
        other => panic!("expected a Resync after the undecodable entry, got {other:?}"),
    }
}
