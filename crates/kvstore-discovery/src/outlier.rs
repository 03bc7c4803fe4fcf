//! Outlier ejection (passive health): [`OutlierDetector`] and [`SkipEjected`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::balancer::Balancer;
use crate::instance::{Instance, Status};
use crate::set::InstanceReader;

/// Default [`OutlierOptions::base_ejection_time`].
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(5);
/// Default [`OutlierOptions::max_ejection_time`] (Envoy's default).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Default [`OutlierOptions::max_ejected_share`].
pub const DEFAULT_MAX_EJECTED_SHARE: f64 = 0.5;
/// The longest ejection whatever the options say (a year: `Instant` arithmetic
/// cannot overflow).
const LONGEST_EJECTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How one attempt to use an instance failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The connection was refused or could not be made (no listener, connect timeout):
    /// the request never reached the instance, so it is safe to send again anywhere.
    Refused,
    /// The connection broke while the request was in flight (reset, closed early): the
    /// request may have been applied.
    Reset,
    /// No answer within the per-try timeout: the instance hangs, or the network to it
    /// is silent. The request may have been applied.
    Timeout,
    /// The instance answered with a retryable error (HTTP 5xx, gRPC `UNAVAILABLE`).
    Error,
}

impl Failure {
    /// Whether the request certainly never reached the instance (so it may be sent
    /// again even when it is not idempotent).
    pub fn never_sent(self) -> bool {
        self == Failure::Refused
    }

    /// The failure's name in snake case (`"refused"`, `"reset"`, `"timeout"`,
    /// `"error"`), for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Error => "error",
        }
    }
}

/// The outcome of one attempt to use an instance, as reported to an
/// [`OutlierDetector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (any answer that is not a retryable error).
    Success,
    /// It failed, in this way.
    Failed(Failure),
}

/// How an [`OutlierDetector`] ejects. `Default` is the table in the
/// [`OutlierDetector`]; [`OutlierOptions::disabled`] never ejects.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierOptions {
    /// Consecutive [`Failure::Refused`] that eject (0: never for this kind). Default 1.
    pub consecutive_refused: u32,
    /// Consecutive [`Failure::Reset`] that eject (0: never). Default 1.
    pub consecutive_resets: u32,
    /// Consecutive [`Failure::Timeout`] that eject (0: never). Default 2.
    pub consecutive_timeouts: u32,
    /// Consecutive [`Failure::Error`] answers (5xx, `UNAVAILABLE`) that eject (0:
    /// never). Default 5, as Envoy's `consecutive_5xx`.
    pub consecutive_errors: u32,
    /// The first ejection's length; the n-th lasts n times this. Default
    /// [`DEFAULT_BASE_EJECTION_TIME`] (5 s).
    pub base_ejection_time: Duration,
    /// The longest ejection. Default [`DEFAULT_MAX_EJECTION_TIME`] (300 s).
    pub max_ejection_time: Duration,
    /// The largest share of the set's `Up` instances ejected at once, between 0 and 1;
    /// at least one instance may be ejected while two or more are `Up`, and the last
    /// `Up` instance never is. Default [`DEFAULT_MAX_EJECTED_SHARE`] (0.5).
    pub max_ejected_share: f64,
}

impl Default for OutlierOptions {
    fn default() -> Self {
        OutlierOptions {
            consecutive_refused: 1,
            consecutive_resets: 1,
            consecutive_timeouts: 2,
            consecutive_errors: 5,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejected_share: DEFAULT_MAX_EJECTED_SHARE,
        }
    }
}

impl OutlierOptions {
    /// Never eject: every failure is ignored (the behaviour without outlier ejection,
    /// e.g. as a benchmark's baseline).
    pub fn disabled() -> OutlierOptions {
        OutlierOptions {
            consecutive_refused: 0,
            consecutive_resets: 0,
            consecutive_timeouts: 0,
            consecutive_errors: 0,
            ..OutlierOptions::default()
        }
    }

