//! The gRPC scenario across real processes: two `grpc_provider` example processes
//! register with a real etcd (or Redis); this test calls them through a tonic `Channel`
//! balanced by discovery (`InstanceSet::into_balance_channel`), SIGKILLs one mid-run,
//! and requires every call made after the killed provider's TTL (+ 1 s) to succeed.

mod processes;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kvstore_discovery::{Discovery, http_endpoint};
use kvstore_examples::grpc::{EchoClient, EchoRequest};
use kvstore_testsuite::server::{EtcdServer, RedisServer};
use processes::{STEP_TIMEOUT, crash, start};

const TTL_SECS: u64 = 2;
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between calls.
const CALL_INTERVAL: Duration = Duration::from_millis(20);
/// How long calls go on after the bound.
const AFTER_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_no_call_fails_once_the_killed_providers_ttl_has_passed() {
    let etcd = EtcdServer::start().unwrap();
    no_call_fails_after_the_killed_providers_ttl(&format!("etcd://{}/grpc", etcd.address())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_no_call_fails_once_the_killed_providers_ttl_has_passed() {
    let redis = RedisServer::start().unwrap();
    no_call_fails_after_the_killed_providers_ttl(&format!("{}/0?namespace=grpc", redis.url()))
        .await;
}

async fn no_call_fails_after_the_killed_providers_ttl(url: &str) {
    let ttl = TTL_SECS.to_string();
    let (mut doomed, _) = start(
        "grpc_provider",
        &["--store", url, "--id", "doomed", "--ttl", &ttl],
        "registered",
    );
    let (_survivor, _) = start(
        "grpc_provider",
        &["--store", url, "--id", "survivor", "--ttl", &ttl],
        "registered",
    );
    let store = kvstore::open(url).await.unwrap();
    let set = Discovery::new(store).watch("greeter").await.unwrap();
    let (channel, _feed) = set.into_balance_channel(http_endpoint);
    let client = EchoClient::new(channel);
    let call = |message: String| {
        let mut client = client.clone();
        async move {
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.echo(EchoRequest { message }))
                .await
                .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
                .map_err(|status| status.to_string())?;
            Ok::<_, String>(reply.into_inner().served_by)
        }
    };

    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both providers never answered: {seen:?}"
        );
        if let Ok(served_by) = call("warm-up".into()).await {
            seen.insert(served_by);
        }
    }

    crash(&mut doomed);
    let killed_at = Instant::now();
    let bound = Duration::from_secs(TTL_SECS + 1);
    let mut after_bound = 0;
    let mut failed = Vec::new();
    while killed_at.elapsed() < bound + AFTER_BOUND {
        let sent_at = killed_at.elapsed();
        let outcome = call(format!("at {sent_at:?}")).await;
        if sent_at > bound {
            after_bound += 1;
            match outcome {
                Ok(served_by) if served_by == "survivor" => {}
                other => failed.push((sent_at, other)),
            }
        }
        tokio::time::sleep(CALL_INTERVAL).await;
    }
    assert!(
        after_bound > 10,
        "too few calls after the bound: {after_bound}"
    );
    assert!(
        failed.is_empty(),
        "calls failed after TTL + 1 s: {failed:?}"
    );
}
