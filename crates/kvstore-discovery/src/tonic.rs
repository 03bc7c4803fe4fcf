//! tonic integration (feature `tonic`): gRPC clients over the live `Up` instances of a
//! service.
//!
//! - [`GrpcChannel`] ([`InstanceSet::into_grpc_channel`]) serves each call as
//!   [`crate::Upstreams`] does: instances that refuse or reset connections, time out
//!   or answer `UNAVAILABLE` are ejected at once ([`crate::OutlierDetector`]), and a
//!   call that failed is retried on another instance when it never reached one or is
//!   idempotent ([`GrpcOptions::idempotent`], or [`Idempotent`] on the request). It
//!   buffers each request (up to [`GrpcOptions::max_request_size`]) so it can send it
//!   again: use it for unary and client-streaming calls.
//! - [`InstanceSet::into_balance_channel`] is tonic's own [`Channel::balance_channel`]
//!   fed by discovery: no buffering (any call, streaming both ways), but also no
//!   ejection and no retries; a crashed instance gets calls until its TTL runs out.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
//! use kvstore_discovery::{Discovery, GrpcOptions};
//!
//! let set = Discovery::new(store).watch("greeter").await?;
//! let channel = set.into_grpc_channel(GrpcOptions::default().idempotent(true));
//! // let mut client = GreeterClient::new(channel); // clones share the pool
//! # let _ = channel;
//! # Ok(()) }
//! ```
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
//! use kvstore_discovery::{Discovery, http_endpoint};
//!
//! let set = Discovery::new(store).watch("greeter").await?;
//! let (channel, _feed) = set.into_balance_channel(http_endpoint);
//! // let mut client = GreeterClient::new(channel); // keep `_feed` alive while you call
//! # let _ = channel;
//! # Ok(()) }
//! ```

use std::error::Error as StdError;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use tokio_util::task::AbortOnDropHandle;
use tonic::body::Body;
use tonic::transport::channel::Change as ChannelChange;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;
use tower::{Service, ServiceExt};

use crate::instance::Instance;
use crate::outlier::Failure;
use crate::set::{InstanceReader, InstanceSet};
use crate::upstream::{ServingOptions, Tried, Unserved, Upstreams};

/// Default [`GrpcOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`GrpcOptions::max_request_size`]: 4 MiB, gRPC's default message limit.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 4 * 1024 * 1024;

/// How many endpoint changes may wait for the channel's balancer to take them.
pub const BALANCE_CHANNEL_CAPACITY: usize = 64;

/// The task that feeds a balanced channel with the set's changes. Keep it while the
/// channel is used: dropping it stops the feed, and the channel then keeps the endpoints
/// it had.
#[derive(Debug)]
pub struct BalanceFeed {
    _task: AbortOnDropHandle<()>,
}

/// `http://{address}`: a plaintext endpoint for `instance`, or `None` (with a warning)
/// when its address does not make a URI. Build your own (TLS, timeouts, keep-alive)
/// with [`Endpoint::from_shared`] for anything else.
pub fn http_endpoint(instance: &Instance) -> Option<Endpoint> {
    match Endpoint::from_shared(format!("http://{}", instance.address)) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            tracing::warn!(instance = %instance.id, address = %instance.address, error = %e, "not a usable gRPC endpoint");
            None
        }
    }
}

impl InstanceSet {
    /// A tonic [`Channel`] that balances calls over the `Up` instances of this set (the
    /// endpoint of each made by `endpoint`, e.g. [`http_endpoint`]), following every
    /// change: [`Channel::balance_channel`] fed by [`InstanceSet::into_discover`]. Calls
    /// go to ready endpoints by tower's power of two choices; an instance that leaves or
    /// stops being `Up` gets no new calls.
    ///
    /// Returns the channel (cheap to clone) and the feed task's handle: keep the handle
    /// while the channel is in use.
    pub fn into_balance_channel<F>(self, endpoint: F) -> (Channel, BalanceFeed)
    where
        F: FnMut(&Instance) -> Option<Endpoint> + Send + 'static,
    {
        let (channel, sender) = Channel::balance_channel::<String>(BALANCE_CHANNEL_CAPACITY);
        let mut changes = self.into_discover(endpoint);
        let task = tokio::spawn(async move {
            while let Some(Ok(change)) = changes.next().await {
                let change = match change {
                    Change::Insert(id, endpoint) => ChannelChange::Insert(id, endpoint),
                    Change::Remove(id) => ChannelChange::Remove(id),
                };
                if sender.send(change).await.is_err() {
                    // Every clone of the channel is gone.
                    return;
                }
            }
        });
        (
            channel,
            BalanceFeed {
                _task: AbortOnDropHandle::new(task),
            },
        )
    }
}