    /// The run of consecutive `failure`s that ejects (0: never).
    fn run_for(&self, failure: Failure) -> u32 {
        match failure {
            Failure::Refused => self.consecutive_refused,
            Failure::Reset => self.consecutive_resets,
            Failure::Timeout => self.consecutive_timeouts,
            Failure::Error => self.consecutive_errors,
        }
    }

    /// How many of `up` instances may be ejected at once.
    fn cap(&self, up: usize) -> usize {
        if up < 2 {
            return 0;
        }
        let share = self.max_ejected_share.clamp(0.0, 1.0);
        // Truncation is the intent: a share of 0.5 of 3 instances is 1.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let by_share = (share * up as f64).floor() as usize;
        by_share.clamp(1, up - 1)
    }
}

/// What the detector knows of one instance.
#[derive(Debug)]
struct Record {
    /// The address the counts are about; another address starts afresh.
    address: String,
    /// The kind of the current run of failures, and its length.
    run: Option<(Failure, u32)>,
    /// Ejections so far, less the decay for time served since.
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Back from an ejection and not yet proven: the next failure ejects again.
    probation: bool,
    /// When the last ejection ended (for the count's decay).
    returned_at: Option<Instant>,
    /// Failing its active health checks ([`crate::ActiveHealth`]).
    check_failing: bool,
}

impl Record {
    fn new(address: &str) -> Record {
        Record {
            address: address.to_owned(),
            run: None,
            ejections: 0,
            ejected_until: None,
            probation: false,
            returned_at: None,
            check_failing: false,
        }
    }

