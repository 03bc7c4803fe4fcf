//! [`open`] and [`open_with`]: a store from a URL, through a registry of schemes that a
//! third-party backend joins with [`register_scheme`].

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use kvstore_core::layer::{LayerExt, ObserveLayer};
use kvstore_core::redact_url;
use kvstore_core::{Error, Result, Store};

/// Settings that override what a URL says, for programs (like `kvctl`) that take them
/// as separate flags. Unset fields keep the URL's value or the backend's default.
///
/// Its `Debug` shows the password and the certificate as `***`. `#[non_exhaustive]`:
/// start from `OpenOptions::default()` and set fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Root of the store's keys (etcd: key prefix; Redis: hash tag; memory: prefix).
    pub namespace: Option<String>,
    /// Time allowed to reach the server (default 5 s).
    pub connect_timeout: Option<Duration>,
    /// Deadline of each request.
    pub request_timeout: Option<Duration>,
    /// Username and password (etcd authentication, Redis ACL).
    pub credentials: Option<(String, String)>,
    /// PEM CA certificate to trust for TLS (feature `tls`): etcd over https, `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
    /// Wrap the store in [`ObserveLayer`] (a tracing span and metrics per call). Default
    /// `true`.
    pub observe: bool,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            namespace: None,
            connect_timeout: None,
            request_timeout: None,
            credentials: None,
            ca_pem: None,
            observe: true,
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "***"))
            .field("observe", &self.observe)
            .finish()
    }
}

/// Open the store a URL names, as `Arc<dyn Store>`.
///
/// - `memory://` — a new in-memory store; `?namespace=NAME` roots its keys.
/// - `etcd://[user:password@]host:port[,host:port...][/namespace]` — etcd v3 (feature
///   `etcd`).
/// - `redis://[user:password@]host:port[/db][?namespace=NAME]` (or `rediss://` for
///   TLS) — Redis (feature `redis`); `redis+cluster://h1:p1,h2:p2[?..]` a Redis
///   Cluster; `redis+sentinel://s1:p1[,s2:p2]/master[/db][?..]` the primary Sentinel
///   names, followed across failovers.
/// - `zookeeper://[user:password@]host:port[,host:port...][/namespace][?..]` — a
///   ZooKeeper ensemble (feature `zookeeper`); the password is `digest` authentication.
///
/// # Errors
/// [`Error::Config`] for a malformed URL, an unknown scheme, or a scheme whose feature
/// is not compiled in, naming the problem; the backend's connection errors
/// (`Unavailable`, `Auth`) otherwise. Messages quote the URL without its password
/// ([`redact_url`]).
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with(url, &OpenOptions::default()).await
}

/// [`open`], with `options` overriding the URL.
///
/// # Errors
/// As [`open`]; [`Error::Config`] for an option the backend cannot take (e.g. a CA
/// certificate without the `tls` feature).
pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    let (scheme, _rest) = url.split_once("://").ok_or_else(|| Error::Config {
        message: format!(
            "{:?} is not a store URL: expected SCHEME://..., e.g. memory://",
            redact_url(url)
        ),
    })?;
    let opener = schemes().get(scheme).cloned();
    let Some(opener) = opener else {
        // Both quoted from the redacted URL: text before `://` that is no valid scheme
        // may hold a password.
        let shown = redact_url(url);
        let other = shown.split_once("://").map_or("", |(scheme, _)| scheme);
        let known: Vec<String> = schemes().keys().map(|s| format!("{s}://")).collect();
        return Err(Error::Config {
            message: format!(
                "unknown store scheme {other:?} in {shown:?}: expected one of {}",
                known.join(", ")
            ),
        });
    };
    let store = opener(url.to_owned(), options.clone()).await?;
    Ok(if options.observe {
        store.layer(ObserveLayer)
    } else {
        store
    })
}

