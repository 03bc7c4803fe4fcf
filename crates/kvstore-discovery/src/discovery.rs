//! [`Discovery`]: consumers list and watch services and always hold the live instance
//! set ([contract §9](kvstore_core::contract#9-discovery)).
//!
//! [`Discovery::watch`] returns an [`InstanceSet`]. All sets of one service from one
//! `Discovery` (and its clones) share one follower task: one backend watch and one
//! decoded set of `Arc<Instance>`, so 1,000 watchers cost about one. The follower
//! applies protection ([`DiscoveryOptions::protect_threshold`]), keeps an optional
//! snapshot cache ([`DiscoveryOptions::cache_dir`]), and marks its sets stale when the
//! registry stops answering: a liveness probe, one per `Discovery` while anything is
//! watched, reads the store every [`DiscoveryOptions::probe_interval`].

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use kvstore_core::{Error, Result, Store, WatchFrom};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::cache::SnapshotCache;
use crate::follower::{Follower, Outputs, Protection};
use crate::instance::{Instance, SERVICES_PREFIX, service_prefix};
use crate::record;
use crate::set::InstanceSet;

/// Default [`DiscoveryOptions::probe_interval`].
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How a [`Discovery`] follows services. `Default` is empty-push protection only, no
/// cache, a probe every [`DEFAULT_PROBE_INTERVAL`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DiscoveryOptions {
    /// Nacos's *protect threshold*, a share of the last known set between 0 and 1: a
    /// resync, or one revision removing several instances, that would leave fewer than
    /// `protect_threshold ×` the instances served before is held back — the removed
    /// instances stay served, the set is [`crate::Health::Stale`] with
    /// [`crate::StaleError::Protected`], a warning is logged — until the registry has
    /// at least that share again. A single removal (a crash or a deregistration) always
    /// applies, so crashed providers still disappear within their TTL. Default 0: only
    /// empty-push protection.
    pub protect_threshold: f64,
    /// Nacos's *empty-push protection*: never let a resync or burst empty a set that was
    /// not empty (held back as above until the registry has an instance again). Default
    /// on.
    pub empty_protection: bool,
    /// Where to keep each watched service's last snapshot (Nacos's failover cache), so
    /// [`Discovery::watch`] can start from it, marked stale, when the registry cannot be
    /// read at startup, and catch up when it returns. One directory per store and
    /// namespace. Default none.
    pub cache_dir: Option<PathBuf>,
    /// How often the liveness probe reads the store while services are watched; a
    /// failed read marks every set of this `Discovery` stale until one succeeds (a watch
    /// alone cannot tell a quiet registry from a lost one). Default 5 s.
    pub probe_interval: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            protect_threshold: 0.0,
            empty_protection: true,
            cache_dir: None,
            probe_interval: DEFAULT_PROBE_INTERVAL,
        }
    }
}

/// Looks services up on one store. Cheap to clone; clones share their watches.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("backend", &self.inner.store.backend())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// What the liveness probe last found.
#[derive(Clone, Debug)]
pub(crate) enum Liveness {
    Answering,
    Failing(Arc<Error>),
}

/// One per service: the follower's slot, filled while someone watches the service.
type Slot = Arc<tokio::sync::Mutex<Weak<SharedWatch>>>;

struct Inner {
    store: Arc<dyn Store>,
    options: DiscoveryOptions,
    services: Mutex<HashMap<String, Slot>>,
    liveness: watch::Sender<Liveness>,
    probe: Mutex<Option<AbortOnDropHandle<()>>>,
}

/// The follower of one service, shared by its [`InstanceSet`]s and readers; dropping the
/// last one stops the follower (and its backend watch).
pub(crate) struct SharedWatch {
    pub service: String,
    pub outputs: Outputs,
    _follower: AbortOnDropHandle<()>,
    /// Keeps the liveness probe running while the service is watched.
    _discovery: Arc<Inner>,
}

impl SharedWatch {
    pub(crate) fn instances(&self) -> Vec<Arc<Instance>> {
        self.outputs
            .current
            .borrow()
            .members
            .values()
            .map(|member| member.instance.clone())
            .collect()
    }
}

impl Discovery {
    /// A discovery client reading `store` (any backend), with the default options.
    pub fn new(store: Arc<dyn Store>) -> Discovery {
        Discovery::build(store, DiscoveryOptions::default())
    }

    /// A discovery client with `options`.
    ///
    /// # Errors
    /// `InvalidArgument` for a protect threshold outside 0..=1 or a zero probe interval.
    pub fn with_options(store: Arc<dyn Store>, options: DiscoveryOptions) -> Result<Discovery> {
        if !(0.0..=1.0).contains(&options.protect_threshold) {
            return Err(Error::invalid_argument(
                "discovery",
                format!(
                    "the protect threshold must be between 0 and 1, not {}",
                    options.protect_threshold
                ),
            ));
        }
        if options.probe_interval.is_zero() {
            return Err(Error::invalid_argument(
                "discovery",
                "the probe interval must not be zero",
            ));
        }
        Ok(Discovery::build(store, options))
    }

    fn build(store: Arc<dyn Store>, options: DiscoveryOptions) -> Discovery {
        Discovery {
            inner: Arc::new(Inner {
                store,
                options,
                services: Mutex::new(HashMap::new()),
                liveness: watch::channel(Liveness::Answering).0,
                probe: Mutex::new(None),
            }),
        }
    }

