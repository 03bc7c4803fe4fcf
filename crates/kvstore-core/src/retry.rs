//! Retry delays shared by every background loop that must never give up (watch
//! resumption, re-registration): exponential, jittered, unbounded in count.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays from `min` doubling up to `max`, each with random jitter so many clients that
/// failed together do not retry together; never longer than `max` (backon adds its
/// jitter after its own cap, so the cap is applied again here); never runs out.
pub fn backoff(
    min: Duration,
    max: Duration,
) -> impl Iterator<Item = Duration> + Send + Sync + 'static {
    let delays = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build();
    // `without_max_times` never ends; the chain only satisfies the type system.
    delays
        .map(move |delay| delay.min(max))
        .chain(std::iter::repeat(max))
}
