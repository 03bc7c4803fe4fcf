//! [`RedisConfig`]: server URL, namespace, timeouts and limits.

use std::time::Duration;

use kvstore_core::{Error, Key, Result, redact_url};

/// Default time allowed to connect: 5 s (docs/CONTRACT.md §7).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one request: 5 s (the redis crate's own default, 500 ms, is too
/// short for a script that expires many leases).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default namespace: keys live under the hash tag `{kvstore}`.
pub const DEFAULT_NAMESPACE: &str = "kvstore";
/// Default approximate length of the change stream (`XADD MAXLEN ~`): how far a watcher
/// may fall behind before it gets a `Resync`.
pub const DEFAULT_STREAM_MAX_LEN: u64 = 100_000;
/// Default largest value: 1.5 MiB, as etcd, so code moves between backends unchanged.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1536 * 1024;
/// Default time a write waits for its replicas when [`RedisConfig::wait_replicas`] is
/// set: 1 s.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach Redis and where keys live.
///
/// Its `Debug` shows the URL with the password replaced by `***` ([`redact_url`]) and no
/// certificate bytes.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// All keys of the store live under the hash tag `{namespace}`; must be a valid key
    /// without `{`/`}`. Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Time allowed to connect. Default 5 s.
    pub connect_timeout: Duration,
    /// Deadline of each request. Default 5 s.
    pub response_timeout: Duration,
    /// Approximate length the change stream is trimmed to. Default 100,000.
    pub stream_max_len: u64,
    /// Largest value accepted, in bytes. Default 1.5 MiB.
    pub max_value_size: usize,
    /// Opt-in durability: after every write (puts, deletes, lease grants, keep-alives and
    /// revokes), wait with Redis's `WAIT` until this many replicas have it. A write that
    /// fewer replicas acknowledged within [`RedisConfig::wait_timeout`] fails with
    /// `Unavailable` (it is applied on the primary, but a failover may lose it). Default
    /// 0: a write is acknowledged by the primary alone, and a failover to a lagging
    /// replica can lose it (the watchers then resync).
    pub wait_replicas: u32,
    /// How long a write waits for [`RedisConfig::wait_replicas`]. Must be shorter than
    /// the response timeout. Default [`DEFAULT_WAIT_TIMEOUT`].
    pub wait_timeout: Duration,
    /// Refuse to connect unless the server's `maxmemory-policy` is `noeviction`. An
    /// evicting policy can silently drop keys (data, leases, the revision counter) under
    /// memory pressure; by default that is only logged as a warning at connect (a
    /// missing revision counter is then an error before any write, never a reused
    /// revision). Default false.
    pub require_noeviction: bool,
    /// PEM CA certificate to trust for `rediss://` (feature `tls`); the system roots
    /// otherwise.
    #[cfg(feature = "tls")]
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("RedisConfig");
        debug
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("stream_max_len", &self.stream_max_len)
            .field("max_value_size", &self.max_value_size)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("require_noeviction", &self.require_noeviction);
        #[cfg(feature = "tls")]
        debug.field("ca_pem", &self.ca_pem.as_ref().map(|_| "***"));
        debug.finish()
    }
}

