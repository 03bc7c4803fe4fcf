//! [`Topology`]: which Redis deployment a URL names: one server, a Redis Cluster, or a
//! primary found through Sentinel.
//!
//! - `redis://[user:password@]host:port[/db]` (or `rediss://`): one server.
//! - `redis+cluster://[user:password@]host:port[,host:port...]`: a Redis Cluster, reached
//!   through any of the listed nodes (the client learns the others).
//! - `redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]`: the current
//!   primary of `master`, asked of the listed Sentinels (again after every failure, so a
//!   failover is followed). The credentials are the data nodes'.
//!
//! Several hosts are separated by commas, which a plain URL parser refuses, hence this
//! parser for the two multi-host schemes. User and password may be percent-encoded.
//!
//! [`Topology::target`] then builds the redis clients that reach the deployment.

use std::time::Duration;

use kvstore_core::redact_url;
use kvstore_core::{Error, Result};
use redis::IntoConnectionInfo;
use redis::io::tcp::TcpSettings;

use crate::config::RedisConfig;
use crate::connection::Target;
use crate::watch::WATCH_BLOCK;

/// A Redis deployment, parsed from a store URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server (`redis://`, `rediss://`), reached by the redis client's own URL parser.
    Single,
    /// A Redis Cluster, through these seed nodes.
    Cluster {
        nodes: Vec<(String, u16)>,
        credentials: Credentials,
    },
    /// The primary Sentinel names for `master`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        credentials: Credentials,
    },
}

/// Username and password of the data nodes.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

/// The schemes of the multi-host deployments.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster";
pub(crate) const SENTINEL_SCHEME: &str = "redis+sentinel";

impl Topology {
    /// The deployment `url` names (its query, if any, is ignored: the caller takes its
    /// options out first).
    ///
    /// # Errors
    /// [`Error::Config`] naming the malformed part, quoting the URL without its password.
    pub(crate) fn parse(url: &str) -> Result<Topology> {
        let bad = |what: String| Error::Config {
            message: format!("invalid redis URL {:?}: {what}", redact_url(url)),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected redis://, redis+cluster:// or redis+sentinel://".into())
        })?;
        if matches!(scheme, "redis" | "rediss") {
            return Ok(Topology::Single);
        }
        if !matches!(scheme, CLUSTER_SCHEME | SENTINEL_SCHEME) {
            return Err(bad(format!(
                "unknown scheme {scheme:?}: expected redis://, rediss://, redis+cluster:// or \
                 redis+sentinel://"
            )));
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        // The userinfo ends at the last `@` before the path.
        let (authority, path) = match rest.rfind('@') {
            Some(at) => {
                let path_start = rest[at..].find('/').map_or(rest.len(), |p| at + p);
                (
                    &rest[..path_start],
                    rest[path_start..].trim_start_matches('/'),
                )
            }
            None => rest.split_once('/').unwrap_or((rest, "")),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => Credentials::default(),
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |text: &str| {
                    percent_encoding::percent_decode_str(text)
                        .decode_utf8()
                        .map(|t| t.into_owned())
                        .map_err(|_| {
                            bad("the credentials are not valid percent-encoded UTF-8".into())
                        })
                };
                Credentials {
                    username: Some(decode(user)?).filter(|u| !u.is_empty()),
                    password: Some(decode(password)?).filter(|p| !p.is_empty()),
                }
            }
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            let parsed = host
                .rsplit_once(':')
                .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
                .filter(|(name, _)| !name.is_empty());
            let (name, port) =
                parsed.ok_or_else(|| bad(format!("endpoint {host:?} needs host:port")))?;
            nodes.push((name.to_owned(), port));
        }
        if scheme == CLUSTER_SCHEME {
            if !path.is_empty() {
                return Err(bad(
                    "Redis Cluster has only database 0: the URL takes no path".into(),
                ));
            }
            return Ok(Topology::Cluster { nodes, credentials });
        }
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Err(bad(
                "redis+sentinel:// needs the master's name as its path: \
                 redis+sentinel://host:port/mymaster"
                    .into(),
            ));
        }
        let db = if db.is_empty() {
            0
        } else {
            db.parse::<i64>()
                .map_err(|_| bad(format!("the database must be a number, got {db:?}")))?
        };
        Ok(Topology::Sentinel {
            sentinels: nodes,
            master: master.to_owned(),
            db,
            credentials,
        })
    }

    /// The clients of this deployment, for `config` (parsed into `self`), with the TCP
    /// settings `tcp` on every connection.
    ///
    /// # Errors
    /// [`Error::Config`] when the redis client refuses the URL, quoting it without its
    /// password.
    pub(crate) fn target(self, config: &RedisConfig, tcp: TcpSettings) -> Result<Target> {
        let bad = |e: redis::RedisError| Error::Config {
            message: format!("invalid redis URL {:?}: {e}", redact_url(&config.url)),
        };
        Ok(match self {
            Topology::Single => Target::Single(open_client(config, tcp).map_err(bad)?),
            Topology::Sentinel {
                sentinels,
                master,
                db,
                credentials,
            } => {
                let addresses = sentinels
                    .into_iter()
                    .map(|(host, port)| redis::ConnectionAddr::Tcp(host, port));
                let mut builder = redis::sentinel::SentinelClientBuilder::new(
                    addresses,
                    master,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(bad)?
                .set_client_to_redis_db(db)
                .set_client_to_redis_tcp_settings(tcp);
                if let Some(username) = credentials.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = credentials.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                Target::Sentinel(tokio::sync::Mutex::new(builder.build().map_err(bad)?))
            }
            Topology::Cluster { nodes, credentials } => {
                let client = |timeout: Duration| {
                    let seeds = nodes
                        .iter()
                        .map(|(host, port)| format!("redis://{host}:{port}"));
                    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(timeout)
                        .tcp_settings(tcp.clone());
                    if let Some(username) = &credentials.username {
                        builder = builder.username(username);
                    }
                    if let Some(password) = &credentials.password {
                        builder = builder.password(password);
                    }
                    builder.build().map_err(bad)
                };
                Target::Cluster {
                    requests: Box::new(client(config.request_timeout)?),
                    watches: Box::new(client(WATCH_BLOCK + config.request_timeout)?),
                }
            }
        })
    }
}

