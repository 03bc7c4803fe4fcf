//! Active health checks: [`ActiveHealth`], [`HealthCheck`], [`TcpCheck`], [`GrpcHealthCheck`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use tokio_util::task::AbortOnDropHandle;

use crate::instance::{Instance, Status};
use crate::outlier::OutlierDetector;
use crate::set::InstanceReader;

/// Default [`ActiveHealthOptions::interval`].
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`ActiveHealthOptions::timeout`].
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// One kind of probe of an instance.
pub trait HealthCheck: Send + Sync + 'static {
    /// Whether `instance` passes now. A check that does not answer within
    /// [`ActiveHealthOptions::timeout`] fails.
    fn check(&self, instance: &Instance) -> BoxFuture<'static, bool>;
}

/// Passes when a TCP connection to the instance's address can be made.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check(&self, instance: &Instance) -> BoxFuture<'static, bool> {
        let address = instance.address.clone();
        Box::pin(async move { tokio::net::TcpStream::connect(address).await.is_ok() })
    }
}

/// How [`ActiveHealth`] checks. `Default`: every [`DEFAULT_CHECK_INTERVAL`], each check
/// within [`DEFAULT_CHECK_TIMEOUT`], failing after 2 failures in a row, passing again
/// after 2 successes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActiveHealthOptions {
    /// Time between two checks of an instance.
    pub interval: Duration,
    /// How long a check may take.
    pub timeout: Duration,
    /// Consecutive failed checks that make a passing instance failing (at least 1).
    pub failures_before_failing: u32,
    /// Consecutive passed checks that make a failing instance passing (at least 1).
    pub successes_before_passing: u32,
}

impl Default for ActiveHealthOptions {
    fn default() -> Self {
        ActiveHealthOptions {
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            failures_before_failing: 2,
            successes_before_passing: 2,
        }
    }
}

/// The hysteresis of one instance's checks.
#[derive(Debug)]
struct Verdicts {
    address: String,
    failing: bool,
    /// The current run of results that disagree with `failing`.
    run: u32,
}

/// Checks the `Up` instances of a service in the background, reporting to an
/// [`crate::OutlierDetector`]. Dropping it stops the
/// checks; the detector keeps their last verdicts until the instances leave the set.
///
/// Active health checks: a consumer probes each `Up` instance of a service on its own
/// schedule — a TCP connect ([`TcpCheck`]), `grpc.health.v1` ([`GrpcHealthCheck`],
/// feature `tonic`), or any [`HealthCheck`] of yours (an HTTP path) — and keeps
/// instances that fail their checks out of its pick set, as Envoy's active health
/// checks do. Passive ejection ([`crate::OutlierDetector`]) reacts to requests;
/// active checks also find an instance that fails while no request goes to it.
///
/// Checks have hysteresis (Envoy's `unhealthy_threshold` / `healthy_threshold`, Consul's
/// `FailuresBeforeCritical`): an instance is *failing* after
/// [`ActiveHealthOptions::failures_before_failing`] checks in a row fail, and *passing*
/// again after [`ActiveHealthOptions::successes_before_passing`] in a row pass. A new
/// instance passes until its checks say otherwise. The verdicts go to an
/// [`crate::OutlierDetector`]: failing instances are not pickable, within the same cap
/// as ejection — never more than `max_ejected_share` of the `Up` instances are kept
/// out, ejected and failing together, so when too many fail the rest are picked all the
/// same (Envoy's panic threshold: all failing still serve).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> kvstore_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use kvstore_discovery::{ActiveHealth, ActiveHealthOptions, Discovery, Instance, OutlierDetector, OutlierOptions, Registrar, TcpCheck};
///
/// let store: Arc<dyn kvstore_core::Store> = Arc::new(kvstore_memory::MemoryStore::new());
/// let _echo = Registrar::new(store.clone())
///     .register(Instance::new("echo", "echo-1", "127.0.0.1:9"), Duration::from_secs(10))
///     .await?;
/// let set = Discovery::new(store).watch("echo").await?;
/// let detector = OutlierDetector::new(set.reader(), OutlierOptions::default());
/// // Probes every instance with a TCP connect each second while `_checks` lives.
/// let _checks = ActiveHealth::start(set.reader(), detector.clone(), TcpCheck, ActiveHealthOptions::default());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ActiveHealth {
    _task: AbortOnDropHandle<()>,
}

impl ActiveHealth {
    /// Check every `Up` instance `reader` reads with `check`, as `options` say, and
    /// report each change of verdict to `detector`.
    pub fn start<C: HealthCheck>(
        reader: InstanceReader,
        detector: OutlierDetector,
        check: C,
        options: ActiveHealthOptions,
    ) -> ActiveHealth {
        let task = tokio::spawn(run(reader, detector, check, options));
        ActiveHealth {
            _task: AbortOnDropHandle::new(task),
        }
    }
}