    /// The instances of `service` now, sorted by id (one read; records that do not
    /// decode are skipped with a warning).
    ///
    /// # Errors
    /// `InvalidKey` for a bad service name; the store's errors.
    pub async fn resolve(&self, service: &str) -> Result<Vec<Instance>> {
        let prefix = service_prefix(service)?;
        let pairs = self.inner.store.list(prefix.as_str()).await?;
        Ok(pairs
            .iter()
            .filter_map(|pair| {
                let id = pair.key.strip_prefix(prefix.as_str())?.strip_prefix('/')?;
                if id.contains('/') {
                    return None;
                }
                match record::decode(service, id, pair) {
                    Ok(member) => Some(Arc::unwrap_or_clone(member.instance)),
                    Err(e) => {
                        tracing::warn!(key = %pair.key, error = %e, "skipping an undecodable instance record");
                        None
                    }
                }
            })
            .collect())
    }

    /// The names of every service with at least one instance, sorted.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn list_services(&self) -> Result<Vec<String>> {
        let pairs = self.inner.store.list(SERVICES_PREFIX).await?;
        let names: BTreeSet<String> = pairs
            .iter()
            .filter_map(|pair| {
                let rest = pair.key.strip_prefix(SERVICES_PREFIX)?.strip_prefix('/')?;
                let (service, _id) = rest.split_once('/')?;
                Some(service.to_owned())
            })
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Follow `service`: the returned set holds its current instances (already loaded)
    /// and streams every change. Every set of one service from this `Discovery` (and
    /// its clones) shares one backend watch and one decoded instance set.
    ///
    /// When the registry cannot be read this fails within the store's timeouts
    /// ([contract §7](kvstore_core::contract#7-errors)), unless [`DiscoveryOptions::cache_dir`] holds a snapshot of
    /// the service: the set then starts from it, [`crate::Health::Stale`] with
    /// [`crate::StaleError::Cached`], and catches up when the registry answers.
    ///
    /// # Errors
    /// `InvalidKey` for a bad service name; the store's errors if the first snapshot
    /// cannot be read (and there is no cached one).
    pub async fn watch(&self, service: &str) -> Result<InstanceSet> {
        let prefix = service_prefix(service)?;
        let slot = self.slot(service);
        let mut slot = slot.lock().await;
        if let Some(shared) = slot.upgrade()
            && shared.outputs.current.has_changed().is_ok()
        {
            return Ok(InstanceSet::new(shared));
        }
        let shared = Arc::new(self.follow(service, prefix.as_str().to_owned()).await?);
        *slot = Arc::downgrade(&shared);
        self.start_probe();
        Ok(InstanceSet::new(shared))
    }

    /// The slot of `service`, forgetting the slots of services nobody follows.
    fn slot(&self, service: &str) -> Slot {
        let mut services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        services.retain(|_, slot| {
            // Someone is opening it, or someone follows it.
            Arc::strong_count(slot) > 1 || slot.try_lock().is_ok_and(|weak| weak.strong_count() > 0)
        });
        services.entry(service.to_owned()).or_default().clone()
    }

    /// Start following `service`: read its snapshot (or its cached one) and spawn the
    /// follower.
    async fn follow(&self, service: &str, prefix: String) -> Result<SharedWatch> {
        let options = &self.inner.options;
        let cache = options
            .cache_dir
            .as_deref()
            .map(|dir| SnapshotCache::new(dir, service));
        let (mut follower, outputs) = Follower::new(
            service,
            prefix.clone(),
            self.inner.store.clone(),
            Protection {
                threshold: options.protect_threshold,
                empty: options.empty_protection,
            },
            cache.clone(),
            self.inner.liveness.subscribe(),
        );
        let opened = self
            .inner
            .store
            .watch_prefix_events(&prefix, WatchFrom::Snapshot)
            .await;
        let started = match opened {
            Ok(events) => follower.start(events).await,
            Err(e) => Err(e),
        };
        let task = match started {
            Ok(events) => tokio::spawn(follower.run(Some(events))),
            Err(e) if e.is_retryable() => {
                let cached = match &cache {
                    Some(cache) => cache.load().await,
                    None => None,
                };
                let Some(cached) = cached else {
                    return Err(e);
                };
                follower.start_from_cache(cached, e);
                tokio::spawn(follower.run(None))
            }
            Err(e) => return Err(e),
        };
        Ok(SharedWatch {
            service: service.to_owned(),
            outputs,
            _follower: AbortOnDropHandle::new(task),
            _discovery: self.inner.clone(),
        })
    }

    /// Start the liveness probe, once: it runs while any service of this `Discovery`
    /// is followed and stops with the last `Discovery` handle and set.
    fn start_probe(&self) {
        let mut probe = self
            .inner
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if probe.is_some() {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        let interval = self.inner.options.probe_interval;
        *probe = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                // Hold no reference across the read, so the probe never keeps the
                // `Discovery` alive.
                let Some(discovery) = inner.upgrade() else {
                    return;
                };
                if !discovery.follows_any() {
                    continue;
                }
                let (store, liveness) = (discovery.store.clone(), discovery.liveness.clone());
                drop(discovery);
                let answer = store.exists(SERVICES_PREFIX).await;
                match answer {
                    Ok(_) => liveness.send_if_modified(|now| {
                        let changed = matches!(now, Liveness::Failing(_));
                        *now = Liveness::Answering;
                        changed
                    }),
                    Err(Error::Closed { .. }) => return,
                    Err(e) => {
                        liveness.send_replace(Liveness::Failing(Arc::new(e)));
                        true
                    }
                };
            }
        })));
    }
}

impl Inner {
    fn follows_any(&self) -> bool {
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|slot| slot.try_lock().map_or(true, |weak| weak.strong_count() > 0))
    }
}
