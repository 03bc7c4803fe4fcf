//! # kvstore-discovery: service registry and discovery on any kvstore backend
//!
//! Providers register themselves with a lease and a heartbeat and disappear when they
//! die; consumers and gateways always hold the live instance set; none of it depends on
//! which store is underneath (docs/CONTRACT.md §9). Records are JSON at
//! `{namespace}/services/{service}/{id}`.
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
//!
//! registration.abandon(); // crash: no deregistration, no heartbeat
//! let changes = echo.next_change().await.unwrap(); // within the 10 s TTL
//! assert!(matches!(&changes[0], InstanceChange::Removed { .. }));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod balancer;
mod discovery;
mod instance;
mod registrar;

pub use balancer::{Balancer, Random, RoundRobin, WeightedRandom};
pub use discovery::{Discovery, InstanceChange, InstanceReader, InstanceSet};
pub use instance::{
    Instance, SCHEMA_VERSION, SERVICES_PREFIX, Status, instance_key, service_prefix,
};
pub use registrar::{
    RETRY_MAX_DELAY, RETRY_MIN_DELAY, Registrar, Registration, RegistrationStatus,
};