/// The client of one server, with TLS for `rediss://` (feature `tls`).
fn open_client(config: &RedisConfig, tcp: TcpSettings) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "tls")]
    if config.url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; this keeps an existing one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = config
        .url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(tcp);
    #[cfg(feature = "tls")]
    if let Some(ca) = &config.ca_pem {
        return redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        );
    }
    redis::Client::open(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server() {
        assert!(matches!(
            Topology::parse("redis://h:6379/0").unwrap(),
            Topology::Single
        ));
    }

    #[test]
    fn a_cluster_with_several_seed_nodes_and_credentials() {
        let parsed = Topology::parse("redis+cluster://u:p%40ss@h1:7000,h2:7001").unwrap();
        let Topology::Cluster { nodes, credentials } = parsed else {
            panic!("expected a cluster");
        };
        assert_eq!(nodes, [("h1".into(), 7000), ("h2".into(), 7001)]);
        assert_eq!(credentials.username.as_deref(), Some("u"));
        assert_eq!(credentials.password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn sentinels_with_a_master_and_a_database() {
        let parsed = Topology::parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2").unwrap();
        let Topology::Sentinel {
            sentinels,
            master,
            db,
            credentials,
        } = parsed
        else {
            panic!("expected sentinels");
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!((master.as_str(), db), ("mymaster", 2));
        assert_eq!(credentials.username, None);
        assert_eq!(credentials.password.as_deref(), Some("pw"));
    }

    #[test]
    fn malformed_urls_name_the_problem_without_the_password() {
        for (url, needle) in [
            ("redis+cluster://h1", "host:port"),
            ("redis+cluster://h1:7000/3", "database 0"),
            ("redis+sentinel://s1:26379", "master"),
            ("redis+sentinel://s1:26379/m/x", "number"),
            ("redis+sentinel://u:hunter2@s1/m", "host:port"),
            ("memcached://h:1", "unknown scheme"),
        ] {
            match Topology::parse(url) {
                Err(Error::Config { message }) => {
                    assert!(message.contains(needle), "{url}: {message}");
                    assert!(!message.contains("hunter2"), "{message}");
                }
                _ => panic!("{url}: expected a Config error"),
            }
        }
    }
}
