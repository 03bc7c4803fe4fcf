//! The backend of docs/writing-a-backend.md, compiled and checked: a map in memory with
//! plain keys, values and revisions only. Leases, watches, locks and transactions keep
//! the `Backend` trait's `Unsupported` defaults, its capabilities say so, and the whole
//! conformance suite runs on it (the behaviours it does not claim are checked to fail
//! with `Unsupported`). It joins `kvstore::open` through `register_scheme`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use kvstore::{Capabilities, Error, Key, KvPair, LeaseId, Prefix, Result, Store};
use kvstore_core::backend::{Backend, Condition, Lifecycle};
use kvstore_testsuite::Harness;

const BACKEND: &str = "toy";

/// The server: one map of physical keys (`namespace/key`), and the store revision.
#[derive(Default)]
struct Server {
    revision: u64,
    data: BTreeMap<String, KvPair>,
}

/// A handle on a [`Server`] with keys under `namespace`.
#[derive(Clone)]
struct ToyStore {
    server: Arc<Mutex<Server>>,
    namespace: String,
    lifecycle: Arc<Lifecycle>,
}

impl ToyStore {
    fn physical(&self, key: &str) -> String {
        format!("{}/{key}", self.namespace)
    }

    /// Lock the server, or fail with `Closed` after `close`.
    fn server(&self) -> Result<std::sync::MutexGuard<'_, Server>> {
        self.lifecycle.ensure_open(BACKEND)?;
        Ok(self
            .server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn relative(&self, mut pair: KvPair) -> KvPair {
        pair.key = pair.key[self.namespace.len() + 1..].to_owned();
        pair
    }
}

#[async_trait]
impl Backend for ToyStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Plain keys and values only: everything optional stays off.
        Capabilities::new(1024 * 1024)
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        let server = self.server()?;
        let pair = server.data.get(&self.physical(key.as_str())).cloned();
        Ok(pair.map(|pair| self.relative(pair)))
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        let server = self.server()?;
        let start = self.physical(&prefix.key_start());
        Ok(server
            .data
            .range(start.clone()..)
            .take_while(|(key, _)| key.starts_with(&start))
            .map(|(_, pair)| self.relative(pair.clone()))
            .collect())
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        if lease.is_some() {
            // Core never sends one: capabilities say no leases.
            return Err(Error::Unsupported {
                operation: "put",
                backend: BACKEND,
            });
        }
        let physical = self.physical(key.as_str());
        let mut server = self.server()?;
        let current = server
            .data
            .get(&physical)
            .map(|pair| (pair.revision, pair.create_revision));
        match (condition, current) {
            (Condition::Always, _) | (Condition::Absent, None) => {}
            (Condition::Absent, Some(_)) => {
                return Err(Error::KeyExists {
                    key: key.to_string(),
                });
            }
            (Condition::Revision(_), None) => {
                return Err(Error::KeyNotFound {
                    key: key.to_string(),
                });
            }
            (Condition::Revision(expected), Some((actual, _))) if actual != expected => {
                return Err(Error::KeyModified {
                    key: key.to_string(),
                    expected,
                    actual,
                });
            }
            (Condition::Revision(_), Some(_)) => {}
        }
        server.revision += 1;
        let revision = server.revision;
        let create_revision = current.map_or(revision, |(_, created)| created);
        let pair = KvPair {
            key: physical.clone(),
            value,
            revision,
            create_revision,
            lease: None,
        };
        server.data.insert(physical, pair.clone());
        Ok(self.relative(pair))
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let physical = self.physical(key.as_str());
        let mut server = self.server()?;
        match (revision, server.data.get(&physical)) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(Error::KeyNotFound {
                    key: key.to_string(),
                });
            }
            (Some(expected), Some(pair)) if pair.revision != expected => {
                return Err(Error::KeyModified {
                    key: key.to_string(),
                    expected,
                    actual: pair.revision,
                });
            }
            _ => {}
        }
        server.data.remove(&physical);
        server.revision += 1;
        Ok(Some(server.revision))
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = self.physical(&prefix.key_start());
        let mut server = self.server()?;
        let before = server.data.len();
        server.data.retain(|key, _| !key.starts_with(&start));
        if server.data.len() == before {
            return Ok(None);
        }
        server.revision += 1;
        Ok(Some(server.revision))
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle.close();
        Ok(())
    }
}

/// Handles on one toy server.
#[derive(Default)]
struct ToyHarness {
    server: Arc<Mutex<Server>>,
}

#[async_trait]
impl Harness for ToyHarness {
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(ToyStore {
            server: self.server.clone(),
            namespace: namespace.to_owned(),
            lifecycle: Arc::new(Lifecycle::new()),
        }))
    }

    async fn compact(&self, _namespace: &str) -> Result<()> {
        Ok(())
    }
}

kvstore_testsuite::conformance_tests! {
    #[tokio::test]
    harness = ToyHarness::default()
}

#[tokio::test]
async fn the_toy_backend_joins_open_through_its_scheme() {
    let server = Arc::new(Mutex::new(Server::default()));
    kvstore::register_scheme("toy", move |url, _options| {
        let server = server.clone();
        async move {
            let namespace = url.trim_start_matches("toy://").to_owned();
            Ok(Arc::new(ToyStore {
                server,
                namespace,
                lifecycle: Arc::new(Lifecycle::new()),
            }) as Arc<dyn Store>)
        }
    })
    .expect("toy:// is free");
    let store = kvstore::open("toy://app").await.expect("opens");
    store
        .put("k", Bytes::from("v"), kvstore::PutOptions::default())
        .await
        .expect("put");
    let again = kvstore::open("toy://app").await.expect("opens");
    assert_eq!(again.get("k").await.expect("get").value, "v");
    assert_eq!(again.backend(), "toy");
    assert!(matches!(
        again.grant_lease(std::time::Duration::from_secs(5)).await,
        Err(Error::Unsupported { .. })
    ));
}
