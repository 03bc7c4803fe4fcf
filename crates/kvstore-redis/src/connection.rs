//! [`Connection`]: the store's shared request connection, replaced when it fails.
//!
//! The redis crate's `ConnectionManager` reconnects after a dropped connection but keeps
//! a connection whose server went silent (a crashed host, a blackholed network): every
//! request then times out, forever. Here a request that times out or fails on I/O
//! discards the connection it used, and the next request connects afresh (bounded by the
//! connect timeout), so a silent server costs one response timeout per connection, not
//! the store's life (docs/CONTRACT.md §5 "Liveness").

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::{TcpSettings, socket2};
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

/// Idle time before the kernel probes a quiet connection, and between probes: a host
/// that crashed without a reset is noticed by TCP itself within about
/// `KEEPALIVE_IDLE + KEEPALIVE_RETRIES × KEEPALIVE_INTERVAL` (11 s) even when no request
/// is waiting on it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;

/// TCP settings for every connection of a store: keep-alive probes, and a user timeout
/// (`TCP_USER_TIMEOUT`) so data the server never acknowledges fails the connection.
pub(crate) fn tcp_settings(response_timeout: Duration) -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(response_timeout)
}

/// One multiplexed connection shared by every request of a store (and its clones),
/// replaced after a failure that may have left it dead.
pub(crate) struct Connection {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The live connection and its generation, or `None` until the next request connects.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Serialises connecting, so many requests after a failure make one connection.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl Connection {
    /// A connection holder for `client`, already holding `first` (made by the caller to
    /// check the server at connect time).
    pub(crate) fn new(
        client: redis::Client,
        config: AsyncConnectionConfig,
        first: MultiplexedConnection,
    ) -> Connection {
        Connection {
            client,
            config,
            current: Mutex::new(Some((0, first))),
            connecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(1),
        }
    }

    /// Run `request` on the shared connection (connecting first if the last one was
    /// discarded); a failure that may mean a dead connection discards it.
    pub(crate) async fn run<T, F, Fut>(&self, request: F) -> RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (generation, connection) = self.get().await?;
        let outcome = request(connection).await;
        if let Err(error) = &outcome {
            self.failed(generation, error);
        }
        outcome
    }

    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *self.slot() = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.slot().clone()
    }

    /// Discard connection `generation` if `error` says it may be dead or stuck (a
    /// response timeout, an I/O error, a dropped connection); errors the server answered
    /// with keep it.
    fn failed(&self, generation: u64, error: &RedisError) {
        let suspect = error.is_timeout()
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error();
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

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        // Every critical section is one assignment or clone: a poisoned slot is intact.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
