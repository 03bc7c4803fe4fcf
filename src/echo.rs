//! An HTTP echo provider: answers every request with its instance id.
//!
//! The server owns its connections, so it can die the way a process does: [`EchoServer::crash`]
//! drops every connection at once (clients see them closed or reset, new connects are
//! refused), while [`EchoServer::shutdown`] stops accepting and lets in-flight requests
//! finish (axum's and hyper's graceful shutdown).

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::SERVED_BY;

/// A running echo server. Dropping it crashes it (as [`EchoServer::crash`]).
#[derive(Debug)]
pub struct EchoServer {
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Die at once, as a killed process: every connection is dropped mid-request and
    /// the port closes.
    pub fn crash(self) {
        self.task.abort();
    }

    /// Stop accepting connections, finish the requests in flight, close the
    /// connections, and return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Serve every method and path on `listener`, answering `hello from {id}` with the
/// `x-served-by` header and status `status` (200 for a healthy provider; a 5xx makes
/// one that fails every request).
pub fn serve(listener: TcpListener, id: String, status: StatusCode) -> EchoServer {
    let app = Router::new().fallback(move || {
        let id = id.clone();
        async move {
            let mut response = (status, format!("hello from {id}\n")).into_response();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(SERVED_BY, value);
            }
            response
        }
    });
    let (stop, stopped) = oneshot::channel();
    EchoServer {
        task: tokio::spawn(run(listener, app, stopped)),
        stop: Some(stop),
    }
}

/// Accept connections until told to stop, each served by a task of this one's, so
/// aborting this task drops them all.
async fn run(listener: TcpListener, app: Router, mut stop: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = &mut stop => break,
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}
