//! [`Connection`]: the store's shared request connection, replaced when it fails.
//!
//! The redis crate's `ConnectionManager` reconnects after a dropped connection but keeps
//! a connection whose server went silent (a crashed host, a blackholed network): every
//! request then times out, forever. Here a request that times out or fails on I/O
//! discards the connection it used, and the next request connects afresh (bounded by the
//! connect timeout), so a silent server costs one response timeout per connection, not
//! the store's life ([contract §5](kvstore_core::contract#5-watch) "Liveness").

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvstore_core::{Error, Result};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::{TcpSettings, socket2};
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use crate::BACKEND;
use crate::config::RedisConfig;
use crate::error::from_redis;
use crate::topology::Topology;
use crate::watch::WATCH_BLOCK;

/// Idle time before the kernel probes a quiet connection, and between probes: a host
/// that crashed without a reset is noticed by TCP itself within about
/// `KEEPALIVE_IDLE + KEEPALIVE_RETRIES × KEEPALIVE_INTERVAL` (11 s) even when no request
/// is waiting on it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;

/// TCP settings for every connection of a store: keep-alive probes, and a user timeout
/// (`TCP_USER_TIMEOUT`) so data the server never acknowledges fails the connection.
fn tcp_settings(request_timeout: Duration) -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(request_timeout)
}

/// What connections are made to: one server, the primary Sentinel names (asked again for
/// every new connection, so a failover is followed), or a Redis Cluster; with the
/// timeouts of each kind of connection.
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// The response timeout of watch connections, which block in `XREAD`.
    pub(crate) watch_timeout: Duration,
}

/// The deployment connections go to.
pub(crate) enum Target {
    /// One server.
    Single(redis::Client),
    /// The current primary of a Sentinel-managed set.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    /// A Redis Cluster (the client routes each command to the node of its key's slot),
    /// with the clients for requests and for watches (their response timeouts differ).
    Cluster {
        requests: Box<redis::cluster::ClusterClient>,
        watches: Box<redis::cluster::ClusterClient>,
    },
}

/// What a connection is for: its response timeout differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Requests, bounded by the request timeout.
    Requests,
    /// A watch's blocking reads, bounded by the watch timeout.
    Watch,
}

/// A live connection of any deployment. Cloning shares it (both kinds multiplex).
#[derive(Clone)]
pub(crate) enum Link {
    /// To one server (or the Sentinel-named primary).
    Node(MultiplexedConnection),
    /// To a Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Link::Node(connection) => connection.req_packed_command(cmd),
            Link::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Link::Node(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Endpoint {
    /// The deployment `config.url` names, with every connection's TCP settings and timeouts.
    pub(crate) fn open(config: &RedisConfig) -> Result<Endpoint> {
        let tcp = tcp_settings(config.request_timeout);
        let target = Topology::parse(&config.url)?.target(config, tcp)?;
        Ok(Endpoint {
            target,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            watch_timeout: WATCH_BLOCK + config.request_timeout,
        })
    }

    /// A new connection for `purpose`.
    pub(crate) async fn connect(&self, purpose: Purpose) -> RedisResult<Link> {
        let timeout = match purpose {
            Purpose::Requests => self.request_timeout,
            Purpose::Watch => self.watch_timeout,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(timeout));
        match &self.target {
            Target::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Link::Node),
            Target::Sentinel(sentinel) => sentinel
                .lock()
                .await
                .get_async_connection_with_config(&config)
                .await
                .map(Link::Node),
            Target::Cluster { requests, watches } => {
                let client = match purpose {
                    Purpose::Requests => requests,
                    Purpose::Watch => watches,
                };
                client.get_async_connection().await.map(Link::Cluster)
            }
        }
    }

    /// Whether this is a Redis Cluster (where commands without a key, such as `CONFIG`
    /// or `CLIENT SETNAME`, would go to an arbitrary node).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }
}

/// One connection shared by every request of a store (and its clones), replaced after a
/// failure that may have left it dead.
pub(crate) struct Connection {
    endpoint: Arc<Endpoint>,
    /// The live connection and its generation, or `None` until the next request connects.
    current: Mutex<Option<(u64, Link)>>,
    /// Serialises connecting, so many requests after a failure make one connection.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl Connection {
    /// Whether this is a Redis Cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// A connection holder for `endpoint`; the first request connects.
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> Connection {
        Connection {
            endpoint,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
        }
    }

    /// The shared connection, connecting if there is none.
    pub(crate) async fn link(&self) -> RedisResult<Link> {
        Ok(self.get().await?.1)
    }

    /// Connect, check that the server answers, and check its eviction policy, all within
    /// `config.connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server does not answer in time; [`Error::Auth`]
    /// for rejected credentials; [`Error::Config`] for an evicting server when
    /// [`RedisConfig::require_noeviction`] is set.
    pub(crate) async fn check(&self, config: &RedisConfig) -> Result<()> {
        let timeout = config.connect_timeout;
        let connecting = async {
            let mut first = self
                .link()
                .await
                .map_err(|e| from_redis("connect", e, timeout))?;
            redis::cmd("PING")
                .query_async::<String>(&mut first)
                .await
                .map_err(|e| from_redis("connect", e, timeout))?;
            if !self.endpoint.is_cluster() {
                check_eviction_policy(&mut first, config).await?;
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
            })?
    }

    /// Run `request` on the shared connection (connecting first if the last one was
    /// discarded); a failure that may mean a dead connection discards it.
    pub(crate) async fn run<T, F, Fut>(&self, request: F) -> RedisResult<T>
    where
        F: FnOnce(Link) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, connection) = self.get().await?;
        let outcome = request(connection).await;
        if let Err(error) = &outcome {
            self.failed(generation, error);
        }
        outcome
    }

    /// [`Connection::run`] for a request that may be applied twice without harm (a read,
    /// a lease keep-alive or revoke): when it fails because the connection was dropped
    /// (the server restarted since the last request), it is sent once more on a new
    /// connection, so the first request after a restart does not fail.
    pub(crate) async fn run_idempotent<T, F, Fut>(&self, request: F) -> RedisResult<T>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match self.run(&request).await {
            Err(error) if error.is_connection_dropped() => {
                tracing::debug!(%error, "redis connection dropped; sending the request again");
                self.run(&request).await
            }
            outcome => outcome,
        }
    }

    async fn get(&self) -> RedisResult<(u64, Link)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let connection = self.endpoint.connect(Purpose::Requests).await?;
        *self.slot() = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    fn current(&self) -> Option<(u64, Link)> {
        self.slot().clone()
    }

    /// Discard connection `generation` if `error` says it may be dead, stuck or pointed
    /// at the wrong server: a response timeout, an I/O error, a dropped connection, or a
    /// `READONLY` answer (a primary demoted by a failover; reconnecting asks Sentinel for
    /// the new one). Other errors the server answered with keep it.
    fn failed(&self, generation: u64, error: &RedisError) {
        let suspect = error.is_timeout()
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !suspect {
            return;
        }
        let mut slot = self.slot();
        if slot
            .as_ref()
            .is_some_and(|(current, _)| *current == generation)
        {
            tracing::debug!(%error, "redis connection failed; the next request reconnects");
            *slot = None;
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, Link)>> {
        // Every critical section is one assignment or clone: a poisoned slot is intact.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Warn about (or, with [`RedisConfig::require_noeviction`], refuse) a server whose
/// `maxmemory-policy` can evict keys. Servers that forbid `CONFIG` (managed services)
/// are trusted.
async fn check_eviction_policy(connection: &mut Link, config: &RedisConfig) -> Result<()> {
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
