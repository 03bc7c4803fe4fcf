//! [`EtcdStore`]: the contract's primitives as etcd v3 requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, KvClient,
    LeaseClient, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use kvstore_core::backend::{
    Backend, Condition, EventBatchStream, LeaseGrant, Lifecycle, WatchTarget,
};
use kvstore_core::{
    Capabilities, Error, Key, KvPair, LeaseId, LeaseLoss, Prefix, Result, WatchFrom,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::EtcdConfig;
use crate::error::{for_lease, from_etcd, from_shared, is_expired_token};
use crate::keepalive::{Answer, KeepAlives, Link};

/// How often a connection with open streams (watches, keep-alives) is pinged, so a dead
/// or frozen server is noticed by an idle watch. etcd refuses pings more often than its
/// `--grpc-keepalive-min-time` (5 s by default) on a connection it sent nothing on, and
/// closes the connection after a few ("too_many_pings"), so this stays above it.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);
/// How long a ping may go unanswered before the connection counts as dead: a silent
/// server is noticed within interval + timeout (10 s).
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(4);

/// The largest response the client decodes: etcd's own Go client allows `math.MaxInt32`
/// bytes, and etcd sends up to that. tonic's default of 4 MiB would refuse a range page
/// or a watch catch-up (up to 1,000 revisions in one response) of large values.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// Keys per page of a range read. Pages keep each response (and etcd's memory to build
/// it) bounded on prefixes of any size; all pages are read at the first page's revision.
pub(crate) const RANGE_PAGE_KEYS: i64 = 1000;

/// First and longest pause between attempts of a read-only request that failed on a
/// leader change or an unreachable member (the request timeout bounds the whole).
const RETRY_MIN_DELAY: Duration = Duration::from_millis(25);
/// Pause before connecting again after a member refused the connection: another member
/// is likely up, and a refused connection costs nothing.
const UNSENT_RETRY_DELAY: Duration = Duration::from_millis(10);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// The lock area sits beside the namespace: `{namespace}` + this + `/`. A control
/// character cannot appear in a user namespace or key, so nothing a user writes can
/// collide with it, and the range `{namespace}/…` never includes it.
const LOCK_AREA_SUFFIX: &str = "\u{1}locks";

/// Whether a request may be sent again after a failure that may have reached a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resend {
    /// A read (get, range, watch start): sending it again cannot change anything, so it
    /// is retried with backoff through leader changes and lost members until the request
    /// timeout, as etcd's Go client does.
    Read,
    /// A write: sent again only when it provably never reached a member (the connection
    /// could not be made) or was refused for an expired auth token.
    Write,
}

/// The etcd service clients one store uses, sharing one balanced channel and one auth
/// token. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) kv: KvClient,
    pub(crate) watch: WatchClient,
    pub(crate) lease: LeaseClient,
}

