//! [`Upstreams`]: requests sent to a live instance that can serve them (feature `tower`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::instance::{Instance, Status};
use crate::outlier::{Failure, Outcome, OutlierDetector, OutlierOptions};
use crate::set::InstanceReader;

/// Default [`ServingOptions::attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default [`ServingOptions::per_try_timeout`].
pub const DEFAULT_PER_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`ServingOptions::deadline`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The longest deadline whatever the options say (a day: `Instant` arithmetic cannot
/// overflow).
const LONGEST_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// How many retries a stream of requests may add (tower's [`TpsBudget`], as Linkerd's
/// retry budgets). `Default`: 20 % of requests, plus 10 a second, over 10 s.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// How long a request counts towards the budget, between 1 s and 60 s (clamped).
    pub ttl: Duration,
    /// Retries allowed each second whatever the request rate.
    pub min_per_second: u32,
    /// Retries allowed per request, on top of `min_per_second` (0.2: one retry for five
    /// requests); between 0 and 1000.
    pub ratio: f32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ttl: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

/// How [`Upstreams`] serves requests. `Default`: up to [`DEFAULT_ATTEMPTS`] tries, each
/// within [`DEFAULT_PER_TRY_TIMEOUT`], all within [`DEFAULT_DEADLINE`], under the
/// default [`RetryBudget`], with the default [`OutlierOptions`].
/// [`ServingOptions::baseline`] is one try and no ejection.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServingOptions {
    /// Tries per request in all, the first included (1: no retries).
    pub attempts: u32,
    /// How long one try may take to answer (for HTTP and gRPC: until the response
    /// head). Keep it short enough that a hung instance costs little, long enough for
    /// your slowest answer.
    pub per_try_timeout: Duration,
    /// How long all tries of a request may take together (until the answering try's
    /// response head, as `per_try_timeout`; a body that streams after it is not
    /// bounded here).
    pub deadline: Duration,
    /// How many retries may be added to the request rate.
    pub retry_budget: RetryBudget,
    /// When instances are ejected.
    pub outlier: OutlierOptions,
}

impl Default for ServingOptions {
    fn default() -> Self {
        ServingOptions {
            attempts: DEFAULT_ATTEMPTS,
            per_try_timeout: DEFAULT_PER_TRY_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            retry_budget: RetryBudget::default(),
            outlier: OutlierOptions::default(),
        }
    }
}

impl ServingOptions {
    /// One try per request and no outlier ejection: requests go wherever discovery
    /// says, until it says otherwise (the behaviour before this module; a benchmark
    /// baseline).
    pub fn baseline() -> ServingOptions {
        ServingOptions {
            attempts: 1,
            outlier: OutlierOptions::disabled(),
            ..ServingOptions::default()
        }
    }
}

/// How one try went, as told by the attempt function of [`Upstreams::send`].
#[derive(Debug)]
pub enum Tried<T> {
    /// The instance answered (any answer that is not a retryable error): done.
    Answered(T),
    /// The try failed in this way; with the instance's error answer, if it gave one
    /// (an HTTP 5xx response), passed on when the request is not tried again.
    Failed(Failure, Option<T>),
}

/// Why [`Upstreams::send`] served nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unserved {
    /// No instance of the service is `Up` (or every one was tried already).
    #[error("no instance of {service} can take the request")]
    NoInstance {
        /// The service.
        service: String,
    },
    /// The last try failed (and gave no answer to pass on).
    #[error("{service}: {attempts} tries failed, the last with {}", failure.kind())]
    Failed {
        /// The service.
        service: String,
        /// How the last try failed.
        failure: Failure,
        /// Tries made.
        attempts: u32,
        /// Whether any try may have reached an instance (failed otherwise than
        /// [`Failure::Refused`]), so the request may have been applied.
        reached: bool,
    },
    /// The overall deadline passed.
    #[error("{service}: no answer within the {deadline:?} deadline ({attempts} tries)")]
    DeadlineExceeded {
        /// The service.
        service: String,
        /// The deadline in force.
        deadline: Duration,
        /// Tries made.
        attempts: u32,
    },
}

