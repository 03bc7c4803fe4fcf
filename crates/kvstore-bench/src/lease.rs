//! Keep-alive cost against the number of live leases: client CPU (getrusage of this
//! process), server CPU (`/proc/PID/stat` of the server) and server requests per second
//! (Redis `INFO stats`, etcd's `/metrics` gRPC counters), while `N` leases are kept
//! alive and nothing else runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kvstore::{Lease, PutOptions, Store};

use crate::machine::{own_cpu_time, process_cpu_time};
use crate::measure::{BenchResult, Table, Timing, number};

/// The TTL of the leases: kept alive every third of it.
const TTL: Duration = Duration::from_secs(3);
/// Pause between granting and measuring.
const SETTLE: Duration = Duration::from_millis(500);

/// Where a server's request counters are read.
#[derive(Clone, Debug)]
pub(crate) enum Counters {
    /// An in-process store: no server.
    None,
    /// Redis: `INFO stats` `total_commands_processed` through this URL.
    Redis(String),
    /// etcd: `http://ADDRESS/metrics` (`grpc_server_msg_received_total` and
    /// `grpc_server_started_total{grpc_method="LeaseKeepAlive"}`).
    Etcd(String),
}

/// A reading of a server's counters.
#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    /// Requests (Redis commands, etcd gRPC messages received).
    requests: f64,
    /// etcd keep-alive streams started.
    streams: f64,
}

impl Counters {
    async fn read(&self) -> BenchResult<Option<Reading>> {
        match self {
            Counters::None => Ok(None),
            Counters::Redis(url) => {
                let mut connection = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let info: String = redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut connection)
                    .await?;
                let requests = info
                    .lines()
                    .find_map(|l| l.strip_prefix("total_commands_processed:"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .ok_or("INFO stats has no total_commands_processed")?;
                Ok(Some(Reading {
                    requests,
                    streams: 0.0,
                }))
            }
            Counters::Etcd(address) => {
                let text = http_get(address, "/metrics")?;
                let mut reading = Reading::default();
                for line in text.lines() {
                    let value = || {
                        line.rsplit(' ')
                            .next()
                            .and_then(|v| v.parse::<f64>().ok())
                            .unwrap_or(0.0)
                    };
                    if line.starts_with("grpc_server_msg_received_total{") {
                        reading.requests += value();
                    } else if line.starts_with("grpc_server_started_total{")
                        && line.contains("grpc_method=\"LeaseKeepAlive\"")
                    {
                        reading.streams += value();
                    }
                }
                Ok(Some(reading))
            }
        }
    }
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked) from `address`; the body.
fn http_get(address: &str, path: &str) -> BenchResult<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200") => {
            Ok(body.to_owned())
        }
        _ => Err(format!("GET {path} from {address} did not answer 200").into()),
    }
}

/// Failed requests of one curve point, with the first message of each kind.
#[derive(Default)]
struct Errors {
    count: usize,
    messages: Vec<String>,
}

impl Errors {
    fn add(&mut self, error: impl std::fmt::Display) {
        self.count += 1;
        let message = error.to_string();
        if !self.messages.contains(&message) && self.messages.len() < 3 {
            self.messages.push(message);
        }
    }
}

