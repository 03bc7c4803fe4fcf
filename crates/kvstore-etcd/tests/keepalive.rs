//! Lease keep-alives share one `LeaseKeepAlive` stream per store (as etcd's Go client
//! does), counted on the server itself: etcd's `/metrics` on its client URL. They ride
//! through a member killed and restarted, and fail within the request timeout when the
//! server is gone or frozen (docs/CONTRACT.md §7 "Never hangs").

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use kvstore_core::backend::Backend;
use kvstore_core::{Error, LeaseId, LeaseLoss, Store};
use kvstore_etcd::{EtcdConfig, EtcdStore};
use kvstore_testkit::server::{EtcdCluster, EtcdServer};
use kvstore_testsuite::{WAIT, unique_namespace};

/// The request timeout of the stores in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// What a call may take beyond its timeout on a loaded machine before it counts as hung.
const SLACK: Duration = Duration::from_secs(2);

async fn connect(addresses: Vec<String>) -> EtcdStore {
    let mut config = EtcdConfig::new(addresses);
    config.namespace = unique_namespace();
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = REQUEST_TIMEOUT;
    EtcdStore::connect(config).await.unwrap()
}

/// A counter of etcd's gRPC server metrics for the `LeaseKeepAlive` method, read from
/// `/metrics` on the member's client port: `grpc_server_started_total` counts streams
/// opened, `grpc_server_msg_received_total` keep-alives received.
fn keep_alive_metric(address: &str, metric: &str) -> u64 {
    let mut connection = TcpStream::connect(address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        connection,
        "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    connection.read_to_string(&mut body).unwrap();
    let prefix = format!("{metric}{{grpc_method=\"LeaseKeepAlive\",");
    body.lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("no {prefix}…}} in etcd's /metrics"))
}

fn streams_opened(address: &str) -> u64 {
    keep_alive_metric(address, "grpc_server_started_total")
}

fn keep_alives_received(address: &str) -> u64 {
    keep_alive_metric(address, "grpc_server_msg_received_total")
}