impl Unserved {
    /// Whether no try reached an instance that could have applied the request: nothing
    /// was up, or every try was refused. An HTTP front end answers 503 then.
    pub fn nothing_reached(&self) -> bool {
        match self {
            Unserved::NoInstance { .. } => true,
            Unserved::Failed { reached, .. } => !reached,
            Unserved::DeadlineExceeded { .. } => false,
        }
    }
}

/// One instance in the pool, with the service made for it.
struct Entry<S> {
    instance: Arc<Instance>,
    service: S,
    in_flight: Arc<AtomicUsize>,
}

struct Pool<S> {
    /// The set's version the pool was built from.
    version: Option<u64>,
    entries: HashMap<String, Entry<S>>,
    /// The set's instances as of `version` (all statuses), for the detector.
    instances: Vec<Arc<Instance>>,
}

type Make<S> = Box<dyn FnMut(&Instance) -> Option<S> + Send>;

struct Inner<S> {
    reader: InstanceReader,
    detector: OutlierDetector,
    options: ServingOptions,
    budget: TpsBudget,
    make: Mutex<Make<S>>,
    pool: Mutex<Pool<S>>,
}

/// The live instances of one service as a pool that serves requests; cheap to clone
/// (clones share the pool, the detector and the budget).
///
/// [`Upstreams`] (feature `tower`): send each request to a live instance that can serve
/// it — picked by the power of two choices over requests in flight, skipping instances
/// that are not `Up` or that an [`OutlierDetector`] ejected, and retried on *another*
/// instance when it fails and may be sent again, under a retry budget, a per-try
/// timeout and an overall deadline (Envoy's retry policy, gRPC-Go's transparent
/// retries; tower's [`TpsBudget`]).
///
/// It knows nothing of the protocol: [`Upstreams::send`] hands the chosen instance (and
/// the service made for it) to your attempt function, which sends the request and says
/// how it went as a [`Tried`]. The HTTP gateway of the examples and
/// [`crate::GrpcChannel`] (feature `tonic`) are built on it.
///
/// **What is retried.** A request goes to another instance when its attempt failed
/// with a connection refused ([`Failure::Refused`]: it never reached the instance, so
/// it is sent again whatever it is), or failed in any way and the caller said it may be
/// sent twice (`retryable`: idempotent by method, or marked). A retry is never sent to
/// an instance this request already tried; it needs the budget to allow it (retries
/// stay within [`RetryBudget::ratio`] of requests, plus [`RetryBudget::min_per_second`],
/// so a sick fleet is not hammered), time left before the deadline, and another
/// pickable instance.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> kvstore_core::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use kvstore_discovery::{Discovery, Failure, Instance, Registrar, ServingOptions, Tried, Upstreams};
///
/// let store: Arc<dyn kvstore_core::Store> = Arc::new(kvstore_memory::MemoryStore::new());
/// let registrar = Registrar::new(store.clone());
/// let _dead = registrar.register(Instance::new("echo", "dead", "127.0.0.1:9001"), Duration::from_secs(10)).await?;
/// let _live = registrar.register(Instance::new("echo", "live", "127.0.0.1:9002"), Duration::from_secs(10)).await?;
/// let set = Discovery::new(store).watch("echo").await?;
///
/// // The service made for each instance is its address; a real one is a client.
/// let upstreams = Upstreams::new(set.reader(), ServingOptions::default(), |i: &Instance| Some(i.address.clone()));
/// for _ in 0..10 {
///     let served_by = upstreams
///         .send(false, |instance, _address| async move {
///             if instance.id == "dead" {
///                 Tried::Failed(Failure::Refused, None) // connection refused: retried elsewhere
///             } else {
///                 Tried::Answered(instance.id.clone())
///             }
///         })
///         .await
///         .expect("served");
///     assert_eq!(served_by, "live");
/// }
/// assert_eq!(upstreams.detector().ejected(), ["dead"]);
/// # Ok(()) }
/// ```
pub struct Upstreams<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Upstreams<S> {
    fn clone(&self) -> Self {
        Upstreams {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Upstreams<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("service", &self.inner.reader.service())
            .field("options", &self.inner.options)
            .field("detector", &self.inner.detector)
            .finish_non_exhaustive()
    }
}

/// Counts a request in flight on an instance while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Clone + Send + 'static> Upstreams<S> {
    /// A pool over the set `reader` reads, with one service per `Up` instance made by
    /// `make` (`None` skips an instance, e.g. one whose address the service cannot
    /// use; it is made again when the instance's address changes).
    pub fn new<F>(reader: InstanceReader, options: ServingOptions, make: F) -> Upstreams<S>
    where
        F: FnMut(&Instance) -> Option<S> + Send + 'static,
    {
        let detector = OutlierDetector::new(reader.clone(), options.outlier.clone());
        // TpsBudget asserts these ranges; the options document them.
        let budget = TpsBudget::new(
            options
                .retry_budget
                .ttl
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            options.retry_budget.min_per_second.min(i32::MAX as u32 - 1),
            options.retry_budget.ratio.clamp(0.0, 1000.0),
        );
        Upstreams {
            inner: Arc::new(Inner {
                reader,
                detector,
                options,
                budget,
                make: Mutex::new(Box::new(make)),
                pool: Mutex::new(Pool {
                    version: None,
                    entries: HashMap::new(),
                    instances: Vec::new(),
                }),
            }),
        }
    }