/// Grant `count` leases through ours, many at once; a failed grant is tried again (up to
/// three times) and counted.
async fn grant(store: &Arc<dyn Store>, count: usize, errors: &mut Errors) -> Vec<Lease> {
    let attempts: Vec<(Option<Lease>, Vec<kvstore::Error>)> = futures::stream::iter(0..count)
        .map(|_| {
            let store = store.clone();
            async move {
                let mut failures = Vec::new();
                for _ in 0..3 {
                    match store.grant_lease(TTL).await {
                        Ok(lease) => return (Some(lease), failures),
                        Err(error) => failures.push(error),
                    }
                }
                (None, failures)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut leases = Vec::with_capacity(count);
    for (lease, failures) in attempts {
        for failure in failures {
            errors.add(failure);
        }
        leases.extend(lease);
    }
    leases
}

/// Revoke leases many at once (after abandoning their keepers); a failed revoke is
/// counted (the lease then expires by itself).
async fn revoke_all(store: &Arc<dyn Store>, leases: Vec<Lease>, errors: &mut Errors) {
    let ids: Vec<kvstore::LeaseId> = leases.into_iter().map(Lease::abandon).collect();
    let results: Vec<kvstore::Result<()>> = futures::stream::iter(ids)
        .map(|id| {
            let store = store.clone();
            async move { store.revoke_lease(id).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        if let Err(error) = result {
            errors.add(error);
        }
    }
}

/// Raw etcd keep-alive as etcd-client users do it: one keep-alive stream per lease,
/// kept open, a refresh every third of the TTL, its answer read.
async fn raw_etcd_keepers(
    client: &etcd_client::Client,
    count: usize,
) -> BenchResult<(Vec<i64>, Vec<tokio::task::JoinHandle<()>>)> {
    let opened: Vec<Result<_, etcd_client::Error>> = futures::stream::iter(0..count)
        .map(|_| {
            let mut client = client.clone();
            async move {
                let id = client.lease_grant(TTL.as_secs() as i64, None).await?.id();
                let (keeper, responses) = client.lease_keep_alive(id).await?;
                Ok((id, keeper, responses))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for keeper in opened {
        let (id, mut keeper, mut responses) = keeper?;
        ids.push(id);
        // Spread the refreshes over the interval, as leases granted over time are.
        let offset = (TTL / 3).mul_f64(rand::random::<f64>());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            loop {
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                if !matches!(responses.message().await, Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(TTL / 3).await;
            }
        }));
    }
    Ok((ids, tasks))
}

/// Revoke raw etcd leases many at once; failures (a lease already expired) are counted.
async fn raw_etcd_revoke(client: &etcd_client::Client, ids: Vec<i64>, errors: &mut Errors) {
    let results: Vec<Result<_, etcd_client::Error>> = futures::stream::iter(ids)
        .map(|id| {
            let mut client = client.clone();
            async move { client.lease_revoke(id).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        if let Err(error) = result {
            errors.add(error);
        }
    }
}

/// Put throughput of ours (16 in flight, keys unrelated to the leases) for `length`
/// while the leases are kept alive; failed puts are counted, not fatal.
async fn puts_meanwhile(
    store: &Arc<dyn Store>,
    length: Duration,
    errors: &mut Errors,
) -> BenchResult<f64> {
    let failed = std::cell::RefCell::new(Errors::default());
    let value = bytes::Bytes::from(vec![b'v'; 100]);
    let rate = crate::measure::run_for(length, 16, None, |i| {
        let (store, value, failed) = (store.clone(), value.clone(), &failed);
        async move {
            if let Err(error) = store
                .put(
                    &format!("lease-probe/{}", i % 100),
                    value,
                    PutOptions::default(),
                )
                .await
            {
                failed.borrow_mut().add(error);
            }
            Ok(())
        }
    })
    .await?;
    let failed = failed.into_inner();
    errors.count += failed.count;
    for message in failed.messages {
        if !errors.messages.contains(&message) {
            errors.messages.push(message);
        }
    }
    Ok(rate)
}

/// One measurement window: client CPU ms/s, server CPU ms/s, server requests/s and
/// etcd keep-alive streams started/s.
async fn window(
    server_pid: Option<i32>,
    counters: &Counters,
    length: Duration,
) -> BenchResult<[Option<f64>; 4]> {
    let client_before = own_cpu_time();
    let server_before = server_pid.and_then(process_cpu_time);
    let counted_before = counters.read().await?;
    let started = Instant::now();
    tokio::time::sleep(length).await;
    let elapsed = started.elapsed().as_secs_f64();
    let counted_after = counters.read().await?;
    let server_after = server_pid.and_then(process_cpu_time);
    let client = (own_cpu_time() - client_before).as_secs_f64() * 1000.0 / elapsed;
    let server = match (server_before, server_after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before).as_secs_f64() * 1000.0 / elapsed)
        }
        _ => None,
    };
    let (requests, streams) = match (counted_before, counted_after) {
        (Some(before), Some(after)) => (
            // Reading the counters costs one request each; not counted.
            Some(((after.requests - before.requests - 1.0) / elapsed).max(0.0)),
            matches!(counters, Counters::Etcd(_))
                .then(|| (after.streams - before.streams) / elapsed),
        ),
        _ => (None, None),
    };
    Ok([Some(client), server, requests, streams])
}

/// A table cell for an optional number.
fn cell(value: Option<f64>) -> String {
    value.map(number).unwrap_or_else(|| "–".into())
}

/// The keep-alive curve of one backend: `N` live leases (10 to 10,000) kept alive,
/// nothing else running; with raw etcd-client keepers as a baseline on etcd.
///
/// # Errors
/// A failed request.
pub(crate) async fn curve(
    backend: &str,
    store: &Arc<dyn Store>,
    server_pid: Option<i32>,
    counters: &Counters,
    raw_etcd: Option<&etcd_client::Client>,
    timing: &Timing,
) -> BenchResult<Table> {
    // Two refresh intervals: every lease refreshes twice in any such window.
    let length = if timing.quick || matches!(counters, Counters::None) {
        TTL / 3
    } else {
        TTL / 3 * 2
    };
    let mut table = Table::new(
        format!("{backend}: keep-alive cost against live leases"),
        format!(
            "Leases of {} s TTL, each refreshed every {:.1} s by its handle; after a settling {:.1} s, a {:.0} s window with nothing else running, then puts to unrelated keys while the leases live (*put ops/s meanwhile*: what the keep-alive traffic, and on Redis the lease bookkeeping every script does first, cost the writes). Client CPU is this process's user+system time (getrusage), server CPU the server process's (`/proc/PID/stat`, 10 ms ticks), both in ms of CPU per second. Server requests: {}.{}",
            TTL.as_secs(),
            (TTL / 3).as_secs_f64(),
            SETTLE.as_secs_f64(),
            length.as_secs_f64(),
            match counters {
                Counters::None => "none (in process)",
                Counters::Redis(_) =>
                    "`INFO stats` total_commands_processed, which counts every command a Lua script runs (a keep-alive script is several)",
                Counters::Etcd(_) =>
                    "gRPC messages received (`grpc_server_msg_received_total`, all methods, from etcd's `/metrics`); keep-alive streams are `grpc_server_started_total{grpc_method=\"LeaseKeepAlive\"}`",
            },
            if raw_etcd.is_some() {
                " The raw rows keep each lease alive on its own long-lived etcd-client keep-alive stream. *Streams opened/s* equal to the refreshes due means a new gRPC stream per refresh (etcd's Go client keeps one stream for all of a client's leases); *leases lost* and *failed requests* show where keeping leases alive breaks down."
            } else {
                ""
            }
        ),
        &[
            "live leases",
            "side",
            "refreshes due /s",
            "client CPU ms/s",
            "server CPU ms/s",
            "server requests /s",
            "keep-alive streams opened /s",
            "leases lost",
            "put ops/s meanwhile (16 in flight)",
            "failed requests",
        ],
    );
    let mut failures: Vec<String> = Vec::new();
    let write_time = timing.step * timing.passes.max(1) as u32;
    let counts: &[usize] = if timing.quick {
        &[10, 100]
    } else {
        &[10, 100, 1000, 10_000]
    };
    for &count in counts {
        let mut errors = Errors::default();
        let leases = grant(store, count, &mut errors).await;
        tokio::time::sleep(SETTLE).await;
        let [client, server, requests, streams] = window(server_pid, counters, length).await?;
        let lost = leases.iter().filter(|l| l.loss().is_some()).count();
        let put_rate = puts_meanwhile(store, write_time, &mut errors).await?;
        table.row(vec![
            count.to_string(),
            "ours".into(),
            number(count as f64 / (TTL / 3).as_secs_f64()),
            cell(client),
            cell(server),
            cell(requests),
            cell(streams),
            lost.to_string(),
            number(put_rate),
            String::new(),
        ]);
        revoke_all(store, leases, &mut errors).await;
        if let Some(cell) = table.rows.last_mut().and_then(|row| row.last_mut()) {
            *cell = errors.count.to_string();
        }
        for message in errors.messages {
            let note = format!("{count} leases, ours: {message}");
            if !failures.contains(&note) {
                failures.push(note);
            }
        }
        if let Some(client) = raw_etcd {
            let (ids, tasks) = raw_etcd_keepers(client, count).await?;
            tokio::time::sleep(SETTLE).await;
            let [client_cpu, server, requests, streams] =
                window(server_pid, counters, length).await?;
            let stopped = tasks.iter().filter(|t| t.is_finished()).count();
            table.row(vec![
                count.to_string(),
                "raw".into(),
                number(count as f64 / (TTL / 3).as_secs_f64()),
                cell(client_cpu),
                cell(server),
                cell(requests),
                cell(streams),
                stopped.to_string(),
                "–".into(),
                String::new(),
            ]);
            for task in tasks {
                task.abort();
            }
            let mut errors = Errors::default();
            raw_etcd_revoke(client, ids, &mut errors).await;
            if let Some(cell) = table.rows.last_mut().and_then(|row| row.last_mut()) {
                *cell = errors.count.to_string();
            }
            for message in errors.messages {
                let note = format!("{count} leases, raw: {message}");
                if !failures.contains(&note) {
                    failures.push(note);
                }
            }
        }
        eprintln!("  {backend}: {count} leases done");
    }
    if !failures.is_empty() {
        table.note.push_str(&format!(
            " Failed requests (granting, keeping alive or revoking; a failed grant is tried again up to three times): {}.",
            failures
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(table)
}