/// What [`register_scheme`] takes: opens a store from the whole URL and the options
/// (which override the URL; see [`OpenOptions`]).
pub type Opener =
    Arc<dyn Fn(String, OpenOptions) -> BoxFuture<'static, Result<Arc<dyn Store>>> + Send + Sync>;

/// The schemes [`open`] knows: the built-in backends compiled in, then those registered.
static SCHEMES: LazyLock<RwLock<BTreeMap<String, Opener>>> = LazyLock::new(|| {
    let mut schemes: BTreeMap<String, Opener> = BTreeMap::new();
    let mut add = |scheme: &str, opener: Opener| {
        schemes.insert(scheme.to_owned(), opener);
    };
    add(
        "memory",
        Arc::new(|url, options| Box::pin(async move { open_memory(&url, &options) })),
    );
    add(
        "etcd",
        Arc::new(|url, options| Box::pin(async move { open_etcd(&url, &options).await })),
    );
    for scheme in ["redis", "rediss", "redis+cluster", "redis+sentinel"] {
        add(
            scheme,
            Arc::new(|url, options| Box::pin(async move { open_redis(&url, &options).await })),
        );
    }
    add(
        "zookeeper",
        Arc::new(|url, options| Box::pin(async move { open_zookeeper(&url, &options).await })),
    );
    RwLock::new(schemes)
});