/// A store on etcd v3. Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    clients: Clients,
    /// `{namespace}/` (or the lock area's root): prepended to every key.
    pub(crate) root: Arc<str>,
    namespace: Arc<str>,
    config: Arc<EtcdConfig>,
    lifecycle: Arc<Lifecycle>,
    /// The one keep-alive stream every lease of this store is refreshed on.
    keep_alives: Arc<KeepAlives>,
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
    /// Every endpoint is tried: a member that is down at connect time is skipped, and
    /// connecting fails only when none answers within `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Unavailable`] when no
    /// endpoint answers within `connect_timeout`; [`Error::Auth`] for rejected credentials.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE_INTERVAL, HTTP2_KEEP_ALIVE_TIMEOUT)
            // etcd counts pings on a connection without streams as abuse.
            .with_keep_alive_while_idle(false)
            // A member cut off from the quorum ends its watches ("no leader") instead of
            // keeping them open with nothing to send, and refuses requests at once, so
            // both move to a member that can serve them.
            .with_require_leader(true)
            // etcd's auth tokens expire (`--auth-token-ttl`); a request refused for an
            // expired token re-authenticates and is sent again (docs/CONTRACT.md §8).
            .with_auto_token_refresh(true);
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
        let deadline = Instant::now() + config.connect_timeout;
        let mut delays = kvstore_core::backend::backoff(RETRY_MIN_DELAY, RETRY_MAX_DELAY);
        let mut last_error = None;
        let client = loop {
            let attempt = async {
                let mut client = Client::connect(&endpoints, Some(options.clone())).await?;
                // The channel connects lazily: one request proves a member is there.
                client.status().await?;
                Ok::<_, etcd_client::Error>(client)
            };
            let (error, unsent) = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(client)) => break client,
                Ok(Err(error)) => {
                    let unsent = never_sent(&error);
                    (from_etcd("connect", error), unsent)
                }
                Err(_) => return Err(last_error.unwrap_or_else(|| unreachable(&config))),
            };
            // The balanced channel may have picked a member that is down (the connection
            // was refused: nothing was sent): try again at once, which reaches another
            // one; anything else with backoff; both until the connect timeout.
            let delay = if unsent {
                UNSENT_RETRY_DELAY
            } else {
                delays.next().unwrap_or(RETRY_MAX_DELAY)
            };
            if !matches!(error, Error::Unavailable { .. }) || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "etcd connect attempt failed; trying again");
            last_error = Some(error);
            tokio::time::sleep(delay).await;
        };
        let clients = Clients {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: client.lease_client(),
        };
        let namespace: Arc<str> = config.namespace.trim_matches('/').into();
        Ok(EtcdStore {
            client,
            clients,
            root: format!("{namespace}/").into(),
            namespace,
            config: Arc::new(config),
            lifecycle: Arc::new(Lifecycle::new()),
            keep_alives: Arc::default(),
        })
    }

    /// The etcd key a kvstore key is stored at: `{namespace}/{key}`.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }

    /// Authenticate again now (after etcd refused a watch for an expired token).
    pub(crate) async fn refresh_token(&self) -> Result<()> {
        let refresh = self.client.refresh_token();
        match tokio::time::timeout(self.config.request_timeout, refresh).await {
            Ok(outcome) => outcome.map_err(|e| from_etcd("authenticate", e)),
            Err(_) => Err(Error::Timeout {
                operation: "authenticate",
                after: self.config.request_timeout,
            }),
        }
    }

    /// Run one request made by `request`: `Closed` after shutdown, client errors mapped
    /// onto the contract, and the whole bounded by the request timeout (the last failure
    /// is returned when it runs out, or `Timeout` when the request never answered).
    ///
    /// Sending again, within that time:
    /// - a request that never reached a member (the client balances over every endpoint
    ///   and keeps a dead member in rotation, so a request can land on one that refuses
    ///   connections) goes to the next member at once, up to once per endpoint, then
    ///   with backoff;
    /// - a request refused for an expired auth token re-authenticates and is sent again
    ///   (once per call: a token refused again means the credentials are wrong);
    /// - a [`Resend::Read`] that failed as unavailable (leader changed, no leader, member
    ///   lost mid-request) is sent again with backoff, as etcd's Go client retries reads.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        resend: Resend,
        request: F,
    ) -> Result<T>
    where
        F: Fn(Clients) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = self.deadline();
        self.call_until(operation, resend, deadline, request).await
    }

    /// How long one request (or one operation made of several) may take.
    pub(crate) fn request_timeout(&self) -> std::time::Duration {
        self.config.request_timeout
    }

    /// When a call (or several calls that make one operation) started now must end.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    /// [`EtcdStore::call`] with a deadline shared by several requests, so an operation
    /// made of several (the pages of a range, a watch's snapshot and start) fails within
    /// one request timeout.
    pub(crate) async fn call_until<T, F, Fut>(
        &self,
        operation: &'static str,
        resend: Resend,
        deadline: Instant,
        request: F,
    ) -> Result<T>
    where
        F: Fn(Clients) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.lifecycle.ensure_open(BACKEND)?;
        let timed_out = || Error::Timeout {
            operation,
            after: self.config.request_timeout,
        };
        let mut delays = kvstore_core::backend::backoff(RETRY_MIN_DELAY, RETRY_MAX_DELAY);
        let mut immediate_resends = self.config.endpoints.len();
        let mut refreshed = false;
        let mut last_error: Option<Error> = None;
        loop {
            let outcome = tokio::time::timeout_at(deadline, request(self.clients.clone())).await;
            let error = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                // A write cut off in flight may have been applied: say it timed out, not
                // what an earlier attempt that never reached a member said.
                Err(_) if resend == Resend::Write => return Err(timed_out()),
                Err(_) => return Err(last_error.unwrap_or_else(timed_out)),
            };
            let unsent = never_sent(&error);
            let error = from_etcd(operation, error);
            if unsent && immediate_resends > 0 {
                immediate_resends -= 1;
                tracing::debug!(%error, operation, "etcd member unreachable; trying the next one");
                continue;
            }
            if is_expired_token(&error) && !refreshed {
                refreshed = true;
                tracing::debug!(operation, "etcd auth token expired; authenticating again");
                match tokio::time::timeout_at(deadline, self.client.refresh_token()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(refresh)) => return Err(from_etcd("authenticate", refresh)),
                    Err(_) => return Err(timed_out()),
                }
            }
            let resendable = unsent || (resend == Resend::Read && is_unavailable(&error));
            let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
            if !resendable || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, operation, "etcd request failed; sending it again");
            last_error = Some(error);
            tokio::time::sleep(delay).await;
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
    ///
    /// A prefix is read in pages of [`RANGE_PAGE_KEYS`] keys, every page at the revision
    /// of the first, so the result is one consistent snapshot of any size
    /// (docs/CONTRACT.md §3 "Any size"). If etcd compacts that revision between pages,
    /// the read starts over at a newer one.
    pub(crate) async fn read(&self, target: &WatchTarget) -> Result<(Vec<KvPair>, u64)> {
        self.read_until(target, None, self.deadline()).await
    }

    /// [`EtcdStore::read`] at revision `at` (the current one if `None`), every page
    /// within `deadline`. If etcd has compacted `at`, the state at the current revision
    /// is read instead: the revision returned is then newer than `at`.
    pub(crate) async fn read_until(
        &self,
        target: &WatchTarget,
        at: Option<u64>,
        deadline: Instant,
    ) -> Result<(Vec<KvPair>, u64)> {
        let mut requested = at.map(|at| i64::try_from(at).unwrap_or(i64::MAX));
        let prefix = match target {
            WatchTarget::Key(key) => {
                let key = self.etcd_key(key.as_str());
                loop {
                    let at = requested;
                    let response = self
                        .call_until("get", Resend::Read, deadline, |mut clients| {
                            let key = key.clone();
                            let options = at.map(|at| GetOptions::new().with_revision(at));
                            async move { clients.kv.get(key, options).await }
                        })
                        .await;
                    let response = match response {
                        Err(error) if at.is_some() && is_compacted(&error) => {
                            requested = None;
                            continue;
                        }
                        other => other?,
                    };
                    let pairs = response.kvs().iter().filter_map(|kv| self.pair(kv));
                    let read_at = at.map_or_else(|| header_revision(response.header()), revision);
                    return Ok((pairs.collect(), read_at));
                }
            }
            WatchTarget::Prefix(prefix) => prefix,
        };
        let first_key = self.etcd_key(&prefix.key_start()).into_bytes();
        let end = prefix_end(&first_key);
        /// Starting over after a compaction between pages more often than this means
        /// compaction outruns the read: report it.
        const MAX_RESTARTS: usize = 3;
        let mut restarts = 0;
        'snapshot: loop {
            let mut pairs = Vec::new();
            // A restart after a compaction reads at the current revision.
            let mut read_at: Option<i64> = requested.take();
            let mut start = first_key.clone();
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(RANGE_PAGE_KEYS);
                if let Some(at) = read_at {
                    options = options.with_revision(at);
                }
                let page = self
                    .call_until("list", Resend::Read, deadline, |mut clients| {
                        let (start, options) = (start.clone(), options.clone());
                        async move { clients.kv.get(start, Some(options)).await }
                    })
                    .await;
                let page = match page {
                    Err(error) if is_compacted(&error) && restarts < MAX_RESTARTS => {
                        restarts += 1;
                        continue 'snapshot;
                    }
                    other => other?,
                };
                let at = *read_at.get_or_insert(page.header().map_or(0, |h| h.revision()));
                pairs.extend(page.kvs().iter().filter_map(|kv| self.pair(kv)));
                match page.kvs().last() {
                    Some(last) if page.more() => {
                        // The next page starts just after the last key of this one.
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok((pairs, revision(at))),
                }
            }
        }
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

