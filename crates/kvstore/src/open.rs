//! [`open`]: a store from a URL.

use std::sync::Arc;

use kvstore_core::{Error, Result, Store};

/// Open the store a URL names, as `Arc<dyn Store>`.
///
/// - `memory://` — a new in-memory store; `?namespace=NAME` roots its keys.
/// - `etcd://host:port[,host:port...][/namespace]` — etcd v3 (feature `etcd`).
/// - `redis://[user:password@]host:port[/db][?namespace=NAME]` (or `rediss://` for
///   TLS) — Redis (feature `redis`).
///
/// # Errors
/// [`Error::Config`] for a malformed URL, an unknown scheme, or a scheme whose feature
/// is not compiled in, naming the problem; the backend's connection errors
/// (`Unavailable`, `Auth`) otherwise.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    let (scheme, _rest) = url.split_once("://").ok_or_else(|| Error::Config {
        message: format!("{url:?} is not a store URL: expected SCHEME://..., e.g. memory://"),
    })?;
    match scheme {
        "memory" => open_memory(url),
        "etcd" => open_etcd(url).await,
        "redis" | "rediss" => open_redis(url).await,
        other => Err(Error::Config {
            message: format!(
                "unknown store scheme {other:?} in {url:?}: expected memory://, etcd:// or redis://"
            ),
        }),
    }
}

#[cfg(not(all(feature = "memory", feature = "etcd", feature = "redis")))]
fn feature_off(scheme: &str, feature: &str) -> Error {
    Error::Config {
        message: format!(
            "{scheme}:// needs the `{feature}` feature of the kvstore crate, which is not enabled"
        ),
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &str) -> Result<Arc<dyn Store>> {
    let config = kvstore_etcd::EtcdConfig::from_url(url)?;
    Ok(Arc::new(kvstore_etcd::EtcdStore::connect(config).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_url: &str) -> Result<Arc<dyn Store>> {
    Err(feature_off("etcd", "etcd"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn Store>> {
    let config = kvstore_redis::RedisConfig::from_url(url)?;
    Ok(Arc::new(kvstore_redis::RedisStore::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once("://").map_or("redis", |(scheme, _)| scheme);
    Err(feature_off(scheme, "redis"))
}

#[cfg(feature = "memory")]
fn open_memory(url: &str) -> Result<Arc<dyn Store>> {
    let parsed = url::Url::parse(url).map_err(|e| Error::Config {
        message: format!("malformed memory URL {url:?}: {e}"),
    })?;
    if parsed.host_str().is_some_and(|h| !h.is_empty()) || !matches!(parsed.path(), "" | "/") {
        return Err(Error::Config {
            message: format!("memory URL {url:?} takes no host or path: use memory://"),
        });
    }
    let mut config = kvstore_memory::MemoryConfig::default();
    for (name, value) in parsed.query_pairs() {
        match &*name {
            "namespace" => config.namespace = value.into_owned(),
            other => {
                return Err(Error::Config {
                    message: format!("unknown memory URL option {other:?} in {url:?}"),
                });
            }
        }
    }
    Ok(Arc::new(kvstore_memory::MemoryStore::with_config(config)))
}

#[cfg(not(feature = "memory"))]
fn open_memory(_url: &str) -> Result<Arc<dyn Store>> {
    Err(feature_off("memory", "memory"))
}
