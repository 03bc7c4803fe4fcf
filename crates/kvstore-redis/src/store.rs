//! [`RedisStore`]: the contract's primitives as Lua scripts on Redis.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvstore_core::backend::{
    Backend, Condition, EventBatchStream, LeaseGrant, Lifecycle, WatchTarget,
};
use kvstore_core::redact_url;
use kvstore_core::{
    Capabilities, Error, Key, KvPair, LeaseId, LeaseLoss, Prefix, Result, WatchFrom,
};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, Script, Value};
use tokio_util::sync::CancellationToken;

use crate::BACKEND;
use crate::config::RedisConfig;
use crate::connection::{Connection, Endpoint, Target, tcp_settings};
use crate::error::{from_redis, unexpected};
use crate::feed::{Delivery, Feed, Source};
use crate::scripts::{Reply, Scripts};
use crate::topology::Topology;
use crate::watch::WATCH_BLOCK;

/// How often the background reaper expires leases, so watchers see TTL expiry within
/// this long of the deadline even when nobody reads.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// The area of user keys; lock bookkeeping lives in [`LOCK_AREA`].
const USER_AREA: &str = "kv";
const LOCK_AREA: &str = "lock";

/// A store on Redis. Cloning gives another handle on the same connection.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) connection: Arc<Connection>,
    pub(crate) config: Arc<RedisConfig>,
    pub(crate) scripts: Arc<Scripts>,
    /// `{namespace}:rev`, the first key of every script.
    pub(crate) revision_key: Arc<str>,
    pub(crate) area: &'static str,
    /// The one reader of the change stream that all watches of this store share.
    feed: Arc<Feed>,
    lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.config.namespace)
            .field("area", &self.area)
            .finish_non_exhaustive()
    }
}

