//! # kvstore-discovery: service registry and discovery on any kvstore backend
//!
//! Providers register themselves with a lease and a heartbeat and disappear when they
//! die; consumers and gateways always hold the live instance set; none of it depends on
//! which store is underneath ([contract §9](kvstore_core::contract#9-discovery)). Records are JSON at
//! `{namespace}/services/{service}/{id}`.
//!
//! - [`Registrar`] / [`Registration`]: a leased record that heals itself (re-registers
//!   forever after a lost lease, writes back a deleted record), with one writer per id
//!   (an older registration of the same id reports [`RegistrationStatus::Replaced`] and
//!   stops writing), draining, and an application health hook
//!   ([`Registration::check_health`]: `Up` / `Draining` / `Down`).
//! - [`Discovery`] / [`InstanceSet`]: the live set of a service as a [`futures::Stream`]
//!   of [`InstanceChange`] batches. All sets of one service share one backend watch and
//!   one decoded set of `Arc<Instance>`. [`InstanceSet::health`] says `Synced` or
//!   `Stale { since, error }`; protection (Nacos's protect threshold and empty-push
//!   protection) keeps serving the last known set when the registry loses data; an
//!   optional cache directory lets a consumer start while the registry is down
//!   ([`DiscoveryOptions`]).
//! - Balancers over [`InstanceSet::instances`]: [`RoundRobin`], [`Random`],
//!   [`WeightedRandom`], [`ZonePreferring`]; with feature `tower`,
//!   [`InstanceSet::into_discover`] feeds tower's `p2c::Balance`; with feature `tonic`,
//!   [`InstanceSet::into_balance_channel`] makes a balanced gRPC channel.
//! - Serving ([contract §9](kvstore_core::contract#9-discovery), "Serving"): [`OutlierDetector`] ejects instances
//!   that refuse, reset, hang or fail, at once and for a growing time, never more than
//!   a share of the set ([`SkipEjected`] for the balancers); [`ActiveHealth`] checks
//!   instances itself (TCP, HTTP, `grpc.health.v1`); with feature `tower`, [`Upstreams`]
//!   sends each request to a pickable instance and retries it on another under a
//!   budget, per-try timeout and deadline, and with feature `tonic` [`GrpcChannel`] does
//!   it for gRPC calls; [`Registration::drain_and_deregister`] stops a provider
//!   gracefully.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> kvstore_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kvstore_discovery::{Balancer, Discovery, Instance, InstanceChange, Registrar, RoundRobin};
//!
//! let store: Arc<dyn kvstore_core::Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! let mut echo = Discovery::new(store.clone()).watch("echo").await?;
//!
//! let registration = Registrar::new(store.clone())
//!     .register(Instance::new("echo", "echo-1", "127.0.0.1:9001"), Duration::from_secs(10))
//!     .await?;
//! let changes = echo.next_change().await.unwrap();
//! assert!(matches!(&changes[0], InstanceChange::Added { instance, .. } if instance.id == "echo-1"));
//! assert_eq!(RoundRobin::default().pick(&echo.instances()).unwrap().address, "127.0.0.1:9001");
//! assert!(echo.health().is_synced());
//!
//! registration.abandon(); // crash: no deregistration, no heartbeat
//! let changes = echo.next_change().await.unwrap(); // within the 10 s TTL
//! assert!(matches!(&changes[0], InstanceChange::Removed { .. }));
//! # Ok(()) }
//! ```

mod active;
mod balancer;
mod cache;
mod discovery;
mod follower;
mod health;
mod instance;
mod outlier;
mod record;
mod registrar;
mod set;
#[cfg(feature = "tonic")]
mod tonic;
#[cfg(feature = "tower")]
mod tower;
#[cfg(feature = "tower")]
mod upstream;

#[cfg(feature = "tonic")]
pub use self::tonic::{
    BALANCE_CHANNEL_CAPACITY, BalanceFeed, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REQUEST_SIZE,
    GrpcChannel, GrpcOptions, Idempotent, http_endpoint,
};
#[cfg(feature = "tower")]
pub use self::tower::ServiceDiscover;
#[cfg(feature = "tower")]
pub use self::upstream::{
    DEFAULT_ATTEMPTS, DEFAULT_DEADLINE, DEFAULT_PER_TRY_TIMEOUT, RetryBudget, ServingOptions,
    Tried, Unserved, Upstreams,
};
#[cfg(feature = "tonic")]
pub use active::GrpcHealthCheck;
pub use active::{
    ActiveHealth, ActiveHealthOptions, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, HealthCheck,
    TcpCheck,
};
pub use balancer::{Balancer, Random, RoundRobin, WeightedRandom, ZonePreferring};
pub use cache::CACHE_WRITE_INTERVAL;
pub use discovery::{DEFAULT_PROBE_INTERVAL, Discovery, DiscoveryOptions};
pub use health::{Health, StaleError};
pub use instance::{
    Instance, SCHEMA_VERSION, SERVICES_PREFIX, Status, instance_key, service_prefix,
};
pub use outlier::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTED_SHARE, DEFAULT_MAX_EJECTION_TIME, Failure,
    Outcome, OutlierDetector, OutlierOptions, SkipEjected,
};
pub use registrar::{
    DEFAULT_DRAIN_GRACE, RETRY_MAX_DELAY, RETRY_MIN_DELAY, Registrar, Registration,
    RegistrationStatus,
};
pub use set::{InstanceChange, InstanceReader, InstanceSet};