fn schemes() -> std::sync::RwLockReadGuard<'static, BTreeMap<String, Opener>> {
    SCHEMES
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Teach [`open`] (and so `kvctl` and every program that opens stores by URL) a new
/// scheme: `register_scheme("consul", opener)` makes `open("consul://...")` call
/// `opener`. This is how a third-party backend plugs in; docs/writing-a-backend.md shows
/// one end to end.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kvstore::Result<()> {
/// use std::sync::Arc;
/// use kvstore::Store;
///
/// kvstore::register_scheme("scratch", |_url, _options| async {
///     Ok(Arc::new(kvstore::memory::MemoryStore::new()) as Arc<dyn Store>)
/// })?;
/// let store = kvstore::open("scratch://anything").await?;
/// assert_eq!(store.backend(), "memory");
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Config`] when `scheme` is not a valid URL scheme (a letter, then letters,
/// digits, `+`, `-` or `.`) or is already known (built-in or registered before): a
/// scheme means one backend for the life of the process.
pub fn register_scheme<F, Fut>(scheme: &str, opener: F) -> Result<()>
where
    F: Fn(String, OpenOptions) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn Store>>> + Send + 'static,
{
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(Error::Config {
            message: format!("{scheme:?} is not a URL scheme"),
        });
    }
    let mut schemes = SCHEMES
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if schemes.contains_key(scheme) {
        return Err(Error::Config {
            message: format!("the store scheme {scheme:?} is already registered"),
        });
    }
    let opener: Opener = Arc::new(move |url, options| Box::pin(opener(url, options)));
    schemes.insert(scheme.to_owned(), opener);
    Ok(())
}

#[cfg(not(all(
    feature = "memory",
    feature = "etcd",
    feature = "redis",
    feature = "zookeeper"
)))]
fn feature_off(scheme: &str, feature: &str) -> Error {
    Error::Config {
        message: format!(
            "{scheme}:// needs the `{feature}` feature of the kvstore crate, which is not enabled"
        ),
    }
}

#[cfg(any(feature = "etcd", feature = "redis"))]
fn tls_unavailable(options: &OpenOptions) -> Result<()> {
    if options.ca_pem.is_some() && !cfg!(feature = "tls") {
        return Err(Error::Config {
            message: "a CA certificate needs the `tls` feature of the kvstore crate".into(),
        });
    }
    Ok(())
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    tls_unavailable(options)?;
    let mut config = kvstore_etcd::EtcdConfig::from_url(url)?;
    if let Some(namespace) = &options.namespace {
        config.namespace = namespace.clone();
    }
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    if let Some(timeout) = options.request_timeout {
        config.request_timeout = timeout;
    }
    if let Some((username, password)) = &options.credentials {
        config.credentials = Some(kvstore_etcd::Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    #[cfg(feature = "tls")]
    if let Some(ca) = &options.ca_pem {
        config.tls = Some(kvstore_etcd::TlsConfig::with_ca(ca.clone()));
    }
    Ok(Arc::new(kvstore_etcd::EtcdStore::connect(config).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_url: &str, _options: &OpenOptions) -> Result<Arc<dyn Store>> {
    Err(feature_off("etcd", "etcd"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    tls_unavailable(options)?;
    let mut config = kvstore_redis::RedisConfig::from_url(url)?;
    if let Some(namespace) = &options.namespace {
        config.namespace = namespace.clone();
    }
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    if let Some(timeout) = options.request_timeout {
        config.request_timeout = timeout;
    }
    if let Some((username, password)) = &options.credentials {
        config.set_credentials(username, password)?;
    }
    #[cfg(feature = "tls")]
    if let Some(ca) = &options.ca_pem {
        config.ca_pem = Some(ca.clone());
    }
    config.validate()?;
    Ok(Arc::new(kvstore_redis::RedisStore::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str, _options: &OpenOptions) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once("://").map_or("redis", |(scheme, _)| scheme);
    Err(feature_off(scheme, "redis"))
}

#[cfg(feature = "zookeeper")]
async fn open_zookeeper(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    if options.ca_pem.is_some() {
        return Err(Error::Config {
            message: "zookeeper:// does not support TLS".into(),
        });
    }
    let mut config = kvstore_zookeeper::ZooKeeperConfig::from_url(url)?;
    if let Some(namespace) = &options.namespace {
        config.namespace = namespace.clone();
    }
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout = timeout;
    }
    if let Some(timeout) = options.request_timeout {
        config.request_timeout = timeout;
    }
    if let Some(credentials) = &options.credentials {
        config.credentials = Some(credentials.clone());
    }
    config.validate()?;
    Ok(Arc::new(
        kvstore_zookeeper::ZooKeeperStore::connect(config).await?,
    ))
}

#[cfg(not(feature = "zookeeper"))]
async fn open_zookeeper(_url: &str, _options: &OpenOptions) -> Result<Arc<dyn Store>> {
    Err(feature_off("zookeeper", "zookeeper"))
}

#[cfg(feature = "memory")]
fn open_memory(url: &str, options: &OpenOptions) -> Result<Arc<dyn Store>> {
    let parsed = url::Url::parse(url).map_err(|e| Error::Config {
        message: format!("malformed memory URL {:?}: {e}", redact_url(url)),
    })?;
    if parsed.host_str().is_some_and(|h| !h.is_empty()) || !matches!(parsed.path(), "" | "/") {
        return Err(Error::Config {
            message: format!(
                "memory URL {:?} takes no host or path: use memory://",
                redact_url(url)
            ),
        });
    }
    let mut config = kvstore_memory::MemoryConfig::default();
    for (name, value) in parsed.query_pairs() {
        match &*name {
            "namespace" => config.namespace = value.into_owned(),
            other => {
                return Err(Error::Config {
                    message: format!(
                        "unknown memory URL option {other:?} in {:?}",
                        redact_url(url)
                    ),
                });
            }
        }
    }
    if let Some(namespace) = &options.namespace {
        config.namespace = namespace.clone();
    }
    Ok(Arc::new(kvstore_memory::MemoryStore::with_config(config)))
}

#[cfg(not(feature = "memory"))]
fn open_memory(_url: &str, _options: &OpenOptions) -> Result<Arc<dyn Store>> {
    Err(feature_off("memory", "memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_options_does_not_show_the_password_or_certificate() {
        let options = OpenOptions {
            credentials: Some(("root".into(), "hunter2".into())),
            ca_pem: Some(b"certificate-bytes".to_vec()),
            ..OpenOptions::default()
        };
        let debug = format!("{options:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("certificate-bytes"), "{debug}");
        assert!(debug.contains(r#"Some(("root", "***"))"#), "{debug}");
    }
}