    /// End an ejection that has run out (the instance is then on probation).
    fn settle(&mut self, now: Instant) {
        if let Some(until) = self.ejected_until
            && now >= until
        {
            self.ejected_until = None;
            self.probation = true;
            self.returned_at = Some(until);
        }
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

#[derive(Debug)]
struct State {
    records: HashMap<String, Record>,
    /// The set's version the records were last pruned against.
    pruned: Option<u64>,
}

struct Shared {
    reader: Option<InstanceReader>,
    options: OutlierOptions,
    state: Mutex<State>,
    /// Bumped on every ejection and return, for whoever keeps a pick set.
    changes: watch::Sender<u64>,
}

/// Ejects failing instances of one service from a consumer's pick set; cheap to clone
/// (clones share their state).
///
/// Outlier ejection (passive health): instances that fail requests leave a consumer's
/// pick set at once, for a time that grows with each ejection, and come back on
/// probation (Envoy's outlier detection, gRPC-Go's "pick only READY connections").
///
/// The registry says who exists; it cannot say who answers. A provider that crashed
/// stays listed until its lease runs out (its TTL), and one that hangs stays listed for
/// as long as its heartbeat goes on. An [`OutlierDetector`] closes that window on the
/// consumer's side: whoever sends requests reports each attempt's [`Outcome`], and the
/// detector ejects an instance after [`OutlierOptions`]' run of consecutive failures of
/// one kind:
///
/// | failure | what it is | default run |
/// |---|---|---|
/// | [`Failure::Refused`] | the connection was refused or could not be made: the request never reached the instance | 1 |
/// | [`Failure::Reset`] | the connection broke during the request | 1 |
/// | [`Failure::Timeout`] | no answer within the per-try timeout (a hung or blackholed instance) | 2 |
/// | [`Failure::Error`] | a retryable error answer: HTTP 5xx, gRPC `UNAVAILABLE` | 5 |
///
/// An ejection lasts [`OutlierOptions::base_ejection_time`] × the instance's ejection
/// count, capped at [`OutlierOptions::max_ejection_time`]; the count falls by one for
/// every `base_ejection_time` the instance then serves without being ejected (Envoy's
/// ejection multiplier). When an ejection ends the instance is back *on probation*:
/// its first failure of any kind ejects it again, its first success ends probation.
///
/// **The cap.** Ejection, and failing active health checks ([`crate::ActiveHealth`])
/// with it, never keep more than [`OutlierOptions::max_ejected_share`] of the set's `Up`
/// instances out of the pick set (at least one while two or more are `Up`, never the
/// last one): when every instance fails, most keep serving rather than nothing, as
/// Envoy's `max_ejection_percent` and panic threshold and Nacos's protect threshold
/// intend. Keep the share at most
/// `1 − protect_threshold` ([`crate::DiscoveryOptions::protect_threshold`]) so the
/// pick set is protected as much as the registry's set.
///
/// The detector follows one service's set ([`OutlierDetector::new`] takes its
/// [`InstanceReader`]): it counts the `Up` instances for the cap, forgets instances
/// that leave the set, starts afresh for an instance whose address changed (a
/// restarted provider), and ignores late reports about the old address. It runs on tokio's clock, so tests on a paused clock see
/// ejections end. It is used by [`crate::Upstreams`] (feature `tower`, with the HTTP
/// gateway and the gRPC channel built on it), by [`crate::ServiceDiscover::with_outlier_detection`]
/// (tower's balancers, tonic's balanced channel), and by [`SkipEjected`] for the
/// [`crate::Balancer`]s.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> kvstore_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use kvstore_discovery::{Discovery, Failure, Instance, OutlierDetector, OutlierOptions, Outcome, Registrar};
///
/// let store: Arc<dyn kvstore_core::Store> = Arc::new(kvstore_memory::MemoryStore::new());
/// let registrar = Registrar::new(store.clone());
/// let _a = registrar.register(Instance::new("echo", "a", "127.0.0.1:9001"), Duration::from_secs(10)).await?;
/// let _b = registrar.register(Instance::new("echo", "b", "127.0.0.1:9002"), Duration::from_secs(10)).await?;
/// let set = Discovery::new(store).watch("echo").await?;
/// let detector = OutlierDetector::new(set.reader(), OutlierOptions::default());
///
/// let a = set.instances()[0].clone();
/// detector.record(&a, Outcome::Failed(Failure::Refused)); // connection refused: out at once
/// assert!(detector.is_ejected(&a.id));
/// tokio::time::sleep(OutlierOptions::default().base_ejection_time).await;
/// assert!(!detector.is_ejected(&a.id)); // back, on probation
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OutlierDetector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OutlierDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutlierDetector")
            .field("options", &self.shared.options)
            .field("ejected", &self.ejected())
            .finish_non_exhaustive()
    }
}

impl OutlierDetector {
    /// A detector for the set `reader` reads (its `Up` instances are what the cap is a
    /// share of).
    pub fn new(reader: InstanceReader, options: OutlierOptions) -> OutlierDetector {
        OutlierDetector::build(Some(reader), options)
    }

    /// A detector that never ejects ([`OutlierOptions::disabled`]) and follows no set.
    pub fn disabled() -> OutlierDetector {
        OutlierDetector::build(None, OutlierOptions::disabled())
    }

