//! [`ZooKeeperConfig`]: ensemble, namespace, credentials, timeouts and limits.

use std::time::Duration;

use kvstore_core::backend::{StoreUrl, invalid_url, parse_millis};
use kvstore_core::{Error, Key, Result};

/// Default time allowed to establish a session: 5 s ([contract §7](kvstore_core::contract#7-errors)).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one call, retries on write conflicts included: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default ZooKeeper session timeout asked of the ensemble: 10 s. The store keeps no
/// ephemeral nodes, so an expired session only means reconnecting with a new one; the
/// client also declares a silent server lost after 2/5 of it.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default namespace: keys live under the znode `/kvstore`.
pub const DEFAULT_NAMESPACE: &str = "kvstore";
/// Default largest value: 480 KiB. A write carries its value twice (the key's znode and
/// its change-log entry) in one `multi` request, which the server bounds by its
/// `jute.maxbuffer` (1 MiB by default); keys of up to 4 KiB appear three times.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 480 * 1024;
/// Default number of change-log entries kept (one per operation): how far a watcher may
/// fall behind before it gets a `Resync`.
pub const DEFAULT_HISTORY_CAPACITY: usize = 10_000;

/// The URL scheme of this backend.
pub const SCHEME: &str = "zookeeper";

/// How to reach the ensemble and where keys live.
///
/// Its `Debug` shows the password as `***`. `#[non_exhaustive]`: start from
/// [`ZooKeeperConfig::new`] (or [`ZooKeeperConfig::from_url`]) and set fields. With the
/// `serde` feature it deserializes, missing fields taking their defaults, durations
/// written as `"10s"` or `"500ms"`.
#[derive(Clone)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ZooKeeperConfig {
    /// The ensemble, `host:port[,host:port...]` (ZooKeeper's connect string, without a
    /// chroot).
    pub hosts: String,
    /// Every znode of the store lives under `/{namespace}`; a valid key (it may have
    /// several segments). Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// `digest` authentication as `(user, password)`. With credentials, every znode the
    /// store creates gets the `CREATOR_ALL` ACL: only sessions authenticated as the same
    /// user can read or write it.
    pub credentials: Option<(String, String)>,
    /// Time allowed to establish a session. Default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub connect_timeout: Duration,
    /// Deadline of each call. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub request_timeout: Duration,
    /// ZooKeeper session timeout asked of the ensemble. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub session_timeout: Duration,
    /// Largest value accepted, in bytes. Default 480 KiB; raise it only for an ensemble
    /// whose `jute.maxbuffer` is larger than 1 MiB (to at most half of it, less 32 KiB).
    pub max_value_size: usize,
    /// Change-log entries kept. Default 10,000.
    #[cfg_attr(feature = "serde", serde(alias = "log_max_len"))]
    pub history_capacity: usize,
}

impl std::fmt::Debug for ZooKeeperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperConfig")
            .field("hosts", &self.hosts)
            .field("namespace", &self.namespace)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("history_capacity", &self.history_capacity)
            .finish()
    }
}

impl Default for ZooKeeperConfig {
    /// No hosts (to be set) and every default.
    fn default() -> ZooKeeperConfig {
        ZooKeeperConfig::new("")
    }
}

impl ZooKeeperConfig {
    /// A configuration for the ensemble `hosts` (`h1:2181,h2:2181`) with every default.
    pub fn new(hosts: impl Into<String>) -> ZooKeeperConfig {
        ZooKeeperConfig {
            hosts: hosts.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            credentials: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            history_capacity: DEFAULT_HISTORY_CAPACITY,
        }
    }

    /// Parse `zookeeper://[user:password@]h1:2181[,h2:2181...][/namespace][?options]`.
    ///
    /// The path is the namespace (default [`DEFAULT_NAMESPACE`]); user and password are
    /// percent-decoded and used for `digest` authentication. Options:
    /// `connect_timeout=MS`, `request_timeout=MS`, `session_timeout=MS`,
    /// `history_capacity=N`, `max_value_size=BYTES`, `namespace=NAME` (instead of the path).
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part, quoting the URL without its password
    /// ([`kvstore_core::redact_url`]).
    pub fn from_url(raw: &str) -> Result<ZooKeeperConfig> {
        let parsed = StoreUrl::parse(raw, SCHEME)?;
        let mut config = ZooKeeperConfig::new(parsed.hosts.join(","));
        config.credentials = parsed.credentials;
        if !parsed.namespace.is_empty() {
            config.namespace = parsed.namespace;
        }
        for (name, value) in &parsed.options {
            config
                .take_option(name, value)
                .map_err(|what| invalid_url(raw, SCHEME, what))?;
        }
        config.validate()?;
        Ok(config)
    }

