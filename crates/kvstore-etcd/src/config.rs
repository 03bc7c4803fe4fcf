//! [`EtcdConfig`]: endpoints, namespace, timeouts, credentials and TLS, from code or a URL.

use std::time::Duration;

use kvstore_core::backend::{StoreUrl, invalid_url, parse_millis};
use kvstore_core::{Error, Key, Result};

/// Default time allowed to reach a server when connecting: 5 s ([contract §7](kvstore_core::contract#7-errors)).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default deadline of one request: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default namespace: keys live at `kvstore/{key}`.
pub const DEFAULT_NAMESPACE: &str = "kvstore";

/// etcd's default request size limit (`--max-request-bytes`, 1.5 MiB).
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Default largest value: etcd's request limit less room for the key (up to
/// [`kvstore_core::MAX_KEY_LEN`] plus the namespace) and the request envelope.
pub const DEFAULT_MAX_VALUE_SIZE: usize = ETCD_MAX_REQUEST_BYTES - 8 * 1024;

/// Username and password for etcd's authentication (`etcdctl user add`). Its `Debug`
/// shows the password as `***`.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Credentials {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// TLS settings (feature `tls`): PEM-encoded CA, and optionally a client identity. Its
/// `Debug` shows no certificate or key bytes, only `***` where they are set.
///
/// `#[non_exhaustive]`: start from `TlsConfig::default()` and set fields.
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The CA certificate(s) that signed the server's certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// The client certificate for mutual TLS, PEM.
    pub client_cert_pem: Option<Vec<u8>>,
    /// The client certificate's private key, PEM.
    pub client_key_pem: Option<Vec<u8>>,
    /// The server name to verify, when it differs from the endpoint host.
    pub domain: Option<String>,
}

#[cfg(feature = "tls")]
impl TlsConfig {
    /// Trust `ca_pem` (PEM CA certificates), with no client identity.
    pub fn with_ca(ca_pem: Vec<u8>) -> TlsConfig {
        TlsConfig {
            ca_pem,
            ..TlsConfig::default()
        }
    }
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |pem: Option<&Vec<u8>>| pem.map(|_| "***");
        f.debug_struct("TlsConfig")
            .field("ca_pem", &"***")
            .field("client_cert_pem", &set(self.client_cert_pem.as_ref()))
            .field("client_key_pem", &set(self.client_key_pem.as_ref()))
            .field("domain", &self.domain)
            .finish()
    }
}

/// How to reach etcd and where keys live. Its `Debug` shows no password or key material.
///
/// `#[non_exhaustive]`: start from [`EtcdConfig::new`] (or [`EtcdConfig::from_url`]) and
/// set fields. With the `serde` feature it deserializes, missing fields taking their
/// defaults, durations written as `"10s"` or `"500ms"`; `tls` is set in code.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct EtcdConfig {
    /// `host:port` (or `http(s)://host:port`) of one or more members.
    pub endpoints: Vec<String>,
    /// Root of this store's keys: a key `k` is stored at `{namespace}/k`, readable with
    /// `etcdctl get {namespace}/k`. Must be a valid key. Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Time allowed to reach a server when connecting. Default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub connect_timeout: Duration,
    /// Deadline of each request. Default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub request_timeout: Duration,
    /// Username and password, when etcd has authentication enabled.
    pub credentials: Option<Credentials>,
    /// TLS, when the endpoints use https.
    #[cfg(feature = "tls")]
    #[cfg_attr(feature = "serde", serde(skip))]
    pub tls: Option<TlsConfig>,
    /// Largest value accepted, in bytes. Default [`DEFAULT_MAX_VALUE_SIZE`].
    pub max_value_size: usize,
}

impl Default for EtcdConfig {
    /// No endpoints (to be set) and every default.
    fn default() -> EtcdConfig {
        EtcdConfig::new(Vec::<String>::new())
    }
}