    fn build(reader: Option<InstanceReader>, options: OutlierOptions) -> OutlierDetector {
        OutlierDetector {
            shared: Arc::new(Shared {
                reader,
                options,
                state: Mutex::new(State {
                    records: HashMap::new(),
                    pruned: None,
                }),
                changes: watch::channel(0).0,
            }),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &OutlierOptions {
        &self.shared.options
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, with the records of instances that left the followed set forgotten.
    fn pruned_state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state();
        if let Some(reader) = &self.shared.reader {
            let version = reader.version();
            if state.pruned != Some(version) {
                let instances = reader.instances();
                state
                    .records
                    .retain(|id, _| instances.iter().any(|i| &i.id == id));
                state.pruned = Some(version);
            }
        }
        state
    }

    /// The address the followed set has for `id` now (`None`: not in the set, or no set
    /// followed).
    fn current_address(&self, id: &str) -> Option<String> {
        let reader = self.shared.reader.as_ref()?;
        reader
            .instances()
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.address.clone())
    }

    /// Report the outcome of one attempt to use `instance`. Returns whether this report
    /// ejected it. A report about an address the set no longer has for the instance (a
    /// try sent before a restart) changes nothing.
    pub fn record(&self, instance: &Instance, outcome: Outcome) -> bool {
        let now = Instant::now();
        let options = &self.shared.options;
        let mut state = self.pruned_state();
        let known = state.records.get(&instance.id).map(|r| r.address.clone());
        if known.as_deref() != Some(instance.address.as_str()) {
            // A first report, or one about another address: it counts only for the
            // address the set has now (a restarted provider starts afresh; a try sent
            // to its old address before the restart changes nothing).
            drop(state);
            let current = self.current_address(&instance.id);
            if self.shared.reader.is_some() && current.as_deref() != Some(&instance.address) {
                return false;
            }
            state = self.pruned_state();
            state
                .records
                .insert(instance.id.clone(), Record::new(&instance.address));
        }
        let record = state
            .records
            .entry(instance.id.clone())
            .or_insert_with(|| Record::new(&instance.address));
        record.settle(now);
        let failure = match outcome {
            Outcome::Success => {
                record.run = None;
                record.probation = false;
                return false;
            }
            Outcome::Failed(failure) => failure,
        };
        if record.is_ejected(now) {
            // Late answers of requests sent before the ejection change nothing.
            return false;
        }
        let run = match record.run {
            Some((kind, n)) if kind == failure => n.saturating_add(1),
            _ => 1,
        };
        record.run = Some((failure, run));
        let threshold = options.run_for(failure);
        if threshold == 0 || (run < threshold && !record.probation) {
            return false;
        }
        let up = self.up_instances();
        let ejected = up
            .iter()
            .filter(|i| {
                state
                    .records
                    .get(&i.id)
                    .is_some_and(|r| r.address == i.address && r.is_ejected(now))
            })
            .count();
        if ejected >= options.cap(up.len()) {
            tracing::debug!(instance = %instance.id, ejected, "not ejected: the cap is reached");
            return false;
        }
        let Some(record) = state.records.get_mut(&instance.id) else {
            return false;
        };
        let served = record
            .returned_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let decay = served.as_nanos() / options.base_ejection_time.as_nanos().max(1);
        record.ejections = record
            .ejections
            .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX))
            .saturating_add(1);
        let length = options
            .base_ejection_time
            .saturating_mul(record.ejections)
            .min(options.max_ejection_time)
            .min(LONGEST_EJECTION);
        record.ejected_until = Some(now + length);
        record.run = None;
        record.probation = false;
        tracing::warn!(
            instance = %instance.id,
            address = %instance.address,
            failure = failure.kind(),
            ejections = record.ejections,
            ?length,
            "instance ejected from the pick set"
        );
        metrics::counter!("kvstore_outlier_ejections_total", "service" => instance.service.clone(), "failure" => failure.kind())
            .increment(1);
        drop(state);
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// The `Up` instances of the followed set.
    fn up_instances(&self) -> Vec<Arc<Instance>> {
        self.shared.reader.as_ref().map_or_else(Vec::new, |reader| {
            reader
                .instances()
                .into_iter()
                .filter(|i| i.status == Status::Up)
                .collect()
        })
    }

    /// Whether instance `id` is ejected now.
    pub fn is_ejected(&self, id: &str) -> bool {
        let now = Instant::now();
        self.pruned_state()
            .records
            .get(id)
            .is_some_and(|record| record.is_ejected(now))
    }

