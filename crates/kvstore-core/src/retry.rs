//! Retry delays shared by every background loop that must never give up (watch
//! resumption, re-registration): exponential, jittered, unbounded in count.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays from `min` doubling up to `max`, each with random jitter so many clients that
/// failed together do not retry together; never longer than `max`; never runs out.
/// backon adds its jitter (up to the delay itself) after its own cap, so that cap is half
/// of `max` (but at least `min`): delays at the cap still spread over `max / 2 ..= max`
/// instead of all being clipped to `max`, and the cap is applied again here.
pub fn backoff(
    min: Duration,
    max: Duration,
) -> impl Iterator<Item = Duration> + Send + Sync + 'static {
    let delays = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay((max / 2).max(min))
        .with_jitter()
        .without_max_times()
        .build();
    // `without_max_times` never ends; the chain only satisfies the type system.
    delays
        .map(move |delay| delay.min(max))
        .chain(std::iter::repeat(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_max_and_keep_their_jitter_at_the_cap() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<Duration> = backoff(min, max).take(200).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        // Long past the cap: spread over max / 2 ..= max, not all clipped to max.
        let capped = &delays[100..];
        assert!(capped.iter().all(|d| *d >= max / 2), "{capped:?}");
        assert!(capped.iter().any(|d| *d < max), "{capped:?}");
    }
}
