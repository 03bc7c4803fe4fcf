//! [`ObserveLayer`]: a tracing span and metrics for every call.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tracing::Instrument;
use tracing::field::Empty;

use super::{Attempt, Call, CallOutput, Intercept, Intercepted, Layer};
use crate::error::Result;
use crate::store::Store;

/// Observes every call: a `tracing` span `kvstore` at DEBUG level with the fields
/// `backend`, `operation`, `key`, `revision` (of the result, when it has one) and
/// `outcome` (`ok` or the error's [`crate::Error::kind`]), and these `metrics`:
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `kvstore_operations_total` | counter | `backend`, `operation`, `outcome` |
/// | `kvstore_operation_duration_seconds` | histogram | `backend`, `operation` |
///
/// Core also counts, with or without this layer: `kvstore_watch_reconnects_total` and
/// `kvstore_watch_resyncs_total` (label `backend`), `kvstore_lease_losses_total` (label
/// `reason`); kvstore-discovery counts `kvstore_registrations_total`. The metrics go to
/// whatever recorder the application installed (`metrics-exporter-prometheus`, ...);
/// without one they cost an atomic load. `kvstore::open` applies this layer unless told
/// not to. Keys appear in spans, values never do.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl Layer for ObserveLayer {
    fn layer(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Intercepted::new(store, *self))
    }
}

impl Intercept for ObserveLayer {
    fn around<'a, T: CallOutput + 'a>(
        &'a self,
        backend: &'static str,
        call: Call<'a>,
        attempt: &'a Attempt<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        let span = tracing::debug_span!(
            "kvstore",
            backend,
            operation = call.operation,
            key = call.key,
            revision = Empty,
            outcome = Empty,
        );
        Box::pin(async move {
            let started = Instant::now();
            let outcome = attempt().instrument(span.clone()).await;
            let elapsed = started.elapsed();
            let label = match &outcome {
                Ok(output) => {
                    if let Some(revision) = output.revision() {
                        span.record("revision", revision);
                    }
                    "ok"
                }
                Err(error) => error.kind(),
            };
            span.record("outcome", label);
            metrics::counter!(
                "kvstore_operations_total",
                "backend" => backend,
                "operation" => call.operation,
                "outcome" => label,
            )
            .increment(1);
            metrics::histogram!(
                "kvstore_operation_duration_seconds",
                "backend" => backend,
                "operation" => call.operation,
            )
            .record(elapsed.as_secs_f64());
            outcome
        })
    }
}
