//! kvstore and the real etcd tools see the same data, and bad input gets typed errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvstore_core::{Error, PutOptions, Store};
use kvstore_etcd::{Credentials, EtcdConfig, EtcdStore};
use kvstore_testkit::server::{EtcdServer, shared_etcd};
use kvstore_testsuite::{next_item, unique_namespace};

async fn store(namespace: &str) -> Arc<dyn Store> {
    let mut config = EtcdConfig::new([shared_etcd().address()]);
    config.namespace = namespace.to_owned();
    Arc::new(EtcdStore::connect(config).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_written_by_kvstore_reads_back_with_etcdctl() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    store
        .put("config/mode", Bytes::from("blue"), PutOptions::default())
        .await
        .unwrap();
    let key = format!("{namespace}/config/mode");
    let printed = shared_etcd()
        .etcdctl(&["get", &key, "--print-value-only"])
        .unwrap();
    assert_eq!(printed.trim_end(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_is_seen_by_a_kvstore_watch() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    let mut states = store.watch("feature/flag").await.unwrap();
    assert_eq!(next_item(&mut states, "current value").await, None);
    let key = format!("{namespace}/feature/flag");
    shared_etcd().etcdctl(&["put", &key, "on"]).unwrap();
    let seen = next_item(&mut states, "etcdctl put")
        .await
        .expect("a value");
    assert_eq!(seen.value, "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_at_the_documented_limit_is_accepted_by_etcd() {
    let store = store(&unique_namespace()).await;
    let limit = store.capabilities().max_value_size;
    let largest = Bytes::from(vec![b'x'; limit]);
    let written = store
        .put("largest", largest, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("largest").await.unwrap().value.len(), limit);
    assert!(written.revision > 0);
    let over = store
        .put(
            "over",
            Bytes::from(vec![b'x'; limit + 1]),
            PutOptions::default(),
        )
        .await;
    assert!(matches!(over, Err(Error::ValueTooLarge { .. })), "{over:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_rounded_up_to_whole_seconds() {
    let store = store(&unique_namespace()).await;
    let lease = store
        .grant_lease(Duration::from_millis(2500))
        .await
        .unwrap();
    assert_eq!(lease.ttl(), Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    let server = EtcdServer::start().unwrap();
    server.etcdctl(&["user", "add", "root:rootpw"]).unwrap();
    server.etcdctl(&["auth", "enable"]).unwrap();

    let mut config = EtcdConfig::new([server.address()]);
    config.credentials = Some(Credentials {
        username: "root".into(),
        password: "wrong".into(),
    });
    let refused = EtcdStore::connect(config.clone()).await;
    assert!(matches!(refused, Err(Error::Auth { .. })), "{refused:?}");

    config.credentials = Some(Credentials {
        username: "root".into(),
        password: "rootpw".into(),
    });
    let store = EtcdStore::connect(config).await.unwrap();
    store
        .put("k", Bytes::from("v"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().value, "v");
}