/// A fresh random epoch candidate: only the first one of a store's data is kept.
fn epoch_candidate() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl RedisStore {
    /// Connect to Redis, check that it answers, and start the lease reaper.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration or URL; [`Error::Unavailable`] when
    /// the server does not answer within `connect_timeout`; [`Error::Auth`] for rejected
    /// credentials.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore> {
        config.validate()?;
        let endpoint = Arc::new(open_endpoint(&config)?);
        let connection = Arc::new(Connection::new(endpoint.clone()));
        let timeout = config.connect_timeout;
        let connecting = async {
            let mut first = connection
                .link()
                .await
                .map_err(|e| from_redis("connect", e, timeout))?;
            redis::cmd("PING")
                .query_async::<String>(&mut first)
                .await
                .map_err(|e| from_redis("connect", e, timeout))?;
            if !endpoint.is_cluster() {
                check_eviction_policy(&mut first, &config).await?;
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Error::Unavailable {
                backend: BACKEND,
                operation: "connect",
                message: format!("redis did not answer within {timeout:?}"),
                source: None,
            })??;
        let store = RedisStore {
            endpoint,
            connection,
            revision_key: format!("{{{}}}:rev", config.namespace).into(),
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
            area: USER_AREA,
            feed: Arc::new(Feed::default()),
            lifecycle: Arc::new(Lifecycle::new()),
        };
        // Expire due leases even when nobody reads, so watchers see expiry in time.
        let (connection, scripts, revision_key, config) = (
            store.connection.clone(),
            store.scripts.clone(),
            store.revision_key.clone(),
            store.config.clone(),
        );
        store.lifecycle.every(REAP_INTERVAL, move || {
            let (connection, scripts, revision_key, config) = (
                connection.clone(),
                scripts.clone(),
                revision_key.clone(),
                config.clone(),
            );
            async move {
                let reaped = run_script(
                    &connection,
                    &invocation(&scripts.reap, &revision_key, &config, &[]),
                    &config,
                    ("reap", Retry::Idempotent),
                )
                .await;
                if let Err(error) = reaped {
                    tracing::debug!(%error, "lease reaper failed; retrying");
                }
            }
        });
        Ok(store)
    }

    /// The Redis key (a hash) holding `key`: `{namespace}:kv:k:{key}`. Read it with
    /// `redis-cli HGET '{namespace}:kv:k:KEY' value`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{{{}}}:{}:k:{key}", self.config.namespace, self.area)
    }

    /// The sorted set of lease deadlines: `{namespace}:leases`.
    fn leases_key(&self) -> String {
        format!("{{{}}}:leases", self.config.namespace)
    }

    /// The change stream of this store: `{namespace}:log`.
    pub fn stream_key(&self) -> String {
        format!("{{{}}}:log", self.config.namespace)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        self.lifecycle.shutdown()
    }

    /// A receiver of the store's shared stream reader (started after stream id `from`
    /// if none runs).
    pub(crate) fn subscribe_feed(&self, from: &str) -> tokio::sync::broadcast::Receiver<Delivery> {
        self.feed.subscribe(from, || Source {
            endpoint: self.endpoint.clone(),
            stream_key: self.stream_key(),
            epoch_key: format!("{{{}}}:epoch", self.config.namespace),
            shutdown: self.lifecycle.shutdown().clone(),
        })
    }

    /// Run `script` with the common arguments then `args`.
    pub(crate) async fn run(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value> {
        self.lifecycle.ensure_open(BACKEND)?;
        run_script(
            &self.connection,
            &invocation(script, &self.revision_key, &self.config, args),
            &self.config,
            (operation, Retry::Idempotent),
        )
        .await
    }

    /// Run a script that writes: as [`RedisStore::run`], then `WAIT` for replicas when
    /// the configuration asks for durability.
    pub(crate) async fn run_write(
        &self,
        (operation, retry): (&'static str, Retry),
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value> {
        self.lifecycle.ensure_open(BACKEND)?;
        run_write_script(
            &self.connection,
            &invocation(script, &self.revision_key, &self.config, args),
            &self.config,
            (operation, retry),
        )
        .await
    }

    /// A pair from a script's `{key, value, revision, create_revision, lease}`.
    pub(crate) fn pair(value: &Value) -> Option<KvPair> {
        let items = value.items()?;
        let lease = items.get(4)?.int().filter(|l| *l != 0).map(LeaseId);
        Some(KvPair {
            key: items.first()?.text()?,
            value: Bytes::from(items.get(1)?.bytes()?),
            revision: u64::try_from(items.get(2)?.int()?).ok()?,
            create_revision: u64::try_from(items.get(3)?.int()?).ok()?,
            lease,
        })
    }
}

/// The deployment `config.url` names, with every connection's TCP settings and timeouts.
fn open_endpoint(config: &RedisConfig) -> Result<Endpoint> {
    let bad = |e: redis::RedisError| Error::Config {
        message: format!("invalid redis URL {:?}: {e}", redact_url(&config.url)),
    };
    let tcp = tcp_settings(config.response_timeout);
    let target = match Topology::parse(&config.url)? {
        Topology::Single => Target::Single(open_client(config, tcp).map_err(bad)?),
        Topology::Sentinel {
            sentinels,
            master,
            db,
            credentials,
        } => {
            let addresses = sentinels
                .into_iter()
                .map(|(host, port)| redis::ConnectionAddr::Tcp(host, port));
            let mut builder = redis::sentinel::SentinelClientBuilder::new(
                addresses,
                master,
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(bad)?
            .set_client_to_redis_db(db)
            .set_client_to_redis_tcp_settings(tcp);
            if let Some(username) = credentials.username {
                builder = builder.set_client_to_redis_username(username);
            }
            if let Some(password) = credentials.password {
                builder = builder.set_client_to_redis_password(password);
            }
            Target::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(bad)?))
        }
        Topology::Cluster { nodes, credentials } => {
            let client = |response_timeout: Duration| {
                let seeds = nodes
                    .iter()
                    .map(|(host, port)| format!("redis://{host}:{port}"));
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(response_timeout)
                    .tcp_settings(tcp.clone());
                if let Some(username) = &credentials.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &credentials.password {
                    builder = builder.password(password);
                }
                builder.build().map_err(bad)
            };
            Target::Cluster {
                requests: Box::new(client(config.response_timeout)?),
                watches: Box::new(client(WATCH_BLOCK + config.response_timeout)?),
            }
        }
    };
    Ok(Endpoint {
        target,
        connect_timeout: config.connect_timeout,
        request_timeout: config.response_timeout,
        watch_timeout: WATCH_BLOCK + config.response_timeout,
    })
}

fn open_client(config: &RedisConfig, tcp: TcpSettings) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    if config.url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; this keeps an existing one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = config
        .url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(tcp);
    #[cfg(feature = "tls")]
    if let Some(ca) = &config.ca_pem {
        return redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        );
    }
    redis::Client::open(info)
}

