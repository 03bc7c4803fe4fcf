//! [`RedisConfig`]: server URL, namespace, timeouts and limits.

use std::time::Duration;

use kvstore_core::redact_url;
use kvstore_core::{Error, Key, Result};

use crate::topology::{CLUSTER_SCHEME, SENTINEL_SCHEME, Topology};

/// Default time allowed to connect: 5 s ([contract §7](kvstore_core::contract#7-errors)).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one request: 5 s (the redis crate's own default, 500 ms, is too
/// short for a script that expires many leases).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default namespace: keys live under the hash tag `{kvstore}`.
pub const DEFAULT_NAMESPACE: &str = "kvstore";
/// Default approximate length of the change stream (`XADD MAXLEN ~`): how far a watcher
/// may fall behind before it gets a `Resync`.
pub const DEFAULT_HISTORY_CAPACITY: usize = 100_000;
/// Default approximate size in bytes the change stream is trimmed to: 64 MiB. Each entry
/// holds its value, so with large values this bound, not [`DEFAULT_HISTORY_CAPACITY`],
/// decides how far a watcher may fall behind before it gets a `Resync`.
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 64 << 20;
/// Default largest value: 1.5 MiB, as etcd, so code moves between backends unchanged.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1536 * 1024;
/// Default time a write waits for its replicas when [`RedisConfig::wait_replicas`] is
/// set: 1 s.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach Redis and where keys live.
///
/// Its `Debug` shows the URL with the password replaced by `***` ([`redact_url`]) and no
/// certificate bytes. `#[non_exhaustive]`: start from [`RedisConfig::new`] (or
/// [`RedisConfig::from_url`]) and set fields. With the `serde` feature it deserializes,
/// missing fields taking their defaults, durations written as `"5s"` or `"500ms"`;
/// `ca_pem` is set in code.
#[derive(Clone)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS),
    /// `redis+cluster://host:port[,host:port...]` or
    /// `redis+sentinel://host:port[,host:port...]/master[/db]` (see
    /// [`RedisConfig::from_url`]).
    pub url: String,
    /// All keys of the store live under the hash tag `{namespace}`; must be a valid key
    /// without `{`/`}`. Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Time allowed to connect. Default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub connect_timeout: Duration,
    /// Deadline of each request. Default 5 s. Named `request_timeout` as in the other
    /// backends and `OpenOptions`; its old name `response_timeout` is still accepted, in
    /// config files and as a URL option.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", alias = "response_timeout")
    )]
    pub request_timeout: Duration,
    /// Approximate length the change stream is trimmed to, in entries (`XADD MAXLEN ~`).
    /// Default 100,000. URL option `history_capacity`.
    #[cfg_attr(feature = "serde", serde(alias = "stream_max_len"))]
    pub history_capacity: usize,
    /// Approximate size the change stream is trimmed to, in bytes of server memory (as
    /// `MEMORY USAGE` estimates it, checked every 32nd revision); 0 for no bound in
    /// bytes. Default [`DEFAULT_HISTORY_MAX_BYTES`] (64 MiB). URL option
    /// `history_max_bytes`.
    #[cfg_attr(feature = "serde", serde(alias = "stream_max_bytes"))]
    pub history_max_bytes: u64,
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
    /// the request timeout. Default [`DEFAULT_WAIT_TIMEOUT`].
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
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
    #[cfg_attr(feature = "serde", serde(skip))]
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for RedisConfig {
    /// `redis://127.0.0.1:6379` and every default.
    fn default() -> RedisConfig {
        RedisConfig::new("redis://127.0.0.1:6379")
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("RedisConfig");
        debug
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("history_capacity", &self.history_capacity)
            .field("history_max_bytes", &self.history_max_bytes)
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
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            history_capacity: DEFAULT_HISTORY_CAPACITY,
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            require_noeviction: false,
            #[cfg(feature = "tls")]
            ca_pem: None,
        }
    }

    /// Parse a store URL:
    ///
    /// - `redis://[user:password@]host:port[/db][?options]` (or `rediss://` for TLS);
    /// - `redis+cluster://[user:password@]host:port[,host:port...][?options]`: a Redis
    ///   Cluster through any of these nodes;
    /// - `redis+sentinel://[user:password@]host:port[,host:port...]/master[/db][?options]`:
    ///   the primary these Sentinels name for `master`, followed across failovers.
    ///
    /// Options: `namespace=NAME`, `connect_timeout=MS`, `request_timeout=MS` (or
    /// `response_timeout=MS`, its old name),
    /// `wait_replicas=N` and `wait_timeout=MS` (opt-in durability, see
    /// [`RedisConfig::wait_replicas`]), `require_noeviction=true|false`. The kvstore
    /// options are taken out of the query; `protocol` goes to the redis client (single
    /// server only).
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part, quoting the URL without its password
    /// ([`redact_url`]).
    pub fn from_url(raw: &str) -> Result<RedisConfig> {
        let bad = |what: String| Error::Config {
            message: format!("invalid redis URL {:?}: {what}", redact_url(raw)),
        };
        let multi_host = raw.starts_with(&format!("{CLUSTER_SCHEME}://"))
            || raw.starts_with(&format!("{SENTINEL_SCHEME}://"));
        let mut config = RedisConfig::new(String::new());
        if multi_host {
            let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
            for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
                if !config.take_option(&name, &value).map_err(bad)? {
                    return Err(bad(format!("unknown option {name:?}")));
                }
            }
            Topology::parse(base)?;
            config.url = base.to_owned();
            config.validate()?;
            return Ok(config);
        }
        let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(bad(
                "expected redis://, rediss://, redis+cluster:// or redis+sentinel://".into(),
            ));
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
        let mut passthrough = Vec::new();
        for (name, value) in url.query_pairs() {
            if config.take_option(&name, &value).map_err(bad)? {
                continue;
            }
            match &*name {
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

    /// Put `username` and `password` into [`RedisConfig::url`] (percent-encoded),
    /// replacing any credentials it holds, for every URL form.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL has no `scheme://`.
    pub fn set_credentials(&mut self, username: &str, password: &str) -> Result<()> {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(Error::Config {
                message: format!("invalid redis URL {:?}", redact_url(&self.url)),
            });
        };
        let after_userinfo = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
        let encode = |text: &str| {
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        self.url = format!(
            "{scheme}://{}:{}@{after_userinfo}",
            encode(username),
            encode(password)
        );
        Ok(())
    }

    /// Take the kvstore URL option `name=value`; `Ok(false)` when it is not one.
    fn take_option(&mut self, name: &str, value: &str) -> std::result::Result<bool, String> {
        let millis = || {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name} must be milliseconds, got {value:?}"))
        };
        match name {
            "namespace" => self.namespace = value.to_owned(),
            "connect_timeout" => self.connect_timeout = millis()?,
            // `response_timeout` is the old name: URLs written with it keep working.
            "request_timeout" | "response_timeout" => self.request_timeout = millis()?,
            "wait_timeout" => self.wait_timeout = millis()?,
            // `stream_max_len` and `stream_max_bytes` are the old names.
            "history_capacity" | "stream_max_len" => {
                self.history_capacity = value
                    .parse()
                    .map_err(|_| format!("{name} must be a count, got {value:?}"))?;
            }
            "history_max_bytes" | "stream_max_bytes" => {
                self.history_max_bytes = value
                    .parse()
                    .map_err(|_| format!("{name} must be a count, got {value:?}"))?;
            }
            "wait_replicas" => {
                self.wait_replicas = value
                    .parse()
                    .map_err(|_| format!("wait_replicas must be a count, got {value:?}"))?;
            }
            "require_noeviction" => {
                self.require_noeviction = value.parse().map_err(|_| {
                    format!("require_noeviction must be true or false, got {value:?}")
                })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Check the configuration before connecting.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid namespace, a zero timeout, or a `wait_timeout` not
    /// shorter than the request timeout.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        if Key::new(&self.namespace).is_err() || self.namespace.contains(['{', '}']) {
            return bad(format!("invalid redis namespace {:?}", self.namespace));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("redis timeouts must be greater than zero".into());
        }
        if self.history_capacity == 0 {
            return bad("history_capacity must be greater than zero".into());
        }
        if self.wait_replicas > 0 && self.wait_timeout >= self.request_timeout {
            return bad(format!(
                "wait_timeout ({:?}) must be shorter than request_timeout ({:?})",
                self.wait_timeout, self.request_timeout
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "serde")]
    #[test]
    fn deserializes_with_defaults_and_readable_durations() {
        let config: RedisConfig = serde_json::from_str(
            r#"{"url": "redis://h:6379/2", "request_timeout": "750ms", "wait_replicas": 1}"#,
        )
        .unwrap();
        assert_eq!(config.url, "redis://h:6379/2");
        assert_eq!(config.request_timeout, Duration::from_millis(750));
        assert_eq!(config.wait_replicas, 1);
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        assert!(serde_json::from_str::<RedisConfig>(r#"{"uri": "redis://h"}"#).is_err());
    }

    /// Config files and URLs written before `response_timeout` became `request_timeout`.
    #[test]
    fn the_old_name_of_the_request_timeout_is_accepted() {
        #[cfg(feature = "serde")]
        {
            let config: RedisConfig =
                serde_json::from_str(r#"{"url": "redis://h", "response_timeout": "750ms"}"#)
                    .unwrap();
            assert_eq!(config.request_timeout, Duration::from_millis(750));
        }
        let config = RedisConfig::from_url("redis://h:6379?response_timeout=250").unwrap();
        assert_eq!(config.request_timeout, Duration::from_millis(250));
    }

    #[test]
    fn credentials_replace_those_of_any_url_form() {
        for (url, expected) in [
            ("redis://h:6379/0", "redis://u:p%40ss@h:6379/0"),
            ("redis://old:x@h:6379", "redis://u:p%40ss@h:6379"),
            (
                "redis+cluster://h1:1,h2:2",
                "redis+cluster://u:p%40ss@h1:1,h2:2",
            ),
            (
                "redis+sentinel://o:x@s:1/m",
                "redis+sentinel://u:p%40ss@s:1/m",
            ),
        ] {
            let mut config = RedisConfig::new(url);
            config.set_credentials("u", "p@ss").unwrap();
            assert_eq!(config.url, expected);
        }
    }

    #[test]
    fn cluster_and_sentinel_urls_keep_their_hosts_and_lose_the_options() {
        let cluster =
            RedisConfig::from_url("redis+cluster://h1:7000,h2:7001?namespace=app&wait_replicas=1")
                .unwrap();
        assert_eq!(cluster.url, "redis+cluster://h1:7000,h2:7001");
        assert_eq!(
            (cluster.namespace.as_str(), cluster.wait_replicas),
            ("app", 1)
        );
        let sentinel = RedisConfig::from_url("redis+sentinel://s1:26379/mymaster").unwrap();
        assert_eq!(sentinel.url, "redis+sentinel://s1:26379/mymaster");
        assert!(RedisConfig::from_url("redis+cluster://h1:7000?colour=red").is_err());
    }

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
    fn the_change_log_bounds_are_url_options() {
        let config = RedisConfig::from_url(
            "redis://h:6379/0?history_capacity=5000&history_max_bytes=1048576",
        )
        .unwrap();
        assert_eq!(config.url, "redis://h:6379/0");
        assert_eq!(
            (config.history_capacity, config.history_max_bytes),
            (5000, 1 << 20)
        );
        let defaults = RedisConfig::from_url("redis://h:6379/0").unwrap();
        assert_eq!(defaults.history_max_bytes, DEFAULT_HISTORY_MAX_BYTES);
    }

    #[test]
    fn malformed_urls_name_the_problem() {
        for (url, needle) in [
            ("h:6379", "redis://"),
            ("http://h:6379", "redis://"),
            ("redis://h:6379/zero", "database number"),
            ("redis://h:6379?colour=1", "colour"),
            ("redis://h:6379?namespace={x}", "namespace"),
            ("redis://h:6379?history_capacity=0", "history_capacity"),
            ("redis://h:6379?history_max_bytes=lots", "history_max_bytes"),
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