/// How a [`GrpcChannel`] calls. `Default`: the default [`ServingOptions`], a
/// [`DEFAULT_CONNECT_TIMEOUT`] connect timeout, calls retried only when they never
/// reached an instance (unless marked [`Idempotent`]), requests up to
/// [`DEFAULT_MAX_REQUEST_SIZE`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GrpcOptions {
    /// Tries, timeouts, retry budget and ejection.
    pub serving: ServingOptions,
    /// How long connecting to an instance may take; a connect that times out never
    /// reached it and is retried elsewhere. Short, so a blackholed instance costs
    /// little.
    pub connect_timeout: Duration,
    /// Every call of this channel may be applied twice (all its methods are
    /// idempotent), so every failed call may be retried on another instance. Without
    /// it only calls carrying [`Idempotent`] are.
    pub idempotent: bool,
    /// The largest request (encoded messages) buffered for retries; a larger one fails
    /// with `RESOURCE_EXHAUSTED` before it is sent.
    pub max_request_size: usize,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            serving: ServingOptions::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idempotent: false,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
        }
    }
}

impl GrpcOptions {
    /// These options with [`GrpcOptions::idempotent`] set to `idempotent`.
    pub fn idempotent(mut self, idempotent: bool) -> GrpcOptions {
        self.idempotent = idempotent;
        self
    }

    /// These options with `serving`.
    pub fn serving(mut self, serving: ServingOptions) -> GrpcOptions {
        self.serving = serving;
        self
    }
}

/// Marks one call as idempotent, so a [`GrpcChannel`] may retry it on another instance
/// whatever the failure: `request.extensions_mut().insert(Idempotent)` on the
/// `tonic::Request`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idempotent;

/// A gRPC channel over the live `Up` instances of a service that ejects failing
/// instances and retries calls elsewhere, as [`crate::Upstreams`] serves requests. It
/// buffers each request (up to [`GrpcOptions::max_request_size`]) so it can send it
/// again: use it for unary and client-streaming calls, and
/// [`InstanceSet::into_balance_channel`] for calls streaming both ways. Hand it to a
/// generated client (`GreeterClient::new(channel)`). Cheap to clone: clones share the
/// connections, the outlier detector and the retry budget.
///
/// A call that cannot be served answers a gRPC status rather than a transport error:
/// `UNAVAILABLE` when no instance could take it or its last try failed,
/// `DEADLINE_EXCEEDED` when the overall deadline passed, `RESOURCE_EXHAUSTED` for a
/// request over [`GrpcOptions::max_request_size`].
#[derive(Clone, Debug)]
pub struct GrpcChannel {
    upstreams: Upstreams<Channel>,
    idempotent: bool,
    max_request_size: usize,
}

impl InstanceSet {
    /// A [`GrpcChannel`] over this set, to each instance at `http://{address}`.
    pub fn into_grpc_channel(self, options: GrpcOptions) -> GrpcChannel {
        let connect_timeout = options.connect_timeout;
        GrpcChannel::new(self.reader(), options, move |instance| {
            http_endpoint(instance).map(|endpoint| endpoint.connect_timeout(connect_timeout))
        })
    }
}

impl GrpcChannel {
    /// A [`GrpcChannel`] over the set `reader` reads, with the endpoint of each
    /// instance made by `endpoint` (TLS, keep-alive, ...; `None` skips an instance).
    /// [`GrpcOptions::connect_timeout`] is applied by [`InstanceSet::into_grpc_channel`];
    /// set it on your endpoints here.
    pub fn new<F>(reader: InstanceReader, options: GrpcOptions, mut endpoint: F) -> GrpcChannel
    where
        F: FnMut(&Instance) -> Option<Endpoint> + Send + 'static,
    {
        let upstreams = Upstreams::new(reader, options.serving, move |instance| {
            endpoint(instance).map(|endpoint| endpoint.connect_lazy())
        });
        GrpcChannel {
            upstreams,
            idempotent: options.idempotent,
            max_request_size: options.max_request_size,
        }
    }