/// Whether a script may run twice without harm, and so be sent again after the
/// connection dropped under it (see [`Connection::run_idempotent`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, lease keep-alives and revokes.
    Idempotent,
    /// Writes: sent once; a dropped connection is the caller's `Unavailable`.
    Once,
}

async fn run_script(
    connection: &Connection,
    invocation: &redis::ScriptInvocation<'_>,
    config: &RedisConfig,
    (operation, retry): (&'static str, Retry),
) -> Result<Value> {
    let run = |mut connection: crate::connection::Link| async move {
        invocation.invoke_async(&mut connection).await
    };
    let outcome = match retry {
        Retry::Idempotent => connection.run_idempotent(run).await,
        Retry::Once => connection.run(run).await,
    };
    outcome.map_err(|e| from_redis(operation, e, config.response_timeout))
}

/// A call of a script with the prelude: the revision counter as its one key, then the
/// common arguments (epoch candidate, stream bound), then `args`.
fn invocation<'a>(
    script: &'a Script,
    revision_key: &str,
    config: &RedisConfig,
    args: &[&[u8]],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(revision_key);
    // The prelude reads both bounds of the change log from one argument.
    let bounds = format!("{}:{}", config.stream_max_len, config.stream_max_bytes);
    invocation.arg(epoch_candidate()).arg(bounds);
    for arg in args {
        invocation.arg(*arg);
    }
    invocation
}

/// Run a writing script and, when [`RedisConfig::wait_replicas`] asks for it, `WAIT` for
/// its replicas in the same pipeline (so on the same connection, right after it): a
/// write fewer replicas acknowledged is `Unavailable`.
async fn run_write_script(
    connection: &Connection,
    invocation: &redis::ScriptInvocation<'_>,
    config: &RedisConfig,
    (operation, retry): (&'static str, Retry),
) -> Result<Value> {
    if config.wait_replicas == 0 {
        return run_script(connection, invocation, config, (operation, retry)).await;
    }
    let failed = |e| from_redis(operation, e, config.response_timeout);
    let wait_ms = u64::try_from(config.wait_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut loaded = false;
    let (reply, acknowledged): (Value, u32) = loop {
        let pipeline = &redis::pipe()
            .invoke_script(invocation)
            .cmd("WAIT")
            .arg(config.wait_replicas)
            .arg(wait_ms)
            .clone();
        let outcome = connection
            .run(|mut connection| async move { pipeline.query_async(&mut connection).await })
            .await;
        match outcome {
            // A restarted server has forgotten the script: load it, once, and run again.
            Err(e)
                if !loaded
                    && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                connection
                    .run(|mut connection| async move {
                        invocation.load_async(&mut connection).await
                    })
                    .await
                    .map_err(failed)?;
                loaded = true;
            }
            other => break other.map_err(failed)?,
        }
    };
    if acknowledged < config.wait_replicas {
        return Err(Error::Unavailable {
            backend: BACKEND,
            operation,
            message: format!(
                "the write reached {acknowledged} of {} replicas within {:?}; it is applied \
                 on the primary but a failover may lose it",
                config.wait_replicas, config.wait_timeout
            ),
            source: None,
        });
    }
    Ok(reply)
}

/// Warn about (or, with [`RedisConfig::require_noeviction`], refuse) a server whose
/// `maxmemory-policy` can evict keys. Servers that forbid `CONFIG` (managed services)
/// are trusted.
async fn check_eviction_policy(
    connection: &mut crate::connection::Link,
    config: &RedisConfig,
) -> Result<()> {
    let policy: Option<(String, String)> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(connection)
        .await
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "cannot read maxmemory-policy; assuming noeviction");
            None
        });
    let Some((_, policy)) = policy else {
        return Ok(());
    };
    if policy == "noeviction" {
        return Ok(());
    }
    let message = format!(
        "redis maxmemory-policy is {policy:?}: under memory pressure it can evict kvstore's \
         keys (values, leases, the revision counter); set it to noeviction"
    );
    if config.require_noeviction {
        return Err(Error::Config { message });
    }
    tracing::warn!("{message}");
    Ok(())
}

