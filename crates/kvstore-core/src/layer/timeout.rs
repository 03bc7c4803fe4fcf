//! [`TimeoutLayer`]: a deadline on every call.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Attempt, Call, CallOutput, Intercept, Intercepted, Layer};
use crate::error::{Error, Result};
use crate::store::Store;

/// Fails any call that takes longer than `timeout` with [`Error::Timeout`] (a watch:
/// its start, not the stream). The call is dropped at the deadline, so a write may or
/// may not have been applied, as with any timeout. Backends already bound every call
/// (their request timeouts); this layer sets a tighter, uniform bound.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A deadline of `timeout` per call (per attempt, when under a [`super::RetryLayer`]).
    pub fn new(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer { timeout }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Intercepted::new(store, *self))
    }
}

impl Intercept for TimeoutLayer {
    fn around<'a, T: CallOutput + 'a>(
        &'a self,
        _backend: &'static str,
        call: Call<'a>,
        attempt: &'a Attempt<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Timeout {
                    operation: call.operation,
                    after: self.timeout,
                }),
            }
        })
    }
}
