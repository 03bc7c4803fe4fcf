//! A steady request load for the demos, tests and benchmarks: a few concurrent
//! clients, each sending a request every few milliseconds through a gateway, recording
//! when each was sent, how long it took and how it ended.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::Method;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::HttpClient;

/// How long one request of the load may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request of the load.
#[derive(Clone, Debug)]
pub struct Sent {
    /// When it was sent.
    pub at: Instant,
    /// How long the answer took.
    pub latency: Duration,
    /// The method.
    pub method: Method,
    /// The HTTP status, or the error that stood for it.
    pub outcome: Result<u16, String>,
    /// The instance that answered.
    pub served_by: Option<String>,
}

impl Sent {
    /// Whether it was answered 2xx.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Ok(status) if (200..300).contains(&status))
    }
}

/// A running load; [`Load::stop`] ends it.
#[derive(Debug)]
pub struct Load {
    sent: Arc<Mutex<Vec<Sent>>>,
    clients: JoinSet<()>,
}

impl Load {
    /// Start `clients` clients, each sending `methods` in turn to `url`, one request
    /// every `interval` (after the previous one answered).
    pub fn start(url: &str, clients: usize, interval: Duration, methods: &[Method]) -> Load {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for client in 0..clients {
            let sent = sent.clone();
            let url = url.to_owned();
            let methods = methods.to_vec();
            tasks.spawn(async move {
                let http = HttpClient::default();
                let mut turn = client;
                loop {
                    let method = methods[turn % methods.len()].clone();
                    turn += 1;
                    let at = Instant::now();
                    let reply = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        http.send(method.clone(), &url, "payload"),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")));
                    let latency = at.elapsed();
                    let (outcome, served_by) = match reply {
                        Ok(reply) => (Ok(reply.status), reply.served_by),
                        Err(e) => (Err(e), None),
                    };
                    sent.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Sent {
                            at,
                            latency,
                            method,
                            outcome,
                            served_by,
                        });
                    tokio::time::sleep(interval).await;
                }
            });
        }
        Load {
            sent,
            clients: tasks,
        }
    }

    /// Every request answered so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests each instance answered 2xx since `since`.
    pub fn served_since(&self, since: Instant) -> BTreeMap<String, usize> {
        let mut served = BTreeMap::new();
        for sent in self.sent().iter().filter(|s| s.at >= since && s.ok()) {
            if let Some(by) = &sent.served_by {
                *served.entry(by.clone()).or_default() += 1;
            }
        }
        served
    }

    /// Stop the clients (requests in flight are dropped, not counted) and return every
    /// request answered.
    pub async fn stop(mut self) -> Vec<Sent> {
        self.clients.shutdown().await;
        self.sent()
    }
}

/// What a window of requests looked like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Requests sent in the window.
    pub requests: usize,
    /// Of them, not answered 2xx.
    pub failed: usize,
    /// Latency percentiles: p50, p99, p99.9.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
}

/// Summarize the requests sent in `from..to`.
pub fn summarize(sent: &[Sent], from: Instant, to: Instant) -> Summary {
    let window: Vec<&Sent> = sent.iter().filter(|s| s.at >= from && s.at < to).collect();
    let mut latencies: Vec<Duration> = window.iter().map(|s| s.latency).collect();
    latencies.sort();
    let at = |q: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    Summary {
        requests: window.len(),
        failed: window.iter().filter(|s| !s.ok()).count(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}
