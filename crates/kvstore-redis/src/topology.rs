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

use kvstore_core::redact_url;
use kvstore_core::{Error, Result};

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