fn unreachable(config: &EtcdConfig) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        operation: "connect",
        message: format!(
            "no etcd endpoint of {:?} answered within {:?}",
            config.endpoints, config.connect_timeout
        ),
        source: None,
    }
}

fn is_unavailable(error: &Error) -> bool {
    matches!(error, Error::Unavailable { .. })
}

/// Whether etcd refused a read at a revision it has compacted.
fn is_compacted(error: &Error) -> bool {
    match error {
        Error::Backend { source, .. } => source.to_string().contains("compacted"),
        _ => false,
    }
}

/// The end of etcd's range of every key starting with `start` (etcd's `GetPrefix`):
/// `start` with its last byte below 0xff incremented, the rest dropped.
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff: the range runs to the end of the keyspace.
    vec![0]
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
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::new(self.config.max_value_size);
        capabilities.leases = true;
        capabilities.watch = true;
        capabilities.locks = true;
        capabilities.transactions = true;
        capabilities
    }

    fn lock_area(&self) -> Option<Self> {
        Some(EtcdStore {
            root: format!("{}{LOCK_AREA_SUFFIX}/", self.namespace).into(),
            ..self.clone()
        })
    }

    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        let (pairs, _) = self.read(&WatchTarget::Key(key.clone())).await?;
        Ok(pairs.into_iter().next())
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Ok(self.read(&WatchTarget::Prefix(prefix.clone())).await?.0)
    }

    async fn put(
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
                    .call("put", Resend::Write, |mut clients| {
                        let (key, value) = (etcd_key.clone(), value.to_vec());
                        let options = options.clone();
                        async move { clients.kv.put(key, value, Some(options)).await }
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
            .call("put", Resend::Write, |mut clients| {
                let txn = txn.clone();
                async move { clients.kv.txn(txn).await }
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

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        let etcd_key = self.etcd_key(key.as_str());
        match condition {
            Condition::Always => {
                let response = self
                    .call("delete", Resend::Write, |mut clients| {
                        let key = etcd_key.clone();
                        async move { clients.kv.delete(key, None).await }
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
                    .call("atomic_delete", Resend::Write, |mut clients| {
                        let txn = txn.clone();
                        async move { clients.kv.txn(txn).await }
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

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = self.etcd_key(&prefix.key_start());
        let response = self
            .call("delete_tree", Resend::Write, |mut clients| {
                let start = start.clone();
                async move {
                    clients
                        .kv
                        .delete(start, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok((response.deleted() > 0).then(|| header_revision(response.header())))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        // etcd TTLs are whole seconds: round up, so a lease never ends early.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        let response = self
            .call("grant_lease", Resend::Write, |mut clients| async move {
                clients.lease.grant(seconds, None).await
            })
            .await?;
        self.lifecycle.track_lease(LeaseId(response.id()));
        Ok(LeaseGrant {
            id: LeaseId(response.id()),
            ttl: Duration::from_secs(revision(response.ttl())),
        })
    }

    fn detach_lease(&self, lease: LeaseId) {
        self.lifecycle.forget_lease(lease);
    }

    /// One keep-alive, sent on the store's one `LeaseKeepAlive` stream that every lease
    /// of the store shares (opened by the first keep-alive, opened again after it breaks).
    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        // The policy of every write (`call` with `Resend::Write`): bounded by the request
        // timeout, sent again at once (then with backoff) only when it never reached a
        // member. The stream's task authenticates again by itself (keepalive.rs).
        const OPERATION: &str = "keep_alive_lease";
        self.lifecycle.ensure_open(BACKEND)?;
        let deadline = self.deadline();
        let timed_out = || Error::Timeout {
            operation: OPERATION,
            after: self.config.request_timeout,
        };
        let mut delays = kvstore_core::backend::backoff(RETRY_MIN_DELAY, RETRY_MAX_DELAY);
        let mut immediate_resends = self.config.endpoints.len();
        loop {
            let renewal = self.keep_alives.renew(lease.0, || Link {
                client: self.client.clone(),
                lease: self.clients.lease.clone(),
                request_timeout: self.config.request_timeout,
                shutdown: self.shutdown_token().clone(),
            });
            let Ok(answer) = tokio::time::timeout_at(deadline, renewal).await else {
                return Err(timed_out());
            };
            let (error, unsent) = match answer {
                Answer::Ttl(ttl) if ttl > 0 => return Ok(Duration::from_secs(revision(ttl))),
                Answer::Ttl(_) => {
                    return Err(Error::LeaseLost {
                        lease,
                        reason: LeaseLoss::Expired,
                    });
                }
                Answer::Failed(error) => (
                    for_lease(from_shared(OPERATION, &error), lease),
                    never_sent(&error),
                ),
                Answer::Ended => (
                    Error::Unavailable {
                        backend: BACKEND,
                        operation: OPERATION,
                        message: "etcd ended the keep-alive stream".into(),
                        source: None,
                    },
                    false,
                ),
                Answer::TimedOut => return Err(timed_out()),
                Answer::Gone => {
                    self.lifecycle.ensure_open(BACKEND)?;
                    (
                        Error::Unavailable {
                            backend: BACKEND,
                            operation: OPERATION,
                            message: "the keep-alive task ended".into(),
                            source: None,
                        },
                        false,
                    )
                }
            };
            if unsent && immediate_resends > 0 {
                immediate_resends -= 1;
                tracing::debug!(%error, "etcd member unreachable; trying the next one");
                continue;
            }
            let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
            if !unsent || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, "etcd keep-alive failed; sending it again");
            tokio::time::sleep(delay).await;
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let outcome = self
            .call("revoke_lease", Resend::Write, |mut clients| async move {
                clients.lease.revoke(lease.0).await
            })
            .await;
        self.lifecycle.forget_lease(lease);
        match outcome {
            Ok(_) | Err(Error::LeaseLost { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// One etcd `Txn`: the comparisons and both branches map one to one (a put asks for
    /// the previous key-value, to tell its create revision).
    async fn txn(&self, txn: &kvstore_core::Txn) -> Result<kvstore_core::TxnResponse> {
        use kvstore_core::{CompareTarget, TxnOp as Op, TxnResult};
        let compares: Vec<Compare> = txn
            .compares()
            .iter()
            .map(|compare| {
                let key = self.etcd_key(&compare.key);
                let op = match compare.op {
                    kvstore_core::CompareOp::Equal => CompareOp::Equal,
                    kvstore_core::CompareOp::NotEqual => CompareOp::NotEqual,
                    kvstore_core::CompareOp::Greater => CompareOp::Greater,
                    kvstore_core::CompareOp::Less => CompareOp::Less,
                };
                let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                match &compare.target {
                    CompareTarget::Value(value) => Compare::value(key, op, value.to_vec()),
                    CompareTarget::Revision(revision) => {
                        Compare::mod_revision(key, op, number(*revision))
                    }
                    CompareTarget::CreateRevision(revision) => {
                        Compare::create_revision(key, op, number(*revision))
                    }
                    CompareTarget::Lease(lease) => {
                        Compare::lease(key, op, lease.map_or(0, |l| l.0))
                    }
                }
            })
            .collect();
        let ops = |branch: &[Op]| -> Vec<TxnOp> {
            branch
                .iter()
                .map(|op| match op {
                    Op::Put {
                        key,
                        value,
                        options,
                    } => {
                        let mut put = etcd_client::PutOptions::new().with_prev_key();
                        if let Some(lease) = options.lease {
                            put = put.with_lease(lease.0);
                        }
                        TxnOp::put(self.etcd_key(key), value.to_vec(), Some(put))
                    }
                    Op::Delete { key } => TxnOp::delete(self.etcd_key(key), None),
                    Op::Get { key } => TxnOp::get(self.etcd_key(key), None),
                })
                .collect()
        };
        let request = Txn::new()
            .when(compares)
            .and_then(ops(txn.success()))
            .or_else(ops(txn.failure()));
        let lease_of_branch = txn
            .success()
            .iter()
            .chain(txn.failure())
            .find_map(|op| match op {
                Op::Put { options, .. } => options.lease,
                _ => None,
            });
        let response = self
            .call("txn", Resend::Write, |mut clients| {
                let request = request.clone();
                async move { clients.kv.txn(request).await }
            })
            .await
            .map_err(|e| match lease_of_branch {
                Some(lease) => for_lease(e, lease),
                None => e,
            })?;
        let succeeded = response.succeeded();
        let revision = header_revision(response.header());
        let branch = txn.branch(succeeded);
        let mut results = Vec::with_capacity(branch.len());
        for (op, answer) in branch.iter().zip(response.op_responses()) {
            results.push(match (op, answer) {
                (
                    Op::Put {
                        key,
                        value,
                        options,
                    },
                    TxnOpResponse::Put(put),
                ) => TxnResult::Put(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    revision,
                    create_revision: put
                        .prev_key()
                        .map_or(revision, |kv| crate::store::revision(kv.create_revision())),
                    lease: options.lease,
                }),
                (Op::Delete { .. }, TxnOpResponse::Delete(delete)) => TxnResult::Delete {
                    deleted: delete.deleted() > 0,
                },
                (Op::Get { .. }, TxnOpResponse::Get(get)) => {
                    TxnResult::Get(get.kvs().first().and_then(|kv| self.pair(kv)))
                }
                _ => {
                    return Err(Error::Backend {
                        backend: BACKEND,
                        operation: "txn",
                        source: "etcd answered a transaction with responses of other kinds \
                                 than its operations"
                            .into(),
                    });
                }
            });
        }
        Ok(kvstore_core::TxnResponse {
            succeeded,
            revision,
            results,
        })
    }

    async fn watch(&self, target: WatchTarget, from: WatchFrom) -> Result<EventBatchStream> {
        self.lifecycle.ensure_open(BACKEND)?;
        crate::watch::subscribe(self.clone(), target, from).await
    }

    async fn close(&self) -> Result<()> {
        self.lifecycle
            .close_revoking(|lease| Backend::revoke_lease(self, lease))
            .await;
        Ok(())
    }

    fn closing(&self) -> Option<CancellationToken> {
        Some(self.lifecycle.closing().clone())
    }
}
