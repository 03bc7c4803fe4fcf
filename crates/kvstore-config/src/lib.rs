//! # kvstore-config: typed live configuration on any kvstore backend
//!
//! A key in the store becomes a live, typed, validated value ([contract §12](kvstore_core::contract#12-typed-live-configuration)), in
//! the manner of the config centers of Go's service frameworks (go-zero, Kratos, Nacos):
//!
//! - the key's value is parsed as JSON or TOML into your `T: DeserializeOwned`, checked
//!   by your validation hook, and published as an `Arc<T>`;
//! - every change is pushed by a watch (no polling); consumers read [`LiveConfig::get`]
//!   or await [`LiveConfig::changed`];
//! - a value that does not parse or validate never replaces the last good one: it is
//!   reported ([`LiveConfig::status`], a warning in the log) and the service keeps
//!   running on what it had;
//! - a missing key means `T::default()` or an error, as you choose.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use kvstore_config::{ConfigOptions, LiveConfig, Status};
//! use kvstore_core::{PutOptions, Store};
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! struct Limits {
//!     requests_per_second: u32,
//!     greeting: String,
//! }
//!
//! let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! let options = ConfigOptions::json()
//!     .default_when_missing()
//!     .validate(|limits: &Limits| {
//!         if limits.requests_per_second == 0 {
//!             Err("requests_per_second must be positive".to_owned())
//!         } else {
//!             Ok(())
//!         }
//!     });
//! let mut config = LiveConfig::watch(store.clone(), "config/limits", options).await?;
//! assert_eq!(config.get().requests_per_second, 0); // missing: the default
//!
//! store.put("config/limits", Bytes::from(r#"{"requests_per_second":50,"greeting":"hi"}"#), PutOptions::default()).await?;
//! assert_eq!(config.changed().await?.requests_per_second, 50);
//!
//! // A bad push is refused: the last good value stays.
//! store.put("config/limits", Bytes::from(r#"{"requests_per_second":0,"greeting":""}"#), PutOptions::default()).await?;
//! while !matches!(config.status(), Status::Rejected { .. }) {
//!     tokio::task::yield_now().await;
//! }
//! assert_eq!(config.get().requests_per_second, 50);
//! # Ok(()) }
//! ```

mod live;
mod options;

pub use live::{ConfigError, LiveConfig, Status};
pub use options::{ConfigOptions, Format, Missing};