/// Draws of a taken lease id in a row before giving up: with 63-bit ids, a second one
/// means something is wrong.
const MAX_DRAWS: usize = 3;

/// A fresh lease id: a random 63-bit number, never 0. Random rather than a counter, so
/// an id can never alias another client's lease, even after Redis lost its data.
fn random_lease_id() -> LeaseId {
    LeaseId(
        i64::try_from(rand::random::<u64>() >> 1)
            .unwrap_or(1)
            .max(1),
    )
}

/// A lease TTL in whole milliseconds (Redis's granularity), at least 1.
fn lease_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What the put script did.
enum Written {
    Pair(KvPair),
    /// The new lease's id is in use: nothing was written; draw another.
    LeaseTaken,
}

impl RedisStore {
    /// Run `scripts/put.lua`: write `value` at `key` if `condition` holds, on `lease`;
    /// with `new_lease_ttl` (ms), `lease` is a new lease the script creates with that
    /// TTL, only if the write happens.
    async fn put_script(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
        new_lease_ttl: Option<u64>,
    ) -> Result<Written> {
        let (condition_name, expected) = condition_args(condition);
        let lease_arg = lease.map(|l| l.0.to_string()).unwrap_or_default();
        let ttl_arg = new_lease_ttl.map(|ms| ms.to_string());
        let mut args: Vec<&[u8]> = vec![
            self.area.as_bytes(),
            key.as_str().as_bytes(),
            &value,
            condition_name.as_bytes(),
            expected.as_bytes(),
            lease_arg.as_bytes(),
        ];
        if let Some(ttl) = &ttl_arg {
            args.push(ttl.as_bytes());
        }
        let reply = self
            .run_write(("put", Retry::Once), &self.scripts.put, &args)
            .await?;
        let bad = || unexpected("put", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let status = items.first().and_then(Reply::text).ok_or_else(bad)?;
        let number = |i: usize| {
            items
                .get(i)
                .and_then(Reply::int)
                .and_then(|n| u64::try_from(n).ok())
        };
        match status.as_str() {
            "ok" => Ok(Written::Pair(KvPair {
                key: key.to_string(),
                value,
                revision: number(1).ok_or_else(bad)?,
                create_revision: number(2).ok_or_else(bad)?,
                lease,
            })),
            "taken" if new_lease_ttl.is_some() => Ok(Written::LeaseTaken),
            "exists" => Err(Error::KeyExists {
                key: key.to_string(),
            }),
            "not_found" => Err(Error::KeyNotFound {
                key: key.to_string(),
            }),
            "modified" => Err(Error::KeyModified {
                key: key.to_string(),
                expected: expected.parse().unwrap_or(0),
                actual: number(1).unwrap_or(0),
            }),
            "no_lease" => Err(Error::LeaseLost {
                lease: lease.unwrap_or(LeaseId(0)),
                reason: LeaseLoss::Expired,
            }),
            _ => Err(bad()),
        }
    }
}

fn condition_args(condition: Condition) -> (&'static str, String) {
    match condition {
        Condition::Always => ("always", String::new()),
        Condition::Absent => ("absent", String::new()),
        Condition::Revision(expected) => ("revision", expected.to_string()),
    }
}

#[async_trait]
impl Backend for RedisStore {
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
        Some(RedisStore {
            area: LOCK_AREA,
            ..self.clone()
        })
    }