    /// The ids of the instances ejected now, sorted.
    pub fn ejected(&self) -> Vec<String> {
        let now = Instant::now();
        let mut ids: Vec<String> = self
            .pruned_state()
            .records
            .iter()
            .filter(|(_, record)| record.is_ejected(now))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// When the next ejection ends, if any instance is ejected.
    pub fn next_return(&self) -> Option<Instant> {
        let now = Instant::now();
        self.pruned_state()
            .records
            .values()
            .filter_map(|record| record.ejected_until.filter(|until| *until > now))
            .min()
    }

    /// A receiver whose value changes with every ejection (returns are told by
    /// [`OutlierDetector::next_return`]), for a pick set kept elsewhere.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Record the verdict of `instance`'s active health checks
    /// ([`crate::ActiveHealth`]): while failing it is not pickable (within the cap, see
    /// [`OutlierDetector::pickable`]).
    pub fn set_check_failing(&self, instance: &Instance, failing: bool) {
        let mut state = self.pruned_state();
        let record = state
            .records
            .entry(instance.id.clone())
            .or_insert_with(|| Record::new(&instance.address));
        if record.address != instance.address {
            *record = Record::new(&instance.address);
        }
        if record.check_failing != failing {
            record.check_failing = failing;
            drop(state);
            self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether `instance` (at its address) is failing its active health checks.
    pub(crate) fn is_check_failing(&self, instance: &Instance) -> bool {
        self.state()
            .records
            .get(&instance.id)
            .is_some_and(|r| r.address == instance.address && r.check_failing)
    }

    /// The ids of the instances failing their active health checks, sorted.
    pub fn check_failing(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .pruned_state()
            .records
            .iter()
            .filter(|(_, record)| record.check_failing)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The instances of `instances` that may be picked: the `Up` ones, less those
    /// ejected and those failing their active health checks — but never more than
    /// [`OutlierOptions::max_ejected_share`] of the `Up` instances are kept out (at
    /// least one while two or more are `Up`, never the last): ejected ones are kept out
    /// first (those ejected last first), then failing ones, while the cap allows; the
    /// rest are picked all the same (Envoy's panic threshold: rather all than too few).
    pub fn pickable(&self, instances: &[Arc<Instance>]) -> Vec<Arc<Instance>> {
        let now = Instant::now();
        let state = self.pruned_state();
        let up: Vec<&Arc<Instance>> = instances
            .iter()
            .filter(|i| i.status == Status::Up)
            .collect();
        let record = |i: &Instance| {
            state
                .records
                .get(&i.id)
                .filter(|record| record.address == i.address)
        };
        let mut ejected: Vec<(Instant, &str)> = up
            .iter()
            .filter_map(|i| {
                record(i)
                    .and_then(|r| r.ejected_until.filter(|until| *until > now))
                    .map(|until| (until, i.id.as_str()))
            })
            .collect();
        ejected.sort_by(|a, b| b.cmp(a));
        let failing = up
            .iter()
            .filter(|i| record(i).is_some_and(|r| r.check_failing))
            .map(|i| i.id.as_str());
        let mut out: Vec<&str> = Vec::new();
        for id in ejected.iter().map(|(_, id)| *id).chain(failing) {
            if out.len() >= self.shared.options.cap(up.len()) {
                break;
            }
            if !out.contains(&id) {
                out.push(id);
            }
        }
        up.into_iter()
            .filter(|i| !out.contains(&i.id.as_str()))
            .cloned()
            .collect()
    }
}

/// A [`Balancer`] that skips ejected instances: picks with `inner` among the instances
/// an [`OutlierDetector`] does not eject.
#[derive(Debug)]
pub struct SkipEjected<B> {
    inner: B,
    detector: OutlierDetector,
}

impl<B: Balancer> SkipEjected<B> {
    /// Pick with `inner` among the instances `detector` does not eject.
    pub fn new(inner: B, detector: OutlierDetector) -> SkipEjected<B> {
        SkipEjected { inner, detector }
    }
}

impl<B: Balancer> Balancer for SkipEjected<B> {
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>> {
        let pickable = self.detector.pickable(instances);
        let chosen = self.inner.pick(&pickable)?;
        instances.iter().find(|i| Arc::ptr_eq(i, chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovery, Registrar, Registration};
    use kvstore_core::Store;

    const TTL: Duration = Duration::from_secs(60);

    /// Three registered instances and a detector following their set.
    async fn three(
        options: OutlierOptions,
    ) -> (
        Arc<dyn Store>,
        Vec<Registration>,
        crate::InstanceSet,
        OutlierDetector,
        Vec<Arc<Instance>>,
    ) {
        let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
        let registrar = Registrar::new(store.clone());
        let mut registrations = Vec::new();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
            registrations.push(
                registrar
                    .register(Instance::new("svc", id, format!("127.0.0.1:{port}")), TTL)
                    .await
                    .unwrap(),
            );
        }
        let set = Discovery::new(store.clone()).watch("svc").await.unwrap();
        let detector = OutlierDetector::new(set.reader(), options);
        let instances = set.instances();
        assert_eq!(instances.len(), 3);
        (store, registrations, set, detector, instances)
    }

    fn fail(detector: &OutlierDetector, instance: &Instance, failure: Failure, times: u32) {
        for _ in 0..times {
            detector.record(instance, Outcome::Failed(failure));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_ejects_at_once_and_the_ejection_ends_after_the_base_time() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        assert!(detector.record(&instances[0], Outcome::Failed(Failure::Refused)));
        assert_eq!(detector.ejected(), ["a"]);
        let pickable: Vec<_> = detector
            .pickable(&instances)
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(pickable, ["b", "c"]);
        tokio::time::sleep(DEFAULT_BASE_EJECTION_TIME - Duration::from_millis(1)).await;
        assert!(detector.is_ejected("a"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!detector.is_ejected("a"));
        assert_eq!(detector.pickable(&instances).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_eject_only_after_their_run_and_a_success_breaks_the_run() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        fail(&detector, &instances[1], Failure::Error, 4);
        assert!(!detector.is_ejected("b"));
        detector.record(&instances[1], Outcome::Success);
        fail(&detector, &instances[1], Failure::Error, 4);
        assert!(!detector.is_ejected("b"), "the success started a new run");
        fail(&detector, &instances[1], Failure::Error, 1);
        assert!(detector.is_ejected("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_counts_one_kind_of_failure() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        fail(&detector, &instances[0], Failure::Timeout, 1);
        fail(&detector, &instances[0], Failure::Error, 1);
        fail(&detector, &instances[0], Failure::Timeout, 1);
        assert!(!detector.is_ejected("a"));
        fail(&detector, &instances[0], Failure::Timeout, 1);
        assert!(detector.is_ejected("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer_up_to_the_cap_on_ejection_time() {
        let options = OutlierOptions {
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            ..OutlierOptions::default()
        };
        let (_store, _r, _set, detector, instances) = three(options).await;
        let a = &instances[0];
        for expected in [10, 20, 25, 25] {
            assert!(detector.record(a, Outcome::Failed(Failure::Refused)));
            let length = detector.next_return().unwrap() - Instant::now();
            assert_eq!(length, Duration::from_secs(expected));
            tokio::time::sleep(length).await;
            assert!(!detector.is_ejected("a"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn on_probation_one_failure_ejects_again_and_one_success_ends_probation() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        let b = &instances[1];
        fail(&detector, b, Failure::Error, 5);
        assert!(detector.is_ejected("b"));
        tokio::time::sleep(DEFAULT_BASE_EJECTION_TIME).await;
        assert!(!detector.is_ejected("b"));
        assert!(
            detector.record(b, Outcome::Failed(Failure::Error)),
            "a failure on probation ejects at once"
        );
        tokio::time::sleep(DEFAULT_BASE_EJECTION_TIME * 2).await;
        detector.record(b, Outcome::Success);
        fail(&detector, b, Failure::Error, 4);
        assert!(
            !detector.is_ejected("b"),
            "after a success the run starts from zero"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejection_count_decays_while_the_instance_serves() {
        let options = OutlierOptions {
            base_ejection_time: Duration::from_secs(10),
            ..OutlierOptions::default()
        };
        let (_store, _r, _set, detector, instances) = three(options).await;
        let a = &instances[0];
        detector.record(a, Outcome::Failed(Failure::Refused));
        tokio::time::sleep(Duration::from_secs(10)).await;
        detector.record(a, Outcome::Failed(Failure::Refused));
        tokio::time::sleep(Duration::from_secs(20)).await;
        detector.record(a, Outcome::Success);
        // Two ejections, then 30 s served: the count is back to zero.
        tokio::time::sleep(Duration::from_secs(30)).await;
        detector.record(a, Outcome::Failed(Failure::Refused));
        assert_eq!(
            detector.next_return().unwrap() - Instant::now(),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_stops_at_the_share_of_up_instances_and_never_takes_the_last() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        for instance in &instances {
            fail(&detector, instance, Failure::Error, 10);
        }
        assert_eq!(detector.ejected(), ["a"], "a share of 0.5 of three is one");
        assert_eq!(detector.pickable(&instances).len(), 2);

        let everything = OutlierOptions {
            max_ejected_share: 1.0,
            ..OutlierOptions::default()
        };
        let (_store, _r, _set, detector, instances) = three(everything).await;
        for instance in &instances {
            fail(&detector, instance, Failure::Refused, 1);
        }
        assert_eq!(detector.ejected(), ["a", "b"], "the last Up instance stays");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_instance_starts_afresh_and_late_reports_about_its_old_address_are_ignored()
    {
        let (store, mut registrations, mut set, detector, instances) =
            three(OutlierOptions::default()).await;
        let old = instances[0].clone();
        detector.record(&old, Outcome::Failed(Failure::Refused));
        assert!(detector.is_ejected("a"));
        // The provider restarts on another port under the same id.
        registrations.remove(0).deregister().await.unwrap();
        while set.instances().iter().any(|i| i.id == "a") {
            set.next_change().await.unwrap();
        }
        assert!(!detector.is_ejected("a"), "forgotten when it left the set");
        let registrar = Registrar::new(store);
        let _back = registrar
            .register(Instance::new("svc", "a", "127.0.0.1:4"), TTL)
            .await
            .unwrap();
        while !set.instances().iter().any(|i| i.id == "a") {
            set.next_change().await.unwrap();
        }
        let new = set.instances()[0].clone();
        assert_eq!(new.address, "127.0.0.1:4");
        assert!(
            !detector.record(&old, Outcome::Failed(Failure::Refused)),
            "a late report"
        );
        assert!(!detector.is_ejected("a"));
        assert!(detector.record(&new, Outcome::Failed(Failure::Refused)));

        let off = OutlierDetector::disabled();
        fail(&off, &instances[1], Failure::Refused, 100);
        assert!(off.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_and_check_failing_instances_together_stay_within_the_cap() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        detector.set_check_failing(&instances[1], true);
        assert!(detector.record(&instances[0], Outcome::Failed(Failure::Refused)));
        let pickable: Vec<String> = detector
            .pickable(&instances)
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(
            pickable,
            ["b", "c"],
            "one of three kept out: the ejected one"
        );
        let two = &instances[..2];
        assert_eq!(
            detector.pickable(two).len(),
            1,
            "of two, one is kept out and one serves"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn skip_ejected_balances_over_the_rest() {
        let (_store, _r, _set, detector, instances) = three(OutlierOptions::default()).await;
        detector.record(&instances[1], Outcome::Failed(Failure::Reset));
        let balancer = SkipEjected::new(crate::RoundRobin::default(), detector);
        let picked: Vec<&str> = (0..4)
            .map(|_| balancer.pick(&instances).unwrap().id.as_str())
            .collect();
        assert_eq!(picked, ["a", "c", "a", "c"]);
    }
}
