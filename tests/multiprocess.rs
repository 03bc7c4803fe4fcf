//! The register/discover/route scenario across real processes: two `provider` example
//! processes and a `gateway` example process against a real etcd. One provider is
//! killed with SIGKILL (no deregistration); the gateway must stop sending it traffic
//! within TTL + 1 s.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvstore_examples::client::HttpClient;
use kvstore_testsuite::server::{EtcdServer, RedisServer, free_port};

const TTL_SECS: u64 = 2;
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// An example binary built by `cargo test` next to this test's binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = target.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test), which builds the examples",
        path.display()
    );
    path
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start an example and wait for the stdout line starting with `ready`.
fn start(name: &str, args: &[&str], ready: &str) -> (Running, String) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let running = Running(child);
    let (lines, first) = std::sync::mpsc::channel();
    let marker = ready.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("  | {line}");
            if !sent && line.starts_with(&marker) {
                let _ = lines.send(line);
                sent = true;
            }
        }
    });
    let line = first
        .recv_timeout(STEP_TIMEOUT)
        .unwrap_or_else(|_| panic!("{name} did not print {ready:?} within {STEP_TIMEOUT:?}"));
    (running, line)
}

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

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doomed.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = doomed.0.wait();
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
}