    /// A read needs no script: one `HMGET`, and only for a key on a lease a check that
    /// the lease is still alive by the server's clock, so an expired key is never
    /// returned even before the reaper has deleted it.
    async fn get(&self, key: &Key) -> Result<Option<KvPair>> {
        self.lifecycle.ensure_open(BACKEND)?;
        let timeout = self.config.response_timeout;
        let read = &redis::cmd("HMGET")
            .arg(self.redis_key(key.as_str()))
            .arg(&["value", "revision", "create_revision", "lease"])
            .clone();
        let (value, revision, create_revision, lease): (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<i64>,
        ) = self
            .connection
            .run_idempotent(|mut connection| async move { read.query_async(&mut connection).await })
            .await
            .map_err(|e| from_redis("get", e, timeout))?;
        let (Some(value), Some(revision), Some(create_revision)) =
            (value, revision, create_revision)
        else {
            return Ok(None);
        };
        if let Some(lease) = lease {
            let mut check = self.scripts.lease_alive.key(self.leases_key());
            check.arg(lease);
            let check = &check;
            let alive: i64 = self
                .connection
                .run_idempotent(|mut connection| async move {
                    check.invoke_async(&mut connection).await
                })
                .await
                .map_err(|e| from_redis("get", e, timeout))?;
            if alive == 0 {
                return Ok(None);
            }
        }
        Ok(Some(KvPair {
            key: key.to_string(),
            value: Bytes::from(value),
            revision,
            create_revision,
            lease: lease.map(LeaseId),
        }))
    }

    async fn list(&self, prefix: &Prefix) -> Result<Vec<KvPair>> {
        Ok(self.read(&WatchTarget::Prefix(prefix.clone())).await?.pairs)
    }

    async fn put(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        match self.put_script(key, value, condition, lease, None).await? {
            Written::Pair(pair) => Ok(pair),
            // Only a new lease can be taken.
            Written::LeaseTaken => Err(unexpected("put", "lease id taken".to_owned())),
        }
    }

    /// One script call (`scripts/put.lua`): the condition is checked first, then the
    /// lease is created (a random id drawn here, as [`RedisStore::grant_lease`]'s) at
    /// the same revision as the write, so a failed condition creates nothing and no
    /// one can see the id before this returns. The lease is detached from the start:
    /// not tracked, so [`Backend::close`] does not revoke it.
    async fn put_with_ttl(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        ttl: Duration,
    ) -> Result<KvPair> {
        let millis = lease_millis(ttl);
        for _ in 0..MAX_DRAWS {
            let lease = random_lease_id();
            match self
                .put_script(key, value.clone(), condition, Some(lease), Some(millis))
                .await?
            {
                Written::Pair(pair) => return Ok(pair),
                Written::LeaseTaken => continue,
            }
        }
        Err(unexpected(
            "put",
            format!("{MAX_DRAWS} random lease ids in a row were taken"),
        ))
    }

