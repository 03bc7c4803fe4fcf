//! An HTTP gateway: each request goes to an `Up` instance of a service, found through
//! kvstore discovery and chosen by tower's power-of-two-choices balancer (the less
//! loaded of two random instances, by requests in flight).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvstore_discovery::{Instance, InstanceReader, InstanceSet, Status};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::SERVED_BY;

/// Requests that may wait for the balancer at once.
const QUEUE: usize = 1024;
/// How long a request may wait for an instance to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

type Balanced = BoxCloneSyncService<Request, Response, BoxError>;

struct Routes {
    instances: InstanceReader,
    balancer: Balanced,
}

/// Serve on `listener`, forwarding each request to an `Up` instance of `instances`
/// picked by tower's p2c balancer over [`InstanceSet::into_discover`]. Answers 503 when
/// no instance is `Up`, 502 when the picked one fails (saying which in `x-served-by`),
/// 504 when no instance became ready in time. With `metrics`, `GET /metrics` answers
/// the Prometheus text format instead of being forwarded. Stops (and stops following
/// the service) when the returned task is aborted.
pub fn serve(
    listener: TcpListener,
    instances: InstanceSet,
    metrics: Option<PrometheusHandle>,
) -> JoinHandle<std::io::Result<()>> {
    let reader = instances.reader();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let discover = instances.into_discover(move |instance: &Instance| {
        Some(Upstream {
            id: instance.id.clone(),
            address: instance.address.clone(),
            client: client.clone(),
        })
    });
    let balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));
    let routes = Arc::new(Routes {
        instances: reader,
        balancer: BoxCloneSyncService::new(Buffer::new(balance, QUEUE)),
    });
    let mut app = Router::new();
    if let Some(metrics) = metrics {
        app = app.route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    }
    let app = app.fallback(forward).with_state(routes);
    tokio::spawn(async move { axum::serve(listener, app).await })
}

async fn forward(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    let any_up = routes
        .instances
        .instances()
        .iter()
        .any(|instance| instance.status == Status::Up);
    if !any_up {
        return (StatusCode::SERVICE_UNAVAILABLE, "no instance is up\n").into_response();
    }
    let call = routes.balancer.clone().oneshot(request);
    match tokio::time::timeout(READY_TIMEOUT, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("balancer failed: {e}\n")).into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("no instance was ready within {READY_TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

/// One instance, as a service: forwards a request to its address and names it in
/// `x-served-by`. A failed forward is a 502 response, not an error, so the balancer
/// keeps the instance (discovery removes it when it is gone).
#[derive(Clone)]
struct Upstream {
    id: String,
    address: String,
    client: Client<HttpConnector, Body>,
}

impl Service<Request> for Upstream {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Upstream {
            id,
            address,
            client,
        } = self.clone();
        Box::pin(async move {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri = format!("http://{address}{path}");
            let (parts, body) = request.into_parts();
            let mut upstream = Request::from_parts(parts, body);
            let mut response = match uri.parse() {
                Ok(uri) => {
                    *upstream.uri_mut() = uri;
                    match client.request(upstream).await {
                        Ok(response) => response.map(Body::new),
                        Err(e) => {
                            (StatusCode::BAD_GATEWAY, format!("{id} failed: {e}\n")).into_response()
                        }
                    }
                }
                Err(e) => (
                    StatusCode::BAD_GATEWAY,
                    format!("bad address {address}: {e}\n"),
                )
                    .into_response(),
            };
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(SERVED_BY, value);
            }
            Ok(response)
        })
    }
}
