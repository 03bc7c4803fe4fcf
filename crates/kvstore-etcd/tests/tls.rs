//! TLS to a real etcd with a CA and server certificate generated at test time.
#![cfg(feature = "tls")]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use kvstore_core::{Error, PutOptions, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore, TlsConfig};
use kvstore_testkit::server::{EtcdServer, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A fresh CA, as PEM, and an issuer for signing with it.
fn certificate_authority() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Write a server certificate for 127.0.0.1 signed by `ca` into `dir`.
fn server_files(dir: &Path, ca: &CertifiedIssuer<'static, KeyPair>) -> ServerTls {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let files = ServerTls {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.ca, ca.pem()).unwrap();
    files
}

fn tls_config(server: &EtcdServer, ca_pem: String) -> EtcdConfig {
    let mut config = EtcdConfig::new([server.address()]);
    config.connect_timeout = Duration::from_secs(2);
    config.tls = Some(TlsConfig::with_ca(ca_pem.into_bytes()));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_with_the_ca_works_and_without_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certificate_authority();
    let server = EtcdServer::start_with_tls(Some(server_files(dir.path(), &ca))).unwrap();

    let store = EtcdStore::connect(tls_config(&server, ca.pem()))
        .await
        .unwrap();
    store
        .put("secure", Bytes::from("yes"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("secure").await.unwrap().value, "yes");

    let stranger = certificate_authority();
    let refused = EtcdStore::connect(tls_config(&server, stranger.pem())).await;
    match refused {
        Err(Error::Unavailable { message, .. }) => {
            assert!(!message.is_empty());
            eprintln!("refused as expected: {message}");
        }
        other => panic!("a client without the server's CA must be refused, got {other:?}"),
    }
}