    async fn delete(&self, key: &Key, revision: Option<u64>) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        let (condition_name, expected) = condition_args(condition);
        let reply = self
            .run_write(
                ("delete", Retry::Once),
                &self.scripts.delete,
                &[
                    self.area.as_bytes(),
                    key.as_str().as_bytes(),
                    condition_name.as_bytes(),
                    expected.as_bytes(),
                ],
            )
            .await?;
        let bad = || unexpected("delete", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let number = items
            .get(1)
            .and_then(Reply::int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(bad)?;
        match items.first().and_then(Reply::text).as_deref() {
            Some("ok") => Ok((number > 0).then_some(number)),
            Some("not_found") => Err(Error::KeyNotFound {
                key: key.to_string(),
            }),
            Some("modified") => Err(Error::KeyModified {
                key: key.to_string(),
                expected: expected.parse().unwrap_or(0),
                actual: number,
            }),
            _ => Err(bad()),
        }
    }

    async fn delete_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = prefix.key_start();
        let reply = self
            .run_write(
                ("delete_tree", Retry::Once),
                &self.scripts.delete_prefix,
                &[self.area.as_bytes(), start.as_bytes()],
            )
            .await?;
        let revision = reply
            .int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| unexpected("delete_tree", format!("unexpected reply {reply:?}")))?;
        Ok((revision > 0).then_some(revision))
    }

    /// Lease ids are random 63-bit numbers drawn here, never a counter: a counter starts
    /// again after Redis loses its data, and a holder's keep-alive would then refresh
    /// (or its revoke delete) another client's lease. An unknown id is `LeaseLost`.
    ///
    /// One round trip of one cheap command: the standalone `lease_grant` script (`TIME`,
    /// `ZADD NX`, `HSET`, and `PTTL` of the key that says no lease is due, lowered when
    /// this lease is due sooner), without the prelude the other scripts run. A granted
    /// lease must exist on the server when this returns: the id is the caller's and may
    /// be handed to another client, whose keep-alive must then find the lease (and whose
    /// revoke must end it). A TTL put needs no grant: [`Backend::put_with_ttl`] creates
    /// its lease inside the put script, whose id nobody sees before the put returns.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseGrant> {
        let millis = lease_millis(ttl);
        for _ in 0..MAX_DRAWS {
            let id = random_lease_id();
            self.lifecycle.ensure_open(BACKEND)?;
            let mut invocation = self.scripts.lease_grant.key(self.leases_key());
            invocation
                .key(format!("{{{}}}:lease-ttl", self.config.namespace))
                .key(format!("{{{}}}:lease-next", self.config.namespace))
                .arg(millis)
                .arg(id.0);
            let reply = run_write_script(
                &self.connection,
                &invocation,
                &self.config,
                ("grant_lease", Retry::Once),
            )
            .await?;
            let items = reply.items().unwrap_or_default();
            match items.first().and_then(Reply::text).as_deref() {
                Some("ok") => {
                    self.lifecycle.track_lease(id);
                    return Ok(LeaseGrant {
                        id,
                        ttl: Duration::from_millis(millis),
                    });
                }
                Some("taken") => continue,
                _ => {
                    return Err(unexpected(
                        "grant_lease",
                        format!("unexpected reply {reply:?}"),
                    ));
                }
            }
        }
        Err(unexpected(
            "grant_lease",
            format!("{MAX_DRAWS} random lease ids in a row were taken"),
        ))
    }

    fn detach_lease(&self, lease: LeaseId) {
        self.lifecycle.forget_lease(lease);
    }

    async fn keep_alive_lease(&self, lease: LeaseId) -> Result<Duration> {
        let reply = self
            .run_write(
                ("keep_alive_lease", Retry::Idempotent),
                &self.scripts.lease_keep_alive,
                &[lease.0.to_string().as_bytes()],
            )
            .await?;
        match reply.int() {
            Some(millis) if millis > 0 => Ok(Duration::from_millis(millis.unsigned_abs())),
            Some(_) => Err(Error::LeaseLost {
                lease,
                reason: LeaseLoss::Expired,
            }),
            None => Err(unexpected(
                "keep_alive_lease",
                format!("unexpected reply {reply:?}"),
            )),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.run_write(
            ("revoke_lease", Retry::Idempotent),
            &self.scripts.lease_revoke,
            &[lease.0.to_string().as_bytes()],
        )
        .await?;
        self.lifecycle.forget_lease(lease);
        Ok(())
    }

    /// One Lua script (`scripts/txn.lua`): compares, then the chosen branch's writes
    /// logged and applied at one revision.
    async fn txn(&self, txn: &kvstore_core::Txn) -> Result<kvstore_core::TxnResponse> {
        use kvstore_core::{CompareOp, CompareTarget, TxnOp, TxnResult};
        let mut args: Vec<Vec<u8>> = vec![
            self.area.as_bytes().to_vec(),
            txn.compares().len().to_string().into_bytes(),
        ];
        for compare in txn.compares() {
            let op = match compare.op {
                CompareOp::Equal => "eq",
                CompareOp::NotEqual => "ne",
                CompareOp::Greater => "gt",
                CompareOp::Less => "lt",
            };
            let (target, operand) = match &compare.target {
                CompareTarget::Value(value) => ("value", value.to_vec()),
                CompareTarget::Revision(revision) => ("revision", revision.to_string().into()),
                CompareTarget::CreateRevision(revision) => ("create", revision.to_string().into()),
                CompareTarget::Lease(lease) => (
                    "lease",
                    lease.map(|l| l.0.to_string()).unwrap_or_default().into(),
                ),
            };
            args.extend([
                compare.key.clone().into_bytes(),
                target.into(),
                op.into(),
                operand,
            ]);
        }
        for branch in [txn.success(), txn.failure()] {
            args.push(branch.len().to_string().into_bytes());
            for op in branch {
                let (kind, value, lease) = match op {
                    TxnOp::Put { value, options, .. } => (
                        "put",
                        value.to_vec(),
                        options.lease.map(|l| l.0.to_string()).unwrap_or_default(),
                    ),
                    TxnOp::Delete { .. } => ("delete", Vec::new(), String::new()),
                    TxnOp::Get { .. } => ("get", Vec::new(), String::new()),
                };
                args.extend([
                    kind.into(),
                    op.key().as_bytes().to_vec(),
                    value,
                    lease.into_bytes(),
                ]);
            }
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self
            .run_write(("txn", Retry::Once), &self.scripts.txn, &args)
            .await?;
        let bad = || unexpected("txn", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        if items.first().and_then(Reply::text).as_deref() == Some("no_lease") {
            let lease = items
                .get(1)
                .and_then(Reply::int)
                .map_or(LeaseId(0), LeaseId);
            return Err(Error::LeaseLost {
                lease,
                reason: LeaseLoss::Expired,
            });
        }
        let number = |value: Option<&Value>| {
            value
                .and_then(Reply::int)
                .and_then(|n| u64::try_from(n).ok())
        };
        let succeeded = number(items.first()).ok_or_else(bad)? == 1;
        let revision = number(items.get(1)).ok_or_else(bad)?;
        let branch = txn.branch(succeeded);
        let mut results = Vec::with_capacity(branch.len());
        for (op, answer) in branch.iter().zip(items.iter().skip(2)) {
            let fields = answer.items().ok_or_else(bad)?;
            results.push(match op {
                TxnOp::Put {
                    key,
                    value,
                    options,
                } => TxnResult::Put(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    revision,
                    create_revision: number(fields.get(1)).ok_or_else(bad)?,
                    lease: options.lease,
                }),
                TxnOp::Delete { .. } => TxnResult::Delete {
                    deleted: number(fields.get(1)).ok_or_else(bad)? == 1,
                },
                TxnOp::Get { key } => TxnResult::Get(if fields.len() < 5 {
                    None
                } else {
                    Some(KvPair {
                        key: key.clone(),
                        value: Bytes::from(fields[1].bytes().ok_or_else(bad)?),
                        revision: number(fields.get(2)).ok_or_else(bad)?,
                        create_revision: number(fields.get(3)).ok_or_else(bad)?,
                        lease: fields[4].int().filter(|l| *l != 0).map(LeaseId),
                    })
                }),
            });
        }
        if results.len() != branch.len() {
            return Err(bad());
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
