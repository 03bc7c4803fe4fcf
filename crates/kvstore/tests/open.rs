//! `kvstore::open` parses store URLs and names what is wrong with bad ones.

use kvstore::Error;

fn config_message(result: kvstore::Result<std::sync::Arc<dyn kvstore::Store>>) -> String {
    match result {
        Err(Error::Config { message }) => message,
        Err(other) => panic!("expected Config, got {other}"),
        Ok(_) => panic!("expected Config, got a store"),
    }
}

#[tokio::test]
async fn memory_url_opens_a_memory_store() {
    let store = kvstore::open("memory://").await.unwrap();
    assert_eq!(store.backend(), "memory");
    let namespaced = kvstore::open("memory://?namespace=app").await.unwrap();
    assert_eq!(namespaced.backend(), "memory");
}

#[tokio::test]
async fn malformed_url_is_a_config_error_naming_it() {
    let message = config_message(kvstore::open("localhost:2379").await);
    assert!(message.contains("localhost:2379"), "{message}");
}

#[tokio::test]
async fn unknown_scheme_is_a_config_error_naming_it() {
    let message = config_message(kvstore::open("consul://h:8500").await);
    assert!(message.contains("consul"), "{message}");
}

#[cfg(feature = "zookeeper")]
#[tokio::test]
async fn zookeeper_url_opens_a_zookeeper_store() {
    let server = kvstore_testkit::zookeeper::shared_zookeeper();
    let store = kvstore::open(&format!("zookeeper://{}/open-test", server.address()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "zookeeper");
    let message = config_message(kvstore::open("zookeeper://nohostport").await);
    assert!(message.contains("host:port"), "{message}");
}

#[cfg(not(feature = "zookeeper"))]
#[tokio::test]
async fn zookeeper_url_without_the_feature_names_the_feature() {
    let message = config_message(kvstore::open("zookeeper://127.0.0.1:2181").await);
    assert!(message.contains("`zookeeper` feature"), "{message}");
}

#[tokio::test]
async fn memory_url_with_unknown_option_is_a_config_error() {
    let message = config_message(kvstore::open("memory://?colour=blue").await);
    assert!(message.contains("colour"), "{message}");
    let message = config_message(kvstore::open("memory://somehost/path").await);
    assert!(message.contains("memory://"), "{message}");
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_url_opens_an_etcd_store() {
    let server = kvstore_testkit::server::shared_etcd();
    let store = kvstore::open(&format!("etcd://{}/open-test", server.address()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "etcd");
    let message = config_message(kvstore::open("etcd://nohostport").await);
    assert!(message.contains("host:port"), "{message}");
}

#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn etcd_url_without_the_feature_names_the_feature() {
    let message = config_message(kvstore::open("etcd://127.0.0.1:2379").await);
    assert!(message.contains("`etcd` feature"), "{message}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_url_opens_a_redis_store() {
    let server = kvstore_testkit::server::shared_redis();
    let store = kvstore::open(&format!("{}/0?namespace=open-test", server.url()))
        .await
        .unwrap();
    assert_eq!(store.backend(), "redis");
    let message = config_message(kvstore::open("redis://h:6379/notadb").await);
    assert!(message.contains("database number"), "{message}");
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_url_without_the_feature_names_the_feature() {
    let message = config_message(kvstore::open("redis://127.0.0.1:6379").await);
    assert!(message.contains("`redis` feature"), "{message}");
}

#[tokio::test]
async fn errors_quoting_the_url_do_not_show_its_password() {
    let mut urls = vec![
        "u:hunter2@localhost:2379",
        "u:hunter2@h://x",
        "consul://u:hunter2@h:8500",
        "memory://u:hunter2@somehost/path",
        "memory://u:hunter2@?colour=blue",
    ];
    if cfg!(feature = "etcd") {
        urls.extend([
            "etcd://u:hunter2@nohostport",
            "etcd://u:hunter2@h:1?colour=1",
        ]);
    }
    if cfg!(feature = "redis") {
        urls.extend(["redis://u:hunter2@h:6379/notadb", "redis://u:hunter2@h:x/0"]);
    }
    if cfg!(feature = "zookeeper") {
        urls.extend([
            "zookeeper://u:hunter2@nohostport",
            "zookeeper://u:hunter2@h:1?colour=1",
        ]);
    }
    for url in urls {
        let message = config_message(kvstore::open(url).await);
        assert!(!message.contains("hunter2"), "{url}: {message}");
        assert!(message.contains("***"), "{url}: {message}");
    }
}

#[tokio::test]
async fn a_registered_scheme_opens_through_open() {
    use std::sync::Arc;
    kvstore::register_scheme("test-scheme", |url, options| async move {
        assert_eq!(url, "test-scheme://somewhere");
        assert_eq!(options.namespace.as_deref(), Some("tenant"));
        Ok(Arc::new(kvstore::memory::MemoryStore::new()) as Arc<dyn kvstore::Store>)
    })
    .unwrap();
    let mut options = kvstore::OpenOptions::default();
    options.namespace = Some("tenant".into());
    let store = kvstore::open_with("test-scheme://somewhere", &options)
        .await
        .unwrap();
    assert_eq!(store.backend(), "memory");

    let again = kvstore::register_scheme("test-scheme", |_url, _options| async {
        Err(Error::Config {
            message: "never called".into(),
        })
    });
    assert!(
        matches!(again, Err(Error::Config { .. })),
        "a scheme has one backend"
    );
    let builtin = kvstore::register_scheme("etcd", |_url, _options| async {
        Err(Error::Config {
            message: "never called".into(),
        })
    });
    assert!(
        matches!(builtin, Err(Error::Config { .. })),
        "built-ins stay"
    );
    let invalid = kvstore::register_scheme("not a scheme", |_url, _options| async {
        Err(Error::Config {
            message: "never called".into(),
        })
    });
    assert!(matches!(invalid, Err(Error::Config { .. })));
    let message = config_message(kvstore::open("nope://x").await);
    assert!(
        message.contains("test-scheme://"),
        "lists registered schemes: {message}"
    );
}
