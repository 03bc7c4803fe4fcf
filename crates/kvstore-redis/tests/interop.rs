//! kvstore and redis-cli see the same data, and server errors arrive typed.

use std::process::Command;

use bytes::Bytes;
use kvstore_core::{Error, PutOptions, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::{RedisServer, find_binary, shared_redis};
use kvstore_testsuite::unique_namespace;

async fn store(namespace: &str) -> RedisStore {
    let mut config = RedisConfig::new(shared_redis().url());
    config.namespace = namespace.to_owned();
    RedisStore::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_reads_a_value_at_the_documented_place() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    let written = store
        .put("config/mode", Bytes::from("blue"), PutOptions::default())
        .await
        .unwrap();
    let key = format!("{{{namespace}}}:kv:k:config/mode");
    assert_eq!(store.redis_key("config/mode"), key);
    let cli = find_binary("redis-cli", "redis-tools").unwrap();
    let hget = |field: &str| {
        let output = Command::new(&cli)
            .args([
                "-p",
                &shared_redis().port().to_string(),
                "HGET",
                &key,
                field,
            ])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .unwrap()
            .trim_end()
            .to_owned()
    };
    assert_eq!(hget("value"), "blue");
    assert_eq!(hget("revision"), written.revision.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]).unwrap();
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}", server.port());
    let refused = RedisStore::connect(RedisConfig::new(url("wrong"))).await;
    assert!(matches!(refused, Err(Error::Auth { .. })), "{refused:?}");
    let store = RedisStore::connect(RedisConfig::new(url("s3cret")))
        .await
        .unwrap();
    store
        .put("k", Bytes::from("v"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_arrives_as_a_typed_backend_error_naming_the_operation() {
    let namespace = unique_namespace();
    let store = store(&namespace).await;
    // Someone writes a plain string where kvstore keeps a hash.
    let mut raw = redis::Client::open(shared_redis().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.redis_key("clobbered"))
        .arg("not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();
    // `put` runs a script; `get` plain commands. Both must name the operation.
    let put = store
        .put("clobbered", Bytes::from("v"), PutOptions::default())
        .await;
    let get = store.get("clobbered").await;
    for (operation, result) in [("put", put.map(|_| ())), ("get", get.map(|_| ()))] {
        match result {
            Err(Error::Backend {
                backend,
                operation: named,
                source,
            }) => {
                assert_eq!((backend, named), ("redis", operation));
                assert!(source.to_string().contains("WRONGTYPE"), "{source}");
            }
            other => panic!("{operation}: expected a typed backend error, got {other:?}"),
        }
    }
}