    /// The outlier detector: where tries are reported, and what is ejected now.
    pub fn detector(&self) -> &OutlierDetector {
        &self.inner.detector
    }

    /// The options in force.
    pub fn options(&self) -> &ServingOptions {
        &self.inner.options
    }

    /// The instances that may be picked now: `Up` and not ejected, sorted by id.
    pub fn pickable(&self) -> Vec<Arc<Instance>> {
        let pool = self.synced();
        self.inner.detector.pickable(&pool.instances)
    }

    /// The pool, brought up to date with the set.
    fn synced(&self) -> std::sync::MutexGuard<'_, Pool<S>> {
        let mut pool = lock(&self.inner.pool);
        let version = self.inner.reader.version();
        if pool.version == Some(version) {
            return pool;
        }
        let instances = self.inner.reader.instances();
        let mut make = lock(&self.inner.make);
        let mut entries = std::mem::take(&mut pool.entries);
        for instance in instances.iter().filter(|i| i.status == Status::Up) {
            match entries.remove(&instance.id) {
                Some(mut entry) if entry.instance.address == instance.address => {
                    entry.instance = instance.clone();
                    pool.entries.insert(instance.id.clone(), entry);
                }
                _ => {
                    if let Some(service) = make(instance) {
                        pool.entries.insert(
                            instance.id.clone(),
                            Entry {
                                instance: instance.clone(),
                                service,
                                in_flight: Arc::new(AtomicUsize::new(0)),
                            },
                        );
                    }
                }
            }
        }
        drop(make);
        pool.instances = instances;
        pool.version = Some(version);
        pool
    }

    /// Pick an instance for a try: the less loaded (by tries in flight through this
    /// pool) of two random pickable instances, none of `exclude` (ids).
    fn pick(&self, exclude: &[String]) -> Option<(Arc<Instance>, S, InFlight)> {
        let pool = self.synced();
        let candidates: Vec<&Entry<S>> = self
            .inner
            .detector
            .pickable(&pool.instances)
            .iter()
            .filter(|i| !exclude.contains(&i.id))
            .filter_map(|i| pool.entries.get(&i.id))
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((
            chosen.instance.clone(),
            chosen.service.clone(),
            InFlight(chosen.in_flight.clone()),
        ))
    }

    /// Serve one request: call `attempt` with a picked instance and its service, and
    /// again with another instance while the try fails and may be retried (see the
    /// [`Upstreams`] docs). Every try's outcome is reported to the
    /// [`OutlierDetector`]; a try that does not answer within the per-try timeout is
    /// dropped and counts as [`Failure::Timeout`]. `retryable` says the request may be
    /// applied twice (idempotent, or marked by the caller); without it only refused
    /// tries are sent again.
    ///
    /// Returns the answer of the try that answered, or the error answer of the last
    /// try when it is not tried again ([`Tried::Failed`] with `Some`).
    ///
    /// # Errors
    /// [`Unserved`]: no instance could take the request, the last try failed without an
    /// answer, or the deadline passed.
    ///
    /// # Cancel safety
    /// Dropping the future drops the try in flight (what the instance already received
    /// may still be applied) and sends no more.
    pub async fn send<T, F, Fut>(&self, retryable: bool, mut attempt: F) -> Result<T, Unserved>
    where
        F: FnMut(Arc<Instance>, S) -> Fut,
        Fut: Future<Output = Tried<T>>,
    {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.deadline.min(LONGEST_DEADLINE);
        let service = || self.inner.reader.service().to_owned();
        self.inner.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        // How the previous try failed, and its error answer.
        let mut last: Option<(Failure, Option<T>)> = None;
        // Whether a try may have reached an instance.
        let mut reached = false;
        loop {
            let attempts = u32::try_from(tried.len()).unwrap_or(u32::MAX);
            let picked = if Instant::now() >= deadline {
                None
            } else {
                self.pick(&tried)
            };
            let Some((instance, upstream, in_flight)) = picked else {
                return match last {
                    None if Instant::now() >= deadline => Err(Unserved::DeadlineExceeded {
                        service: service(),
                        deadline: options.deadline,
                        attempts,
                    }),
                    None => Err(Unserved::NoInstance { service: service() }),
                    Some((failure, answer)) => self.finish(
                        failure,
                        answer,
                        attempts,
                        reached,
                        Instant::now() >= deadline,
                    ),
                };
            };
            if last.is_some() {
                tracing::debug!(instance = %instance.id, attempts, "trying another instance");
                metrics::counter!("kvstore_request_retries_total", "service" => service())
                    .increment(1);
            }
            tried.push(instance.id.clone());
            let attempts = attempts.saturating_add(1);
            let limit = options
                .per_try_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let outcome = tokio::time::timeout(limit, attempt(instance.clone(), upstream)).await;
            drop(in_flight);
            let (failure, answer) = match outcome {
                Ok(Tried::Answered(answer)) => {
                    self.inner.detector.record(&instance, Outcome::Success);
                    return Ok(answer);
                }
                Ok(Tried::Failed(failure, answer)) => (failure, answer),
                Err(_) => (Failure::Timeout, None),
            };
            self.inner
                .detector
                .record(&instance, Outcome::Failed(failure));
            reached |= !failure.never_sent();
            let again = attempts < options.attempts
                && (retryable || failure.never_sent())
                && Instant::now() < deadline
                && self.inner.budget.withdraw();
            if !again {
                return self.finish(
                    failure,
                    answer,
                    attempts,
                    reached,
                    Instant::now() >= deadline,
                );
            }
            last = Some((failure, answer));
        }
    }

    /// The result of a request whose last try failed.
    fn finish<T>(
        &self,
        failure: Failure,
        answer: Option<T>,
        attempts: u32,
        reached: bool,
        past_deadline: bool,
    ) -> Result<T, Unserved> {
        let service = self.inner.reader.service().to_owned();
        match answer {
            Some(answer) => Ok(answer),
            None if failure == Failure::Timeout && past_deadline => {
                Err(Unserved::DeadlineExceeded {
                    service,
                    deadline: self.inner.options.deadline,
                    attempts,
                })
            }
            None => Err(Unserved::Failed {
                service,
                failure,
                attempts,
                reached,
            }),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovery, Registrar, Registration};
    use kvstore_core::Store;
    use std::sync::atomic::AtomicU32;

    const TTL: Duration = Duration::from_secs(60);

    async fn service(ids: &[&str], options: ServingOptions) -> (Vec<Registration>, Upstreams<()>) {
        let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
        let registrar = Registrar::new(store.clone());
        let mut registrations = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            registrations.push(
                registrar
                    .register(
                        Instance::new("svc", *id, format!("127.0.0.1:{}", n + 1)),
                        TTL,
                    )
                    .await
                    .unwrap(),
            );
        }
        let set = Discovery::new(store).watch("svc").await.unwrap();
        assert_eq!(set.instances().len(), ids.len());
        (
            registrations,
            Upstreams::new(set.reader(), options, |_: &Instance| Some(())),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_goes_to_an_instance_the_request_already_tried() {
        let options = ServingOptions {
            outlier: OutlierOptions::disabled(),
            ..ServingOptions::default()
        };
        let (_r, upstreams) = service(&["a", "b", "c"], options).await;
        for _ in 0..20 {
            let mut seen = Vec::new();
            let result = upstreams
                .send(true, |instance, ()| {
                    seen.push(instance.id.clone());
                    async { Tried::<()>::Failed(Failure::Error, None) }
                })
                .await;
            assert!(matches!(result, Err(Unserved::Failed { attempts: 3, .. })));
            let mut distinct = seen.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), seen.len(), "{seen:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_is_not_retryable_is_sent_again_only_when_it_was_refused() {
        let (_r, upstreams) = service(&["a", "b", "c"], ServingOptions::default()).await;
        let tries = AtomicU32::new(0);
        let result = upstreams
            .send(false, |_, ()| {
                tries.fetch_add(1, Ordering::Relaxed);
                async { Tried::<()>::Failed(Failure::Reset, None) }
            })
            .await;
        assert!(matches!(
            result,
            Err(Unserved::Failed {
                failure: Failure::Reset,
                attempts: 1,
                ..
            })
        ));
        assert_eq!(tries.load(Ordering::Relaxed), 1);

        let tries = AtomicU32::new(0);
        let result = upstreams
            .send(false, |_, ()| {
                let n = tries.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n == 0 {
                        Tried::Failed(Failure::Refused, None)
                    } else {
                        Tried::Answered(n)
                    }
                }
            })
            .await;
        assert_eq!(result, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_instance_costs_one_per_try_timeout_and_is_ejected_after_its_run() {
        let options = ServingOptions {
            per_try_timeout: Duration::from_millis(300),
            ..ServingOptions::default()
        };
        let (_r, upstreams) = service(&["hung", "live"], options).await;
        let mut hung_tries = 0;
        for _ in 0..20 {
            let started = Instant::now();
            let served = upstreams
                .send(true, |instance, ()| {
                    let hung = instance.id == "hung";
                    hung_tries += u32::from(hung);
                    async move {
                        if hung {
                            std::future::pending::<()>().await;
                        }
                        Tried::Answered(instance.id.clone())
                    }
                })
                .await;
            assert_eq!(served.as_deref(), Ok("live"));
            assert!(started.elapsed() <= Duration::from_millis(300));
        }
        assert_eq!(hung_tries, 2, "two timeouts eject");
        assert_eq!(upstreams.detector().ejected(), ["hung"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_answer_is_passed_on_when_it_cannot_be_retried() {
        let (_r, upstreams) = service(&["a"], ServingOptions::default()).await;
        let result = upstreams
            .send(true, |_, ()| async {
                Tried::Failed(Failure::Error, Some(500))
            })
            .await;
        assert_eq!(result, Ok(500), "one instance: nowhere else to go");
        let baseline = service(&["a", "b"], ServingOptions::baseline()).await.1;
        let result = baseline
            .send(true, |_, ()| async {
                Tried::Failed(Failure::Refused, Some(502))
            })
            .await;
        assert_eq!(result, Ok(502), "the baseline tries once");
        assert!(baseline.detector().ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_bounds_retries_when_every_instance_fails() {
        let options = ServingOptions {
            retry_budget: RetryBudget {
                ttl: Duration::from_secs(1),
                min_per_second: 0,
                ratio: 0.5,
            },
            outlier: OutlierOptions::disabled(),
            ..ServingOptions::default()
        };
        let (_r, upstreams) = service(&["a", "b", "c"], options).await;
        let tries = AtomicU32::new(0);
        for _ in 0..100 {
            let _ = upstreams
                .send(true, |_, ()| {
                    tries.fetch_add(1, Ordering::Relaxed);
                    async { Tried::<()>::Failed(Failure::Error, None) }
                })
                .await;
        }
        let tries = tries.load(Ordering::Relaxed);
        // 100 requests, retries at most half of them (and never three tries for each).
        assert!((100..=151).contains(&tries), "{tries}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_up_instance_is_no_instance() {
        let (registrations, upstreams) = service(&["a"], ServingOptions::default()).await;
        registrations[0].drain().await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let result = upstreams
                    .send(true, |_, ()| async { Tried::Answered(()) })
                    .await;
                if let Err(error) = result {
                    return error;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the drain is seen");
        assert!(matches!(error, Unserved::NoInstance { .. }));
        assert!(error.nothing_reached());
    }
}