async fn run<C: HealthCheck>(
    reader: InstanceReader,
    detector: OutlierDetector,
    check: C,
    options: ActiveHealthOptions,
) {
    let interval = options.interval.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut verdicts: HashMap<String, Verdicts> = HashMap::new();
    loop {
        ticks.tick().await;
        let up: Vec<Arc<Instance>> = reader
            .instances()
            .into_iter()
            .filter(|i| i.status == Status::Up)
            .collect();
        verdicts.retain(|id, _| up.iter().any(|i| &i.id == id));
        let results = join_all(up.iter().map(|instance| {
            let probe = check.check(instance);
            async move {
                tokio::time::timeout(options.timeout, probe)
                    .await
                    .unwrap_or(false)
            }
        }))
        .await;
        for (instance, passed) in up.iter().zip(results) {
            // A verdict starts from what the detector holds, so an instance that left
            // `Up` while failing (or a checker started anew) can pass again.
            let fresh = || Verdicts {
                address: instance.address.clone(),
                failing: detector.is_check_failing(instance),
                run: 0,
            };
            let verdict = verdicts.entry(instance.id.clone()).or_insert_with(fresh);
            if verdict.address != instance.address {
                *verdict = fresh();
            }
            if passed != verdict.failing {
                // Agrees with the verdict: the run against it is over.
                verdict.run = 0;
                continue;
            }
            verdict.run += 1;
            let needed = if verdict.failing {
                options.successes_before_passing
            } else {
                options.failures_before_failing
            };
            if verdict.run >= needed.max(1) {
                verdict.failing = !verdict.failing;
                verdict.run = 0;
                tracing::info!(instance = %instance.id, failing = verdict.failing, "active health check verdict changed");
                detector.set_check_failing(instance, verdict.failing);
            }
        }
    }
}

/// Passes when the instance answers `SERVING` on `grpc.health.v1` for `service`
/// (`""`: the server as a whole), over a plaintext connection to `http://{address}`
/// (feature `tonic`; the `tonic-health` crate's client).
#[cfg(feature = "tonic")]
#[derive(Clone, Debug, Default)]
pub struct GrpcHealthCheck {
    service: String,
}

#[cfg(feature = "tonic")]
impl GrpcHealthCheck {
    /// Check `service` (a fully qualified gRPC service name, or `""` for the server).
    pub fn new(service: impl Into<String>) -> GrpcHealthCheck {
        GrpcHealthCheck {
            service: service.into(),
        }
    }
}

#[cfg(feature = "tonic")]
impl HealthCheck for GrpcHealthCheck {
    fn check(&self, instance: &Instance) -> BoxFuture<'static, bool> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let endpoint = crate::http_endpoint(instance);
        let service = self.service.clone();
        Box::pin(async move {
            let Some(endpoint) = endpoint else {
                return false;
            };
            let Ok(channel) = endpoint.connect().await else {
                return false;
            };
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest { service })
                .await;
            answer.is_ok_and(|reply| reply.into_inner().status == ServingStatus::Serving as i32)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovery, OutlierOptions, Registrar};
    use kvstore_core::Store;

    /// Fails for the ids in its list.
    struct Switch(Arc<std::sync::Mutex<Vec<String>>>);

    impl HealthCheck for Switch {
        fn check(&self, instance: &Instance) -> BoxFuture<'static, bool> {
            let failing = self.0.lock().unwrap().contains(&instance.id);
            Box::pin(async move { !failing })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_checks_take_an_instance_out_after_the_threshold_and_passing_ones_bring_it_back()
     {
        let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
        let registrar = Registrar::new(store.clone());
        let ttl = Duration::from_secs(600);
        let mut registrations = Vec::new();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
            registrations.push(
                registrar
                    .register(Instance::new("svc", id, format!("127.0.0.1:{port}")), ttl)
                    .await
                    .unwrap(),
            );
        }
        let set = Discovery::new(store).watch("svc").await.unwrap();
        let detector = OutlierDetector::new(set.reader(), OutlierOptions::default());
        let failing = Arc::new(std::sync::Mutex::new(vec!["b".to_owned()]));
        let _checks = ActiveHealth::start(
            set.reader(),
            detector.clone(),
            Switch(failing.clone()),
            ActiveHealthOptions::default(),
        );
        let pickable = |detector: &OutlierDetector| -> Vec<String> {
            detector
                .pickable(&set.instances())
                .iter()
                .map(|i| i.id.clone())
                .collect()
        };
        // The first check runs at once, the second a second later: failing after two.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pickable(&detector), ["a", "b", "c"]);
        tokio::time::sleep(DEFAULT_CHECK_INTERVAL).await;
        assert_eq!(pickable(&detector), ["a", "c"]);

        // Two of three failing: the cap keeps only one out.
        failing.lock().unwrap().push("c".to_owned());
        tokio::time::sleep(DEFAULT_CHECK_INTERVAL * 2).await;
        assert_eq!(detector.check_failing(), ["b", "c"]);
        assert_eq!(pickable(&detector).len(), 2, "the cap");

        failing.lock().unwrap().clear();
        tokio::time::sleep(DEFAULT_CHECK_INTERVAL * 2).await;
        assert_eq!(pickable(&detector), ["a", "b", "c"]);
        assert!(detector.check_failing().is_empty());
    }

    #[tokio::test]
    async fn the_tcp_check_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = Instance::new("svc", "open", listener.local_addr().unwrap().to_string());
        assert!(TcpCheck.check(&open).await);
        let closed_port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let closed = Instance::new("svc", "closed", format!("127.0.0.1:{closed_port}"));
        assert!(!TcpCheck.check(&closed).await);
    }

    #[cfg(feature = "tonic")]
    #[tokio::test]
    async fn the_grpc_check_follows_the_servers_grpc_health_v1_status() {
        use tonic_health::ServingStatus;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("echo", ServingStatus::Serving)
            .await;
        let _server = AbortOnDropHandle::new(tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        ));
        let instance = Instance::new("svc", "g", address);
        assert!(GrpcHealthCheck::new("echo").check(&instance).await);
        assert!(
            !GrpcHealthCheck::new("unknown").check(&instance).await,
            "NOT_FOUND is not SERVING"
        );
        reporter
            .set_service_status("echo", ServingStatus::NotServing)
            .await;
        assert!(!GrpcHealthCheck::new("echo").check(&instance).await);
    }
}