    /// The pool behind the channel: its outlier detector and what may be picked now.
    pub fn upstreams(&self) -> &Upstreams<Channel> {
        &self.upstreams
    }
}

impl Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<Body>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let upstreams = self.upstreams.clone();
        let retryable = self.idempotent || request.extensions().get::<Idempotent>().is_some();
        let limit = self.max_request_size;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let status = if e.is::<http_body_util::LengthLimitError>() {
                        tonic::Status::resource_exhausted(format!(
                            "the request is larger than the {limit} bytes a retrying channel buffers"
                        ))
                    } else {
                        tonic::Status::from_error(e)
                    };
                    return Ok(status.into_http());
                }
            };
            let served = upstreams
                .send(retryable, |_instance, channel| {
                    let mut request = http::Request::new(Body::new(Full::new(bytes.clone())));
                    *request.method_mut() = parts.method.clone();
                    *request.uri_mut() = parts.uri.clone();
                    *request.version_mut() = parts.version;
                    *request.headers_mut() = parts.headers.clone();
                    try_call(channel, request)
                })
                .await;
            Ok(match served {
                Ok(response) => response,
                Err(unserved @ Unserved::DeadlineExceeded { .. }) => {
                    tonic::Status::deadline_exceeded(unserved.to_string()).into_http()
                }
                Err(unserved) => tonic::Status::unavailable(unserved.to_string()).into_http(),
            })
        })
    }
}

/// One try of a call on `channel`, classified.
async fn try_call(
    mut channel: Channel,
    request: http::Request<Body>,
) -> Tried<http::Response<Body>> {
    let response = match channel.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(e) => Err(e),
    };
    match response {
        Ok(response) => {
            let unavailable = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"14");
            let gateway_error = matches!(response.status().as_u16(), 502..=504);
            if unavailable || gateway_error {
                Tried::Failed(Failure::Error, Some(response))
            } else {
                Tried::Answered(response)
            }
        }
        Err(e) => Tried::Failed(transport_failure(&e), None),
    }
}

/// How a transport error failed: [`Failure::Refused`] only when the connection could
/// not be made (tonic's [`tonic::ConnectError`] is in the error's chain: refused,
/// unreachable, or the connect timed out), so only then is a call that is not
/// idempotent sent again; anything else (a reset, an I/O error on an established
/// connection, even a timed-out one) may have reached the instance.
pub(crate) fn transport_failure(error: &(dyn StdError + 'static)) -> Failure {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return Failure::Refused;
        }
        source = e.source();
    }
    Failure::Reset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovery, Registrar};
    use kvstore_core::Store;
    use std::sync::Arc;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// Calls that are not idempotent are retried on another instance when their
    /// instance refused the connection (it never saw them), and never otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_is_not_idempotent_is_retried_only_when_its_connection_was_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().to_string();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let _server = AbortOnDropHandle::new(tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        ));
        let closed = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        };
        let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
        let registrar = Registrar::new(store.clone());
        let ttl = Duration::from_secs(60);
        let _dead = registrar
            .register(Instance::new("svc", "dead", closed), ttl)
            .await
            .unwrap();
        let _live = registrar
            .register(Instance::new("svc", "live", live), ttl)
            .await
            .unwrap();
        let set = Discovery::new(store).watch("svc").await.unwrap();
        assert_eq!(set.instances().len(), 2);
        let channel = set.into_grpc_channel(GrpcOptions::default());
        let mut client = HealthClient::new(channel.clone());
        // Until the dead instance has been picked (half the picks, at random) and more.
        for _ in 0..100 {
            let reply = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            assert!(reply.is_ok(), "{reply:?}");
        }
        assert_eq!(channel.upstreams().detector().ejected(), ["dead"]);
    }

    #[test]
    fn only_a_connect_error_counts_as_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        assert_eq!(transport_failure(&connect), Failure::Refused);
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(
            transport_failure(&timed_out),
            Failure::Reset,
            "on an established connection"
        );
    }
}
