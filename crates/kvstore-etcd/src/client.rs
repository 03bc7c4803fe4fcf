//! The connection to etcd: connecting, the service clients a store shares, auth-token
//! renewal, and when a failed request is sent again ([`EtcdStore::call`]).

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient, LeaseClient, WatchClient};
use kvstore_core::{Error, Result};
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::EtcdConfig;
use crate::error::{from_etcd, is_expired_token};
use crate::store::EtcdStore;

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

/// First and longest pause between attempts of a read-only request that failed on a
/// leader change or an unreachable member (the request timeout bounds the whole).
pub(crate) const RETRY_MIN_DELAY: Duration = Duration::from_millis(25);
/// Pause before connecting again after a member refused the connection: another member
/// is likely up, and a refused connection costs nothing.
const UNSENT_RETRY_DELAY: Duration = Duration::from_millis(10);
pub(crate) const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

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

/// Connect to the endpoints of `config` (already validated) until one answers, within
/// `connect_timeout`; returns the client and the service clients made from it.
pub(crate) async fn connect(config: &EtcdConfig) -> Result<(Client, Clients)> {
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
            Err(_) => return Err(last_error.unwrap_or_else(|| unreachable(config))),
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
    Ok((client, clients))
}

impl EtcdStore {
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

/// Whether `error` says the connection could not be made at all, so the request was
/// never sent and sending it again cannot apply it twice.
pub(crate) fn never_sent(error: &etcd_client::Error) -> bool {
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