impl RedisConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            stream_max_len: DEFAULT_STREAM_MAX_LEN,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            require_noeviction: false,
            #[cfg(feature = "tls")]
            ca_pem: None,
        }
    }

    /// Parse `redis://[user:password@]host:port[/db][?options]` (or `rediss://`).
    ///
    /// Options: `namespace=NAME`, `connect_timeout=MS`, `response_timeout=MS`,
    /// `wait_replicas=N` and `wait_timeout=MS` (opt-in durability, see
    /// [`RedisConfig::wait_replicas`]), `require_noeviction=true|false`. The kvstore
    /// options are taken out of the query; `protocol` goes to the redis client.
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part, quoting the URL without its password
    /// ([`redact_url`]).
    pub fn from_url(raw: &str) -> Result<RedisConfig> {
        let bad = |what: String| Error::Config {
            message: format!("invalid redis URL {:?}: {what}", redact_url(raw)),
        };
        let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(bad("expected redis:// or rediss://".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("a host is required".into()));
        }
        let db = url.path().trim_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(bad(format!(
                "the path must be a database number, got {db:?}"
            )));
        }
        let mut config = RedisConfig::new(String::new());
        let mut passthrough = Vec::new();
        for (name, value) in url.query_pairs() {
            let millis = || {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad(format!("{name} must be milliseconds, got {value:?}")))
            };
            match &*name {
                "namespace" => config.namespace = value.to_string(),
                "connect_timeout" => config.connect_timeout = millis()?,
                "response_timeout" => config.response_timeout = millis()?,
                "wait_timeout" => config.wait_timeout = millis()?,
                "wait_replicas" => {
                    config.wait_replicas = value.parse().map_err(|_| {
                        bad(format!("wait_replicas must be a count, got {value:?}"))
                    })?;
                }
                "require_noeviction" => {
                    config.require_noeviction = value.parse().map_err(|_| {
                        bad(format!(
                            "require_noeviction must be true or false, got {value:?}"
                        ))
                    })?;
                }
                "protocol" => passthrough.push((name.to_string(), value.to_string())),
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        if passthrough.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(passthrough);
        }
        config.url = url.to_string();
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration before connecting.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid namespace, a zero timeout, or a `wait_timeout` not
    /// shorter than the response timeout.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        if Key::new(&self.namespace).is_err() || self.namespace.contains(['{', '}']) {
            return bad(format!("invalid redis namespace {:?}", self.namespace));
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return bad("redis timeouts must be greater than zero".into());
        }
        if self.wait_replicas > 0 && self.wait_timeout >= self.response_timeout {
            return bad(format!(
                "wait_timeout ({:?}) must be shorter than response_timeout ({:?})",
                self.wait_timeout, self.response_timeout
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvstore_options_are_taken_out_of_the_url() {
        let config =
            RedisConfig::from_url("redis://u:p@h:6380/2?namespace=app&connect_timeout=250")
                .unwrap();
        assert_eq!(config.url, "redis://u:p@h:6380/2");
        assert_eq!(config.namespace, "app");
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn malformed_urls_name_the_problem() {
        for (url, needle) in [
            ("h:6379", "redis://"),
            ("http://h:6379", "redis://"),
            ("redis://h:6379/zero", "database number"),
            ("redis://h:6379?colour=1", "colour"),
            ("redis://h:6379?namespace={x}", "namespace"),
        ] {
            match RedisConfig::from_url(url) {
                Err(Error::Config { message }) => {
                    assert!(message.contains(needle), "{url}: {message}")
                }
                other => panic!("{url}: expected Config, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_does_not_show_the_password() {
        let config = RedisConfig::from_url("redis://u:hunter2@127.0.0.1:1/0").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis://u:***@127.0.0.1:1/0"), "{debug}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("hunter2"), "{pretty}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn debug_does_not_show_certificate_bytes() {
        let mut config = RedisConfig::new("rediss://h:6379");
        config.ca_pem = Some(b"-----BEGIN CERTIFICATE-----secret-bytes".to_vec());
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret-bytes") && !debug.contains("45, 45"),
            "{debug}"
        );
        assert!(debug.contains(r#"ca_pem: Some("***")"#), "{debug}");
    }

    #[test]
    fn errors_about_a_url_do_not_show_its_password() {
        for url in [
            "redis://u:hunter2@h:6379/zero",
            "redis://u:hunter2@h:notaport/0",
            "redis://u:hunter2@h:6379?colour=1",
            "redis://u:hunter2@h:6379?connect_timeout=soon",
            "redis://u:hunter2@:6379/0",
            "http://u:hunter2@h:6379",
            "u:hunter2@h:6379",
        ] {
            match RedisConfig::from_url(url) {
                Err(error) => {
                    let shown = format!("{error} {error:?}");
                    assert!(!shown.contains("hunter2"), "{url}: {shown}");
                    assert!(shown.contains("***"), "{url}: {shown}");
                }
                Ok(config) => panic!("{url}: expected an error, got {config:?}"),
            }
        }
    }
}
