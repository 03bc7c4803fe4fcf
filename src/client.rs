//! A small HTTP client for the demos and tests: one request, with who served it.

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::SERVED_BY;

/// What a GET returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `x-served-by` header: the instance that served (or was tried).
    pub served_by: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// An HTTP/1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Body>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl HttpClient {
    /// `GET url`.
    ///
    /// # Errors
    /// A malformed URL or a failed connection, as text.
    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(axum::http::Method::GET, url, "").await
    }

    /// `method url` with `body`.
    ///
    /// # Errors
    /// A malformed URL or a failed connection, as text.
    pub async fn send(
        &self,
        method: axum::http::Method,
        url: &str,
        body: &'static str,
    ) -> Result<Reply, String> {
        let request = axum::http::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Body::from(body))
            .map_err(|e| format!("bad request {method} {url}: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get(SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            served_by,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
