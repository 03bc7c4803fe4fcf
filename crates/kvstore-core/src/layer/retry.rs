//! [`RetryLayer`]: idempotent calls retried through transient failures, with backon.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;

use super::{Attempt, Call, CallOutput, Intercept, Intercepted, Layer};
use crate::error::{Error, Result};
use crate::store::Store;

/// Retries idempotent calls ([`Call::idempotent`]: reads, watch starts, deletes, lease
/// keep-alive and revoke) that fail with a retryable error ([`Error::is_retryable`]:
/// unavailable, timed out, transient backend errors), with exponential jittered backoff
/// (the `backon` crate). Other calls run once: a put or compare-and-swap that failed
/// ambiguously may have been applied, and only the caller knows whether to repeat it
/// (as etcd clientv3 retries only reads by itself).
#[derive(Clone, Copy, Debug)]
pub struct RetryLayer {
    backoff: ExponentialBuilder,
}

impl RetryLayer {
    /// Up to `attempts` retries after the first try, waiting from `min_delay`, doubling,
    /// up to `max_delay`, each with jitter.
    pub fn new(attempts: usize, min_delay: Duration, max_delay: Duration) -> RetryLayer {
        RetryLayer {
            backoff: ExponentialBuilder::default()
                .with_min_delay(min_delay)
                .with_max_delay(max_delay)
                .with_max_times(attempts)
                .with_jitter(),
        }
    }
}

impl Default for RetryLayer {
    /// 3 retries from 50 ms up to 1 s.
    fn default() -> RetryLayer {
        RetryLayer::new(3, Duration::from_millis(50), Duration::from_secs(1))
    }
}

impl Layer for RetryLayer {
    fn layer(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Intercepted::new(store, *self))
    }
}

impl Intercept for RetryLayer {
    fn around<'a, T: CallOutput + 'a>(
        &'a self,
        backend: &'static str,
        call: Call<'a>,
        attempt: &'a Attempt<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        if !call.idempotent {
            return attempt();
        }
        Box::pin(
            (|| attempt())
                .retry(self.backoff)
                .sleep(tokio::time::sleep)
                .when(Error::is_retryable)
                .notify(move |error: &Error, delay: Duration| {
                    tracing::debug!(backend, operation = call.operation, key = call.key, %error, ?delay, "retrying");
                }),
        )
    }
}
