//! An HTTP echo provider: answers every request with its instance id.

use axum::Router;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::SERVED_BY;

/// Serve `GET /*` on `listener`, answering `hello from {id}` with the `x-served-by`
/// header. The server runs until the returned task is aborted (a crash).
pub fn serve(listener: TcpListener, id: String) -> JoinHandle<std::io::Result<()>> {
    let app = Router::new().fallback(move || {
        let id = id.clone();
        async move {
            let mut response = format!("hello from {id}\n").into_response();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(SERVED_BY, value);
            }
            response
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await })
}
