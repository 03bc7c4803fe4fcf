//! TLS (`rediss://`) to a real redis-server with certificates generated at test time.
#![cfg(feature = "tls")]

use bytes::Bytes;
use kvstore_core::{PutOptions, Store};
use kvstore_redis::{RedisConfig, RedisStore};
use kvstore_testkit::server::{RedisServer, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_connection_with_the_ca_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = ServerTls {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server-key.pem"),
        ca: dir.path().join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.ca, ca.pem()).unwrap();
    let server = RedisServer::start_tls(&files).unwrap();

    let mut config = RedisConfig::new(format!("rediss://127.0.0.1:{}", server.port()));
    config.ca_pem = Some(ca.pem().into_bytes());
    let store = RedisStore::connect(config).await.unwrap();
    store
        .put("secure", Bytes::from("yes"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("secure").await.unwrap().value, "yes");
}
