//! An HTTP gateway: each request goes to a live instance of a service that can serve
//! it, through kvstore-discovery's [`Upstreams`]: the less loaded of two random `Up`
//! instances, skipping instances ejected for refusing, resetting, hanging or failing
//! (outlier ejection), and retried on another instance when it failed and may be sent
//! again (idempotent methods, or an `idempotency-key` header), within a per-try timeout,
//! an overall deadline and a retry budget. Optionally it also checks every instance
//! with `GET {path}` and keeps failing ones out ([`GatewayOptions::health_check_path`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvstore_discovery::{
    ActiveHealth, ActiveHealthOptions, Failure, HealthCheck, Instance, InstanceSet, ServingOptions,
    Tried, Unserved, Upstreams,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::SERVED_BY;

/// The header that marks a request as safe to apply twice (the IETF
/// `Idempotency-Key` header), so the gateway retries it like an idempotent method.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Default [`GatewayOptions::max_body`]: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Default [`GatewayOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How the gateway forwards.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Tries, timeouts, retry budget and outlier ejection.
    pub serving: ServingOptions,
    /// The largest request body, buffered so the request can be retried; a larger one
    /// is answered 413.
    pub max_body: usize,
    /// How long connecting to an instance may take (a connect that times out is
    /// retried elsewhere: it never reached the instance).
    pub connect_timeout: Duration,
    /// Check every `Up` instance actively with `GET {path}` (passing on 2xx), as
    /// `active_health` says, keeping failing ones out of the pick set. Default none.
    pub health_check_path: Option<String>,
    /// How active health checks run, with `health_check_path`.
    pub active_health: ActiveHealthOptions,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            serving: ServingOptions::default(),
            max_body: DEFAULT_MAX_BODY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            health_check_path: None,
            active_health: ActiveHealthOptions::default(),
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Routes {
    upstreams: Upstreams<HttpClient>,
    max_body: usize,
}

/// Serve on `listener`, forwarding each request to an instance of `instances` as the
/// [module docs](self) say. Answers what the instance answered; 503 when no instance is
/// `Up` or none could be reached, 502 when the connection broke, 504 when no answer
/// came in time, 413 for a body over [`GatewayOptions::max_body`]. With `metrics`,
/// `GET /metrics` answers the Prometheus text format instead of being forwarded. Stops
/// (and stops following the service) when the returned task is aborted.
pub fn serve(
    listener: TcpListener,
    instances: InstanceSet,
    options: GatewayOptions,
    metrics: Option<PrometheusHandle>,
) -> JoinHandle<std::io::Result<()>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.connect_timeout));
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let checks = options.health_check_path.map(|path| {
        (
            HttpCheck {
                client: client.clone(),
                path,
            },
            options.active_health,
        )
    });
    let upstreams = Upstreams::new(instances.reader(), options.serving, move |_: &Instance| {
        Some(client.clone())
    });
    let active = checks.map(|(check, active)| {
        ActiveHealth::start(
            instances.reader(),
            upstreams.detector().clone(),
            check,
            active,
        )
    });
    let routes = Arc::new(Routes {
        upstreams,
        max_body: options.max_body,
    });
    let mut app = Router::new();
    if let Some(metrics) = metrics {
        app = app.route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    }
    let app = app.fallback(forward).with_state(routes);
    tokio::spawn(async move {
        // The checks run as long as the gateway serves.
        let _active = active;
        axum::serve(listener, app).await
    })
}

/// An active health check: `GET {path}` on the instance passes on a 2xx answer.
struct HttpCheck {
    client: HttpClient,
    path: String,
}

impl HealthCheck for HttpCheck {
    fn check(&self, instance: &Instance) -> BoxFuture<'static, bool> {
        let client = self.client.clone();
        let uri = format!("http://{}{}", instance.address, self.path);
        Box::pin(async move {
            let Ok(uri) = uri.parse::<hyper::Uri>() else {
                return false;
            };
            let mut request = hyper::Request::new(Full::new(Bytes::new()));
            *request.uri_mut() = uri;
            client
                .request(request)
                .await
                .is_ok_and(|response| response.status().is_success())
        })
    }
}

/// Whether a request may be applied twice: an idempotent method (RFC 9110 §9.2.2), or
/// marked with an `idempotency-key` header.
fn retryable(parts: &Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || parts.headers.contains_key(IDEMPOTENCY_KEY)
}

async fn forward(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, routes.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body could not be read within {} bytes: {e}\n",
                    routes.max_body
                ),
            )
                .into_response();
        }
    };
    let retryable = retryable(&parts);
    let served = routes
        .upstreams
        .send(retryable, |instance, client| {
            try_forward(client, instance, &parts, body.clone())
        })
        .await;
    match served {
        Ok(response) => response,
        Err(unserved) => {
            let status = match &unserved {
                unserved if unserved.nothing_reached() => StatusCode::SERVICE_UNAVAILABLE,
                Unserved::Failed {
                    failure: Failure::Reset,
                    ..
                } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::GATEWAY_TIMEOUT,
            };
            (status, format!("{unserved}\n")).into_response()
        }
    }
}

/// One try: forward to `instance`, naming it in `x-served-by`; a 5xx answer is a
/// retryable failure that carries the answer.
async fn try_forward(
    client: HttpClient,
    instance: Arc<Instance>,
    parts: &Parts,
    body: Bytes,
) -> Tried<Response> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match format!("http://{}{path}", instance.address).parse() {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(instance = %instance.id, address = %instance.address, error = %e, "not a usable address");
            return Tried::Failed(Failure::Refused, None);
        }
    };
    let mut upstream = hyper::Request::new(Full::new(body));
    *upstream.method_mut() = parts.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = parts.headers.clone();
    upstream.headers_mut().remove(hyper::header::HOST);
    match client.request(upstream).await {
        Ok(response) => {
            let failed = response.status().is_server_error();
            let mut response = response.map(Body::new);
            if let Ok(value) = HeaderValue::from_str(&instance.id) {
                response.headers_mut().insert(SERVED_BY, value);
            }
            if failed {
                Tried::Failed(Failure::Error, Some(response))
            } else {
                Tried::Answered(response)
            }
        }
        Err(e) if e.is_connect() => Tried::Failed(Failure::Refused, None),
        Err(e) => {
            tracing::debug!(instance = %instance.id, error = %e, "forward failed");
            Tried::Failed(Failure::Reset, None)
        }
    }
}
