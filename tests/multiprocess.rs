//! The register/discover/route scenario across real processes: two `provider` example
//! processes and a `gateway` example process against a real etcd. One provider is
//! killed with SIGKILL (no deregistration); the gateway must stop sending it traffic
//! within TTL + 1 s.

mod processes;

use std::time::{Duration, Instant};

use kvstore_examples::client::HttpClient;
use kvstore_testkit::server::{EtcdServer, RedisServer, free_port};
use processes::{STEP_TIMEOUT, crash, start};

const TTL_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_the_gateway_stops_routing_to_a_killed_provider_within_ttl_plus_one_second() {
    let etcd = EtcdServer::start().unwrap();
    gateway_stops_routing_to_a_killed_provider(&format!("etcd://{}/multiprocess", etcd.address()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_gateway_stops_routing_to_a_killed_provider_within_ttl_plus_one_second() {
    let redis = RedisServer::start().unwrap();
    gateway_stops_routing_to_a_killed_provider(&format!(
        "{}/0?namespace=multiprocess",
        redis.url()
    ))
    .await;
}

async fn gateway_stops_routing_to_a_killed_provider(store: &str) {
    let store = store.to_owned();
    let ttl = TTL_SECS.to_string();
    let (mut doomed, _) = start(
        "provider",
        &["--store", &store, "--id", "doomed", "--ttl", &ttl],
        "registered",
    );
    let (_survivor, _) = start(
        "provider",
        &["--store", &store, "--id", "survivor", "--ttl", &ttl],
        "registered",
    );
    let gateway_address = format!("127.0.0.1:{}", free_port().unwrap());
    let (_gateway, _) = start(
        "gateway",
        &["--store", &store, "--listen", &gateway_address],
        "gateway listening",
    );
    let url = format!("http://{gateway_address}/");
    let client = HttpClient::default();

    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both providers never answered: {seen:?}"
        );
        if let Ok(reply) = client.get(&url).await
            && reply.status == 200
        {
            seen.extend(reply.served_by);
        }
    }

    crash(&mut doomed);
    let killed_at = Instant::now();
    let bound = Duration::from_secs(TTL_SECS + 1);

    let mut late = Vec::new();
    let mut after_bound = 0;
    while killed_at.elapsed() < bound + Duration::from_secs(2) {
        let sent_at = killed_at.elapsed();
        let reply = client.get(&url).await;
        if sent_at > bound {
            after_bound += 1;
            match reply {
                Ok(reply)
                    if reply.status == 200 && reply.served_by.as_deref() == Some("survivor") => {}
                other => late.push((sent_at, other)),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        after_bound > 10,
        "too few requests after the bound: {after_bound}"
    );
    assert!(
        late.is_empty(),
        "traffic still went wrong after TTL + 1 s: {late:?}"
    );

    // The gateway's own calls to the store, counted and served in Prometheus format.
    let metrics = client
        .get(&format!("http://{gateway_address}/metrics"))
        .await
        .expect("the gateway serves /metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("kvstore_operations_total{")
            && metrics.body.contains("outcome=\"ok\""),
        "{}",
        metrics.body
    );
}
