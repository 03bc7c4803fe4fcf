//! [`Session`]: the store's ZooKeeper session, replaced when it ends, and the server's
//! clock as seen through the writes it makes.
//!
//! zookeeper-client keeps one session and reconnects it to any member of the ensemble by
//! itself; a session that *ends* (expired after the ensemble was unreachable for longer
//! than the session timeout, or closed) cannot be used again, so the next call
//! establishes a new one. The store keeps no ephemeral nodes, so nothing is lost with
//! an ended session.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::{Error, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::BACKEND;
use crate::config::ZooKeeperConfig;
use crate::error::{from_zk, is_transient};

/// Pause before sending a read again after the session lost its connection.
const READ_RETRY_DELAY: Duration = Duration::from_millis(50);

/// One reading of the server's clock: the `mtime` ZooKeeper stamped on a write (the
/// leader's clock, in ms since the epoch) and when that write was sent and answered.
#[derive(Clone, Copy, Debug)]
struct ClockSample {
    server_ms: i64,
    sent: Instant,
    answered: Instant,
}

/// The session of a store and its clones.
pub(crate) struct Session {
    config: Arc<ZooKeeperConfig>,
    client: tokio::sync::Mutex<Option<zk::Client>>,
    clock: std::sync::Mutex<Option<ClockSample>>,
}

impl Session {
    /// Establish the first session, within the connect timeout.
    pub(crate) async fn connect(config: Arc<ZooKeeperConfig>) -> Result<Session> {
        let client = establish(&config).await?;
        Ok(Session {
            config,
            client: tokio::sync::Mutex::new(Some(client)),
            clock: std::sync::Mutex::new(None),
        })
    }

    /// The current session's client; a new session when the last one ended.
    pub(crate) async fn client(&self) -> Result<zk::Client> {
        let mut current = self.client.lock().await;
        if let Some(client) = current.as_ref()
            && !client.state().is_terminated()
        {
            return Ok(client.clone());
        }
        let client = establish(&self.config).await?;
        *current = Some(client.clone());
        Ok(client)
    }

    /// Close the session (on `close()`): the next call of [`Session::client`] would open
    /// another, but the store refuses calls once closed.
    pub(crate) async fn close(&self) {
        self.client.lock().await.take();
    }

    /// The request timeout, for error messages.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// Run a read, sending it again while the session is reconnecting. The caller
    /// bounds the whole call with the request timeout.
    pub(crate) async fn read<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, zk::Error>>,
    {
        loop {
            let client = self.client().await?;
            match request(client).await {
                Ok(value) => return Ok(value),
                Err(error) if is_transient(&error) => {
                    tracing::debug!(%error, operation, "zookeeper read failed; retrying");
                    tokio::time::sleep(READ_RETRY_DELAY).await;
                }
                Err(error) => return Err(from_zk(operation, error, self.request_timeout())),
            }
        }
    }

    /// Remember the server time `server_ms` a write sent at `sent` was stamped with.
    pub(crate) fn observe_clock(&self, server_ms: i64, sent: Instant) {
        let sample = ClockSample {
            server_ms,
            sent,
            answered: Instant::now(),
        };
        let mut clock = self
            .clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if clock.is_none_or(|known| known.sent <= sent) {
            *clock = Some(sample);
        }
    }

    /// Bounds on the server's clock now, in ms since the epoch: `(earliest, latest)`,
    /// from the last write's stamp and the local monotonic time since; `None` when no
    /// write was seen within `max_age`.
    pub(crate) fn server_now(&self, max_age: Duration) -> Option<(i64, i64)> {
        let clock = *self
            .clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sample = clock?;
        let now = Instant::now();
        if now.duration_since(sample.answered) > max_age {
            return None;
        }
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Some((
            sample
                .server_ms
                .saturating_add(millis(now.duration_since(sample.answered))),
            sample
                .server_ms
                .saturating_add(millis(now.duration_since(sample.sent))),
        ))
    }
}

/// A new session, authenticated when the configuration has credentials.
async fn establish(config: &ZooKeeperConfig) -> Result<zk::Client> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_fail_eagerly();
    if let Some((user, password)) = &config.credentials {
        connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
    }
    let timeout = config.connect_timeout;
    match tokio::time::timeout(timeout, connector.connect(&config.hosts)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(from_zk("connect", error, timeout)),
        Err(_) => Err(Error::Unavailable {
            backend: BACKEND,
            operation: "connect",
            message: format!("no zookeeper session within {timeout:?}"),
            source: None,
        }),
    }
}
