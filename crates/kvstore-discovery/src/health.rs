//! [`Health`]: whether an instance set is in step with the registry, and if not, since
//! when and why ([`StaleError`]) ([contract §9](kvstore_core::contract#9-discovery) "Staleness is visible").

use std::sync::Arc;

use tokio::time::Instant;

/// Whether an [`crate::InstanceSet`] reflects the registry now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Health {
    /// In step with the registry: the set is the registry's state at `revision`.
    Synced {
        /// The store revision the set reflects.
        revision: u64,
    },
    /// Serving the last known set because the registry cannot be read, or because
    /// protection held back a change that would have emptied (or thinned) it.
    Stale {
        /// When the set became stale (tokio's clock, so paused-clock tests see it too).
        since: Instant,
        /// Why.
        error: StaleError,
    },
}

impl Health {
    /// Whether the set is in step with the registry.
    pub fn is_synced(&self) -> bool {
        matches!(self, Health::Synced { .. })
    }
}

/// Why an instance set is stale. Cheap to clone.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StaleError {
    /// The registry could not be read: the liveness probe or the watch failed. The set
    /// catches up by itself when the registry answers again (watches resume from the
    /// last revision, or resync).
    #[error("the registry cannot be read: {0}")]
    Registry(Arc<kvstore_core::Error>),
    /// A resync or a burst of removals would have dropped the set from `known` to
    /// `remaining` instances, below the protect threshold (or to none, with empty-push
    /// protection): the removed instances are still served until the registry has
    /// enough of them again ([`crate::DiscoveryOptions::protect_threshold`]).
    #[error(
        "protection: the registry went from {known} to {remaining} instance(s), below the protect threshold {threshold}; serving the last known set"
    )]
    Protected {
        /// Instances served before the drop.
        known: usize,
        /// Instances the registry has now.
        remaining: usize,
        /// The protect threshold in force (0 means empty-push protection only).
        threshold: f64,
    },
    /// The set was started from the cache directory's snapshot because the registry
    /// could not be read at startup ([`crate::DiscoveryOptions::cache_dir`]).
    #[error(
        "serving the cached snapshot of revision {revision}: the registry cannot be read: {error}"
    )]
    Cached {
        /// The store revision of the cached snapshot.
        revision: u64,
        /// The latest error reading the registry.
        error: Arc<kvstore_core::Error>,
    },
}