    fn take_option(&mut self, name: &str, value: &str) -> std::result::Result<(), String> {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a number, got {value:?}"))
        };
        match name {
            "namespace" => self.namespace = value.to_owned(),
            "connect_timeout" => self.connect_timeout = parse_millis(name, value)?,
            "request_timeout" => self.request_timeout = parse_millis(name, value)?,
            "session_timeout" => self.session_timeout = parse_millis(name, value)?,
            // `log_max_len` is the old name.
            "history_capacity" | "log_max_len" => {
                self.history_capacity = usize::try_from(number()?).map_err(|e| e.to_string())?;
            }
            "max_value_size" => {
                self.max_value_size = usize::try_from(number()?).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        Ok(())
    }

    /// Check the configuration before connecting.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid namespace (not a valid key, a character ZooKeeper
    /// refuses in paths, or under `/zookeeper`), a zero timeout or log length, or no host.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        let namespace_ok = Key::new(&self.namespace).is_ok_and(|k| k.as_str() == self.namespace)
            && !self
                .namespace
                .chars()
                .any(crate::layout::refused_by_zookeeper)
            && self.namespace.split('/').next() != Some("zookeeper");
        if !namespace_ok {
            return bad(format!(
                "invalid zookeeper namespace {:?}: it must be a normalised key, not under \
                 /zookeeper",
                self.namespace
            ));
        }
        if self.hosts.is_empty() {
            return bad("a zookeeper ensemble needs at least one host:port".into());
        }
        if self.connect_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.session_timeout.is_zero()
        {
            return bad("zookeeper timeouts must be greater than zero".into());
        }
        if self.history_capacity == 0 {
            return bad("history_capacity must be at least 1".into());
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
        let config: ZooKeeperConfig =
            serde_json::from_str(r#"{"hosts": "h:2181", "session_timeout": "4s"}"#).unwrap();
        assert_eq!(config.hosts, "h:2181");
        assert_eq!(config.session_timeout, Duration::from_secs(4));
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        assert!(serde_json::from_str::<ZooKeeperConfig>(r#"{"host": "h:2181"}"#).is_err());
    }

    #[test]
    fn urls_name_hosts_namespace_and_options() {
        let config = ZooKeeperConfig::from_url(
            "zookeeper://h1:2181,h2:2182/app/prod?request_timeout=250&history_capacity=7",
        )
        .unwrap();
        assert_eq!(config.hosts, "h1:2181,h2:2182");
        assert_eq!(config.namespace, "app/prod");
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        assert_eq!(config.history_capacity, 7);
        let default = ZooKeeperConfig::from_url("zookeeper://127.0.0.1:2181").unwrap();
        assert_eq!(default.namespace, DEFAULT_NAMESPACE);
        assert!(default.credentials.is_none());
    }

    #[test]
    fn malformed_urls_name_the_problem() {
        for (url, needle) in [
            ("zookeeper://", "host"),
            ("zookeeper://h", "host:port"),
            ("zookeeper://h:notaport", "host:port"),
            ("etcd://h:2379", "zookeeper://"),
            ("zookeeper://h:1?colour=red", "colour"),
            ("zookeeper://h:1/zookeeper/x", "namespace"),
            ("zookeeper://h:1/a//b", "namespace"),
        ] {
            match ZooKeeperConfig::from_url(url) {
                Err(Error::Config { message }) => {
                    assert!(message.contains(needle), "{url}: {message}")
                }
                other => panic!("{url}: expected Config, got {other:?}"),
            }
        }
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let config = ZooKeeperConfig::from_url("zookeeper://bob:hunter%402@h:2181/ns").unwrap();
        assert_eq!(
            config.credentials,
            Some(("bob".to_owned(), "hunter@2".to_owned()))
        );
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("hunter"), "{debug}");
        let error = ZooKeeperConfig::from_url("zookeeper://bob:hunter2@h:2181/ns?x=1").unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
