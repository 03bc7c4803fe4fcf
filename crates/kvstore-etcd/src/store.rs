//! [`EtcdStore`]: the contract's primitives as etcd v3 requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse,
};
use kvstore_core::{
    Backend, Capabilities, Condition, Error, EventBatchStream, Key, KvPair, LeaseGrant, LeaseId,
    LeaseLoss, Lifecycle, Prefix, Result, WatchFrom, WatchTarget,
};
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::EtcdConfig;
use crate::error::{for_lease, from_etcd};

/// How often the HTTP/2 connection is pinged, so a dead or frozen server is noticed even
/// by an idle watch.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the connection counts as dead.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The lock area sits beside the namespace: `{namespace}` + this + `/`. A control
/// character cannot appear in a user namespace or key, so nothing a user writes can
/// collide with it, and the range `{namespace}/…` never includes it.
const LOCK_AREA_SUFFIX: &str = "\u{1}locks";

/// A store on etcd v3. Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) client: Client,
    /// `{namespace}/` (or the lock area's root): prepended to every key.
    pub(crate) root: Arc<str>,
    namespace: Arc<str>,
    config: Arc<EtcdConfig>,
    lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to etcd and check that it answers.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Unavailable`] when no
    /// endpoint answers within `connect_timeout`; [`Error::Auth`] for rejected credentials.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE_INTERVAL, HTTP2_KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(credentials) = &config.credentials {
            options = options.with_user(&credentials.username, &credentials.password);
        }
        #[cfg(feature = "tls")]
        let scheme = if let Some(tls) = &config.tls {
            options = options.with_tls(crate::tls::client_tls(tls));
            "https"
        } else {
            "http"
        };
        #[cfg(not(feature = "tls"))]
        let scheme = "http";
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let unreachable = || Error::Unavailable {
            backend: BACKEND,
            operation: "connect",
            message: format!(
                "no etcd endpoint of {:?} answered within {:?}",
                config.endpoints, config.connect_timeout
            ),
            source: None,
        };
        let connecting = async {
            let mut client = Client::connect(&endpoints, Some(options))
                .await
                .map_err(|e| from_etcd("connect", e))?;
            // The channel connects lazily: one request proves the server is there.
            client.status().await.map_err(|e| from_etcd("connect", e))?;
            Ok::<_, Error>(client)
        };
        let client = tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| unreachable())??;
        let namespace: Arc<str> = config.namespace.trim_matches('/').into();
        Ok(EtcdStore {
            client,
            root: format!("{namespace}/").into(),
            namespace,
            config: Arc::new(config),
            lifecycle: Arc::new(Lifecycle::new()),
        })
    }

    /// The underlying etcd client, for what kvstore does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The etcd key a kvstore key is stored at: `{namespace}/{key}`.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }

    /// Run one request made by `request` on a client: `Closed` after shutdown, `Timeout`
    /// after the request timeout, client errors mapped onto the contract.
    ///
    /// The client balances requests over every endpoint and keeps a dead member in its
    /// rotation, so a request can land on a member that refuses connections. Such a
    /// request never reached any server, so it is sent again (to the next member) up to
    /// once per endpoint; that is what keeps a cluster serving when a member dies.
    pub(crate) async fn call<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.lifecycle.ensure_open(BACKEND)?;
        let attempts = async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match request(self.client.clone()).await {
                    Err(error) if attempt <= self.config.endpoints.len() && never_sent(&error) => {
                        tracing::debug!(%error, operation, "etcd member unreachable; trying the next one");
                    }
                    outcome => return outcome,
                }
            }
        };
        match tokio::time::timeout(self.config.request_timeout, attempts).await {
            Ok(result) => result.map_err(|e| from_etcd(operation, e)),
            Err(_) => Err(Error::Timeout {
                operation,
                after: self.config.request_timeout,
            }),
        }
    }

    /// A kvstore pair from an etcd key-value under this handle's root.
    pub(crate) fn pair(&self, kv: &KeyValue) -> Option<KvPair> {
        let key = std::str::from_utf8(kv.key())
            .ok()?
            .strip_prefix(&*self.root)?;
        Some(KvPair {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            revision: revision(kv.mod_revision()),
            create_revision: revision(kv.create_revision()),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }

    /// Read a key or everything below a prefix; returns the pairs and the revision read.
    pub(crate) async fn read(&self, target: &WatchTarget) -> Result<(Vec<KvPair>, u64)> {
        let (key, options) = match target {
            WatchTarget::Key(key) => (self.etcd_key(key.as_str()), None),
            WatchTarget::Prefix(prefix) => (
                self.etcd_key(&prefix.key_start()),
                Some(GetOptions::new().with_prefix()),
            ),
        };
        let response = self
            .call("get", |mut client| {
                let (key, options) = (key.clone(), options.clone());
                async move { client.get(key, options).await }
            })
            .await?;
        let read_at = response.header().map_or(0, |h| revision(h.revision()));
        Ok((
            response
                .kvs()
                .iter()
                .filter_map(|kv| self.pair(kv))
                .collect(),
            read_at,
        ))
    }

    /// The state of `key` after a failed compare: `KeyNotFound` or `KeyModified`.
    fn compare_failure(&self, key: &Key, expected: u64, current: Option<&KeyValue>) -> Error {
        match current {
            None => Error::KeyNotFound {
                key: key.to_string(),
            },
            Some(kv) => Error::KeyModified {
                key: key.to_string(),
                expected,
                actual: revision(kv.mod_revision()),
            },
        }
    }
}

/// Whether `error` says the connection could not be made at all, so the request was
/// never sent and sending it again cannot apply it twice.
fn never_sent(error: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        source = current.source();
    }
    false
}

/// etcd revisions are `i64` and never negative.
pub(crate) fn revision(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| revision(h.revision()))
}

/// The first key-value of a `get` inside a transaction's else branch.
fn first_get(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// The previous key-value of a `put` or `delete` inside a transaction.
fn previous_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Put(put) => put.prev_key().cloned(),
        TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
        _ => None,
    })
}

#[async_trait]
impl Backend for EtcdStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_value_size: self.config.max_value_size,
            leases: true,
            ttl_granularity: Duration::from_secs(1),
            watch: true,
            locks: true,
            tokio_clock: false,
        }
    }

    fn lock_area(&self) -> Self {
        EtcdStore {
            root: format!("{}{LOCK_AREA_SUFFIX}/", self.namespace).into(),
            ..self.clone()
        }
    }

    async fn fetch(&self, key: &Key) -> Result<Option<KvPair>> {
        let (pairs, _) = self.read(&WatchTarget::Key(key.clone())).await?;
        Ok(pairs.into_iter().next())
    }

    async fn fetch_prefix(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Ok(self.read(&WatchTarget::Prefix(prefix.clone())).await?.0)
    }

    async fn write(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        let etcd_key = self.etcd_key(key.as_str());
        let mut options = etcd_client::PutOptions::new().with_prev_key();
        if let Some(lease) = lease {
            options = options.with_lease(lease.0);
        }
        let name_lease = |e| match lease {
            Some(lease) => for_lease(e, lease),
            None => e,
        };
        // A conditional write is one Txn: compare, put on success, read the key on
        // failure (to tell KeyNotFound from KeyModified).
        let compare = match condition {
            // A plain Put: etcd serves it faster than a one-operation Txn, and its
            // previous key-value still tells the create revision.
            Condition::Always => {
                let response = self
                    .call("put", |mut client| {
                        let (key, value) = (etcd_key.clone(), value.to_vec());
                        let options = options.clone();
                        async move { client.put(key, value, Some(options)).await }
                    })
                    .await
                    .map_err(name_lease)?;
                let written_at = header_revision(response.header());
                return Ok(KvPair {
                    key: key.to_string(),
                    value,
                    revision: written_at,
                    create_revision: response
                        .prev_key()
                        .map_or(written_at, |kv| revision(kv.create_revision())),
                    lease,
                });
            }
            Condition::Absent => Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
            Condition::Revision(expected) => Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                i64::try_from(expected).unwrap_or(i64::MAX),
            ),
        };
        let put = TxnOp::put(etcd_key.clone(), value.to_vec(), Some(options));
        let txn = Txn::new()
            .when([compare])
            .and_then([put])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self
            .call("put", |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
            .map_err(name_lease)?;
        let responses = response.op_responses();
        if !response.succeeded() {
            let current = first_get(&responses);
            return Err(match condition {
                Condition::Revision(expected) => {
                    self.compare_failure(key, expected, current.as_ref())
                }
                _ => Error::KeyExists {
                    key: key.to_string(),
                },
            });
        }
        let written_at = header_revision(response.header());
        let create_revision =
            previous_kv(&responses).map_or(written_at, |kv| revision(kv.create_revision()));
        Ok(KvPair {
            key: key.to_string(),
            value,
            revision: written_at,
            create_revision,
            lease,
        })
    }

    async fn remove(&self, key: &Key, condition: Condition) -> Result<Option<u64>> {
        let etcd_key = self.etcd_key(key.as_str());
        match condition {
            Condition::Always => {
                let response = self
                    .call("delete", |mut client| {
                        let key = etcd_key.clone();
                        async move { client.delete(key, None).await }
                    })
                    .await?;
                Ok((response.deleted() > 0).then(|| header_revision(response.header())))
            }
            Condition::Revision(expected) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        etcd_key.clone(),
                        CompareOp::Equal,
                        i64::try_from(expected).unwrap_or(i64::MAX),
                    )])
                    .and_then([TxnOp::delete(etcd_key.clone(), None)])
                    .or_else([TxnOp::get(etcd_key, None)]);
                let response = self
                    .call("atomic_delete", |mut client| {
                        let txn = txn.clone();
                        async move { client.txn(txn).await }
                    })
                    .await?;
                if !response.succeeded() {
                    let current = first_get(&response.op_responses());
                    return Err(self.compare_failure(key, expected, current.as_ref()));
                }
                Ok(Some(header_revision(response.header())))
            }
            Condition::Absent => Err(Error::invalid_argument(
                "delete",
                "a delete cannot require the key to be absent",
            )),
        }
    }

    async fn remove_prefix(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = self.etcd_key(&prefix.key_start());
        let response = self
            .call("delete_tree", |mut client| {
                let start = start.clone();
                async move {
                    client
                        .delete(start, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok((response.deleted() > 0).then(|| header_revision(response.header())))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant> {
        // etcd TTLs are whole seconds: round up, so a lease never ends early.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let response = self
            .call("grant_lease", |mut client| async move {
                client.lease_grant(seconds, None).await
            })
            .await?;
        self.lifecycle.track_lease(LeaseId(response.id()));
        Ok(LeaseGrant {
            id: LeaseId(response.id()),
            ttl: Duration::from_secs(revision(response.ttl())),
        })
    }

    fn lease_detach(&self, lease: LeaseId) {
        self.lifecycle.forget_lease(lease);
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let refresh = |mut client: Client| async move {
            // Opening the stream sends one keep-alive and checks that the lease exists;
            // the second one reads back the TTL the server now grants.
            let (mut keeper, mut responses) = client.lease_keep_alive(lease.0).await?;
            keeper.keep_alive().await?;
            responses.message().await
        };
        match self.call("keep_alive_lease", refresh).await {
            Ok(Some(response)) if response.ttl() > 0 => {
                Ok(Duration::from_secs(revision(response.ttl())))
            }
            Ok(_) => Err(Error::LeaseLost {
                lease,
                reason: LeaseLoss::Expired,
            }),
            Err(error) => Err(for_lease(error, lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let outcome = self
            .call("revoke_lease", |mut client| async move {
                client.lease_revoke(lease.0).await
            })
            .await;
        self.lifecycle.forget_lease(lease);
        match outcome {
            Ok(_) | Err(Error::LeaseLost { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn subscribe(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        self.lifecycle.ensure_open(BACKEND)?;
        Ok(crate::watch::subscribe(self.clone(), target, from))
    }

    async fn shutdown(&self) -> Result<()> {
        self.lifecycle
            .close_revoking(|lease| self.lease_revoke(lease))
            .await;
        Ok(())
    }
}