/// Grant `count` leases of `ttl` without keep-alive loops, a few at a time.
async fn grant(store: &EtcdStore, count: usize, ttl: Duration) -> Vec<LeaseId> {
    futures::stream::iter(0..count)
        .map(|_| async move { Backend::grant_lease(store, ttl).await.unwrap().id })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Keep `lease` alive, retrying retryable failures, until it succeeds within [`WAIT`].
async fn keep_alive_retrying(store: &EtcdStore, lease: LeaseId) -> Duration {
    let started = Instant::now();
    loop {
        match Backend::keep_alive_lease(store, lease).await {
            Ok(ttl) => return ttl,
            Err(error) if error.is_retryable() && started.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("keep-alive of {lease} failed for good: {error:?}"),
        }
    }
}

/// Every keep-alive in `results` failed, and with an error worth retrying: unreachable,
/// timed out, or (a connection reset under a stream that was open) a client error.
fn all_failed_retryably(results: &[kvstore_core::Result<Duration>]) {
    for result in results {
        assert!(
            matches!(result, Err(error) if error.is_retryable()),
            "{result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_leases_are_kept_alive_over_one_stream() {
    let server = EtcdServer::start().unwrap();
    let address = server.address();
    let store = connect(vec![address.clone()]).await;
    let ttl = Duration::from_secs(60);
    let leases = grant(&store, 1000, ttl).await;
    let (streams, received) = (streams_opened(&address), keep_alives_received(&address));

    for _ in 0..2 {
        let refreshed = join_all(
            leases
                .iter()
                .map(|&lease| Backend::keep_alive_lease(&store, lease)),
        )
        .await;
        for ttl_now in refreshed {
            assert_eq!(ttl_now.unwrap(), ttl);
        }
    }

    assert_eq!(
        streams_opened(&address) - streams,
        1,
        "every keep-alive of the store goes over one stream"
    );
    // Opening the stream sends one keep-alive (etcd-client's API), then one per call.
    assert_eq!(keep_alives_received(&address) - received, 2 * 1000 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_on_the_shared_stream_go_to_the_lease_they_are_about() {
    let server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()]).await;
    let short = Backend::grant_lease(&store, Duration::from_secs(30))
        .await
        .unwrap()
        .id;
    let long = Backend::grant_lease(&store, Duration::from_secs(90))
        .await
        .unwrap()
        .id;
    let gone = Backend::grant_lease(&store, Duration::from_secs(30))
        .await
        .unwrap()
        .id;
    Backend::revoke_lease(&store, gone).await.unwrap();

    // The first keep-alive of the store opens the stream with a lease that is gone: it
    // is reported lost, and the stream opens with the next one.
    let (gone_first, short_first, long_first) = tokio::join!(
        Backend::keep_alive_lease(&store, gone),
        Backend::keep_alive_lease(&store, short),
        Backend::keep_alive_lease(&store, long),
    );
    assert!(
        matches!(
            gone_first,
            Err(Error::LeaseLost { lease, reason: LeaseLoss::Expired }) if lease == gone
        ),
        "{gone_first:?}"
    );
    assert_eq!(short_first.unwrap(), Duration::from_secs(30));
    assert_eq!(long_first.unwrap(), Duration::from_secs(90));

    // Interleaved, and the same lease several times at once, on the open stream.
    let mut calls = Vec::new();
    for _ in 0..20 {
        calls.extend([short, long, gone, short]);
    }
    let answers = join_all(
        calls
            .iter()
            .map(|&lease| Backend::keep_alive_lease(&store, lease)),
    )
    .await;
    for (&lease, answer) in calls.iter().zip(answers) {
        match answer {
            Ok(ttl) if lease == short => assert_eq!(ttl, Duration::from_secs(30)),
            Ok(ttl) if lease == long => assert_eq!(ttl, Duration::from_secs(90)),
            Err(Error::LeaseLost {
                lease: lost,
                reason: LeaseLoss::Expired,
            }) if lease == gone => assert_eq!(lost, gone),
            other => panic!("keep-alive of {lease}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_fail_within_the_timeout_while_the_server_is_gone_and_resume_after_restart() {
    let mut server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()]).await;
    let leases = grant(&store, 50, Duration::from_secs(60)).await;
    Backend::keep_alive_lease(&store, leases[0]).await.unwrap();

    server.kill();
    // Twice: the first wave meets the stream broken under it, the second finds no
    // server to open a new one on.
    for _ in 0..2 {
        let started = Instant::now();
        let results = join_all(
            leases
                .iter()
                .map(|&lease| Backend::keep_alive_lease(&store, lease)),
        )
        .await;
        assert!(
            started.elapsed() < REQUEST_TIMEOUT + SLACK,
            "took {:?}",
            started.elapsed()
        );
        all_failed_retryably(&results);
    }

    server.restart().unwrap();
    for &lease in &leases {
        assert_eq!(
            keep_alive_retrying(&store, lease).await,
            Duration::from_secs(60)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_on_a_frozen_server_time_out_and_resume_when_it_thaws() {
    let server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()]).await;
    let leases = grant(&store, 20, Duration::from_secs(60)).await;
    Backend::keep_alive_lease(&store, leases[0]).await.unwrap();

    server.pause();
    // The stream is open on a connection that stays up, and nothing answers.
    let started = Instant::now();
    let results = join_all(
        leases
            .iter()
            .map(|&lease| Backend::keep_alive_lease(&store, lease)),
    )
    .await;
    let elapsed = started.elapsed();
    server.resume();
    assert!(elapsed < REQUEST_TIMEOUT + SLACK, "took {elapsed:?}");
    for result in &results {
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    }

    for &lease in &leases {
        assert_eq!(
            keep_alive_retrying(&store, lease).await,
            Duration::from_secs(60)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_stays_alive_while_each_member_in_turn_is_killed_and_restarted() {
    let mut cluster = EtcdCluster::start().unwrap();
    let store = connect(cluster.addresses()).await;
    // Kept alive every 3 s by its handle, on the same shared stream as the calls below.
    let lease = Store::grant_lease(&store, Duration::from_secs(10))
        .await
        .unwrap();
    let leases = grant(&store, 20, Duration::from_secs(60)).await;
    for member in 0..3 {
        for &lease in &leases {
            keep_alive_retrying(&store, lease).await;
        }
        // The stream is on some member: killing each in turn kills it once.
        cluster.kill(member);
        for &lease in &leases {
            assert_eq!(
                keep_alive_retrying(&store, lease).await,
                Duration::from_secs(60)
            );
        }
        cluster.restart(member).unwrap();
    }
    assert_eq!(keep_alive_retrying(&store, lease.id()).await, lease.ttl());
    assert_eq!(lease.loss(), None, "the lease was never lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_after_close_is_closed() {
    let server = EtcdServer::start().unwrap();
    let store = connect(vec![server.address()]).await;
    let lease = Backend::grant_lease(&store, Duration::from_secs(60))
        .await
        .unwrap()
        .id;
    Backend::keep_alive_lease(&store, lease).await.unwrap();
    Backend::close(&store).await.unwrap();
    let after = Backend::keep_alive_lease(&store, lease).await;
    assert!(matches!(after, Err(Error::Closed { .. })), "{after:?}");
}
