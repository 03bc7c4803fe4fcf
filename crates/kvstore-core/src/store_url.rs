//! [`StoreUrl`]: the store URL form several backends share,
//! `scheme://[user:password@]host:port[,host:port...][/namespace][?name=value&...]`.
//! A plain URL parser cannot read several comma-separated hosts, hence this one.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::redact::redact_url;

/// A parsed store URL. Credentials and the namespace are percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// `user:password@`, decoded.
    pub credentials: Option<(String, String)>,
    /// Every `host:port`, in order; at least one.
    pub hosts: Vec<String>,
    /// The path without its slashes at either end, decoded: the namespace (`""` when
    /// none).
    pub namespace: String,
    /// The query's `name=value` pairs, in order, not decoded (names and values are plain
    /// numbers and words).
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUrl")
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("hosts", &self.hosts)
            .field("namespace", &self.namespace)
            .field("options", &self.options)
            .finish()
    }
}

impl StoreUrl {
    /// Parse `url`, whose scheme must be `scheme`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part (another scheme, a host without a
    /// port, credentials without `:`, text that is not UTF-8 once decoded), quoting the
    /// URL without its password ([`redact_url`]).
    pub fn parse(url: &str, scheme: &str) -> Result<StoreUrl> {
        let rest = url
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .ok_or_else(|| {
                invalid(
                    url,
                    scheme,
                    format!("expected {scheme}://host:port[,host:port...][/namespace]"),
                )
            })?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let decode = |text: &str, what: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| invalid(url, scheme, format!("the {what} is not valid UTF-8")))
        };
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').ok_or_else(|| {
                    invalid(url, scheme, "credentials must be user:password@".into())
                })?;
                Some((decode(user, "user")?, decode(password, "password")?))
            }
        };
        let mut parsed = Vec::new();
        for host in hosts.split(',') {
            let valid = host
                .rsplit_once(':')
                .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid(
                    url,
                    scheme,
                    format!("endpoint {host:?} needs host:port"),
                ));
            }
            parsed.push(host.to_owned());
        }
        let options = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect();
        Ok(StoreUrl {
            credentials,
            hosts: parsed,
            namespace: decode(path.trim_matches('/'), "namespace")?,
            options,
        })
    }
}

/// [`Error::Config`] for `url`, a `scheme` URL, quoted without its password.
pub fn invalid(url: &str, scheme: &str, what: String) -> Error {
    Error::Config {
        message: format!("invalid {scheme} URL {:?}: {what}", redact_url(url)),
    }
}

/// The URL option `name=value` as a duration in milliseconds.
///
/// # Errors
/// A message naming `name` when `value` is not a whole number.
pub fn parse_millis(name: &str, value: &str) -> std::result::Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{name} must be milliseconds, got {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_credentials_namespace_and_options() {
        let url = StoreUrl::parse("etcd://u%40x:p%3Aw@h1:1,h2:2/a/b/?x=1&y", "etcd").unwrap();
        assert_eq!(url.credentials, Some(("u@x".into(), "p:w".into())));
        assert_eq!(url.hosts, ["h1:1", "h2:2"]);
        assert_eq!(url.namespace, "a/b");
        assert_eq!(
            url.options,
            [("x".into(), "1".into()), ("y".into(), String::new())]
        );
        assert!(!format!("{url:?}").contains("p:w"));
    }

    #[test]
    fn malformed_parts_are_named_without_the_password() {
        for (url, part) in [
            ("redis://h:1", "expected etcd://"),
            ("etcd://h", "needs host:port"),
            ("etcd://h:port", "needs host:port"),
            ("etcd://:1", "needs host:port"),
            ("etcd://secret@h:1", "user:password@"),
        ] {
            let Err(Error::Config { message }) = StoreUrl::parse(url, "etcd") else {
                panic!("{url} parsed");
            };
            assert!(message.contains(part), "{url}: {message}");
        }
        let Err(Error::Config { message }) = StoreUrl::parse("etcd://u:hunter2@h", "etcd") else {
            panic!("parsed");
        };
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(parse_millis("t", "5"), Ok(Duration::from_millis(5)));
        assert!(
            parse_millis("t", "5s")
                .unwrap_err()
                .contains("t must be milliseconds")
        );
    }
}
