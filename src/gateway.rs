//! An HTTP gateway: each request goes to the next `Up` instance of a service, found
//! through kvstore discovery.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvstore_discovery::{Balancer, InstanceReader, RoundRobin};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::SERVED_BY;

struct Routes {
    instances: InstanceReader,
    balancer: RoundRobin,
    client: Client<HttpConnector, Body>,
}

/// Serve on `listener`, forwarding each request to an instance picked round-robin from
/// `instances`. Answers 503 when no instance is `Up`, 502 when the picked one fails;
/// both say which instance was tried in `x-served-by`.
pub fn serve(listener: TcpListener, instances: InstanceReader) -> JoinHandle<std::io::Result<()>> {
    let routes = Arc::new(Routes {
        instances,
        balancer: RoundRobin::default(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let app = Router::new().fallback(forward).with_state(routes);
    tokio::spawn(async move { axum::serve(listener, app).await })
}

async fn forward(State(routes): State<Arc<Routes>>, request: Request) -> Response {
    let instances = routes.instances.instances();
    let Some(target) = routes.balancer.pick(&instances) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no instance is up\n").into_response();
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("http://{}{path}", target.address);
    let (parts, body) = request.into_parts();
    let mut upstream = Request::from_parts(parts, body);
    let mut response = match uri.parse() {
        Ok(uri) => {
            *upstream.uri_mut() = uri;
            match routes.client.request(upstream).await {
                Ok(response) => response.map(Body::new),
                Err(e) => (
                    StatusCode::BAD_GATEWAY,
                    format!("{} failed: {e}\n", target.id),
                )
                    .into_response(),
            }
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("bad address {}: {e}\n", target.address),
        )
            .into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&target.id) {
        response.headers_mut().insert(SERVED_BY, value);
    }
    response
}