impl EtcdConfig {
    /// A configuration for `endpoints` with every default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            credentials: None,
            #[cfg(feature = "tls")]
            tls: None,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
        }
    }

    /// Parse `etcd://[user:password@]host:port[,host:port...][/namespace][?options]`.
    ///
    /// Options: `connect_timeout` and `request_timeout` in milliseconds. Several hosts are
    /// separated by commas, which a plain URL parser cannot read, hence this parser.
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part, quoting the URL without its password
    /// ([`kvstore_core::redact_url`]).
    pub fn from_url(url: &str) -> Result<EtcdConfig> {
        let parsed = StoreUrl::parse(url, "etcd")?;
        let mut config = EtcdConfig::new(parsed.hosts);
        config.credentials = parsed
            .credentials
            .map(|(username, password)| Credentials { username, password });
        if !parsed.namespace.is_empty() {
            config.namespace = parsed.namespace;
        }
        for (name, value) in &parsed.options {
            let option = match name.as_str() {
                "connect_timeout" => &mut config.connect_timeout,
                "request_timeout" => &mut config.request_timeout,
                other => {
                    return Err(invalid_url(
                        url,
                        "etcd",
                        format!("unknown option {other:?}"),
                    ));
                }
            };
            *option = parse_millis(name, value).map_err(|what| invalid_url(url, "etcd", what))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration before connecting.
    ///
    /// # Errors
    /// [`Error::Config`] for no endpoints, an invalid namespace or a zero timeout.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        if self.endpoints.is_empty() {
            return bad("etcd needs at least one endpoint".into());
        }
        if let Err(e) = Key::new(&self.namespace) {
            return bad(format!("invalid etcd namespace: {e}"));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("etcd timeouts must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_several_endpoints_namespace_and_options() {
        let config =
            EtcdConfig::from_url("etcd://u:p@h1:2379,h2:2380/apps/x?connect_timeout=250").unwrap();
        assert_eq!(config.endpoints, ["h1:2379", "h2:2380"]);
        assert_eq!(config.namespace, "apps/x");
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.credentials.unwrap().username, "u");
    }

    #[test]
    fn malformed_urls_name_the_problem() {
        for (url, needle) in [
            ("etcd://", "host:port"),
            ("etcd://h1", "host:port"),
            ("etcd://h1:notaport", "host:port"),
            ("etcd://h1:2379/a//b", "namespace"),
            ("etcd://h1:2379?colour=1", "colour"),
            ("etcd://h1:2379?connect_timeout=soon", "milliseconds"),
        ] {
            match EtcdConfig::from_url(url) {
                Err(Error::Config { message }) => assert!(message.contains(needle), "{message}"),
                other => panic!("{url}: expected Config, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_about_a_url_do_not_show_its_password() {
        for url in [
            "etcd://u:hunter2@h1",
            "etcd://u:hunter2@h1:notaport,h2:2379/ns",
            "etcd://u:hunter2@h1:2379/a//b",
            "etcd://u:hunter2@h1:2379?colour=1",
            "etcd://u:hunter2@h1:2379?request_timeout=soon",
            "etcd://u:hunter2@h1:2379?connect_timeout=0",
            "redis://u:hunter2@h1:2379",
        ] {
            match EtcdConfig::from_url(url) {
                Err(error) => {
                    let shown = format!("{error} {error:?}");
                    assert!(!shown.contains("hunter2"), "{url}: {shown}");
                }
                Ok(config) => panic!("{url}: expected an error, got {config:?}"),
            }
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn deserializes_with_defaults_and_readable_durations() {
        let config: EtcdConfig = serde_json::from_str(
            r#"{"endpoints": ["h:2379"], "request_timeout": "2s",
                "credentials": {"username": "u", "password": "p"}}"#,
        )
        .unwrap();
        assert_eq!(config.endpoints, ["h:2379"]);
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(
            config.connect_timeout,
            EtcdConfig::default().connect_timeout
        );
        assert!(!format!("{config:?}").contains("\"p\""));
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"endpoint": []}"#).is_err());
    }

    #[test]
    fn debug_does_not_show_the_password() {
        let config = EtcdConfig::from_url("etcd://u:hunter2@h1:2379,h2:2379/ns").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains(r#"password: "***""#), "{debug}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn debug_does_not_show_key_material() {
        let mut config = EtcdConfig::new(["h:2379"]);
        config.tls = Some(TlsConfig {
            ca_pem: b"ca-bytes".to_vec(),
            client_cert_pem: Some(b"cert-bytes".to_vec()),
            client_key_pem: Some(b"PRIVATE KEY secret-key-bytes".to_vec()),
            domain: Some("etcd.local".into()),
        });
        let debug = format!("{config:?}");
        for bytes in ["ca-bytes", "cert-bytes", "secret-key-bytes", "80, 82"] {
            assert!(!debug.contains(bytes), "{debug}");
        }
        assert!(debug.contains("etcd.local"), "{debug}");
    }
}
