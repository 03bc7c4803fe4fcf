//! The Lua scripts, each the shared prelude (`scripts/lib.lua`) followed by its own
//! body, except the standalone `lease_alive` (a read must not write) and `lease_grant`
//! (which needs nothing of the prelude, so a grant stays one cheap command; a TTL put
//! creates its lease inside the put script instead).
//! `redis::Script` loads each one once and calls it by SHA (`EVALSHA`), loading it again
//! only if the server answers `NOSCRIPT` (after a restart).
//!
//! Also how a script is called: the prelude's arguments first ([`invocation`]), sent
//! again after a dropped connection only when that is harmless ([`Retry`]), and for a
//! write the `WAIT` for replicas ([`run_write_script`]).

use kvstore_core::{Error, Result};
use redis::{Script, Value};

use crate::BACKEND;
use crate::config::RedisConfig;
use crate::connection::{Connection, Link};
use crate::error::from_redis;
use crate::store::RedisStore;

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("../scripts/lib.lua"),
            "\n",
            include_str!(concat!("../scripts/", $name, ".lua"))
        ))
    };
}

/// A script that writes: the prelude, then its body as a function whose answer is
/// remembered for a resend of the same call (see `remembered` in `scripts/lib.lua`).
macro_rules! write_script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("../scripts/lib.lua"),
            "\nlocal answer = remembered()\nif answer then return answer end\nlocal function body()\n",
            include_str!(concat!("../scripts/", $name, ".lua")),
            "\nend\nreturn remember(body())\n"
        ))
    };
}

/// Every script of the backend.
pub(crate) struct Scripts {
    pub range: Script,
    pub put: Script,
    pub delete: Script,
    pub delete_prefix: Script,
    /// Standalone: `KEYS` are the leases sorted set, the lease TTL hash and the key
    /// that exists while no lease is due.
    pub lease_grant: Script,
    pub lease_keep_alive: Script,
    pub lease_revoke: Script,
    pub txn: Script,
    pub reap: Script,
    /// Standalone: whether a lease is alive, for reads of leased keys.
    pub lease_alive: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            range: script!("range"),
            put: write_script!("put"),
            delete: write_script!("delete"),
            delete_prefix: write_script!("delete_prefix"),
            lease_grant: Script::new(include_str!("../scripts/lease_grant.lua")),
            lease_keep_alive: script!("lease_keep_alive"),
            lease_revoke: script!("lease_revoke"),
            txn: write_script!("txn"),
            reap: script!("reap"),
            lease_alive: Script::new(include_str!("../scripts/lease_alive.lua")),
        }
    }
}

/// Whether a script may run twice without harm, and so be sent again after the
/// connection dropped under it (see [`Connection::run_idempotent`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, lease keep-alives and revokes.
    Idempotent,
    /// Writes: sent once; a dropped connection is the caller's `Unavailable`.
    Once,
}

impl RedisStore {
    /// Run `script` with the common arguments then `args`.
    pub(crate) async fn run(
        &self,
        operation: &'static str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value> {
        self.lifecycle.ensure_open(BACKEND)?;
        run_script(
            &self.connection,
            &invocation(script, &self.revision_key, &self.config, 0, args),
            &self.config,
            (operation, Retry::Idempotent),
        )
        .await
    }

    /// Run a script that writes: as [`RedisStore::run`], then `WAIT` for replicas when
    /// the configuration asks for durability.
    pub(crate) async fn run_write(
        &self,
        (operation, retry): (&'static str, Retry),
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value> {
        self.lifecycle.ensure_open(BACKEND)?;
        run_write_script(
            &self.connection,
            &invocation(
                script,
                &self.revision_key,
                &self.config,
                remember_for(&self.config, self.connection.is_cluster()),
                args,
            ),
            &self.config,
            (operation, retry),
        )
        .await
    }
}

/// How long, in ms, a write's answer is remembered for a resend of the same call:
/// twice the request timeout on Redis Cluster (the client resends only while the call
/// runs, which is bounded by the request timeout), not at all elsewhere (nothing
/// resends a write there). Each remembered answer is one small key for that long.
pub(crate) fn remember_for(config: &RedisConfig, cluster: bool) -> u64 {
    if !cluster {
        return 0;
    }
    let twice = config
        .request_timeout
        .saturating_mul(2)
        .max(std::time::Duration::from_secs(1));
    u64::try_from(twice.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh random epoch candidate: only the first one of a store's data is kept.
fn epoch_candidate() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Run a script call on `connection`, sent again after a dropped connection when
/// `retry` allows it.
pub(crate) async fn run_script(
    connection: &Connection,
    invocation: &redis::ScriptInvocation<'_>,
    config: &RedisConfig,
    (operation, retry): (&'static str, Retry),
) -> Result<Value> {
    let run = |mut connection: Link| async move { invocation.invoke_async(&mut connection).await };
    let outcome = match retry {
        Retry::Idempotent => connection.run_idempotent(run).await,
        Retry::Once => connection.run(run).await,
    };
    outcome.map_err(|e| from_redis(operation, e, config.request_timeout))
}

/// A call of a script with the prelude: the revision counter as its one key, then the
/// common arguments (epoch candidate, stream bound), then `args`.
/// `remember_ms` is how long a write's answer is kept for a resend of the same call (0:
/// not kept; Redis Cluster, whose client resends, keeps it
/// [`remember_for`]).
pub(crate) fn invocation<'a>(
    script: &'a Script,
    revision_key: &str,
    config: &RedisConfig,
    remember_ms: u64,
    args: &[&[u8]],
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(revision_key);
    // The prelude reads both bounds of the change log, and how long a write's answer is
    // remembered, from one argument.
    let bounds = format!(
        "{}:{}:{}",
        config.history_capacity, config.history_max_bytes, remember_ms
    );
    invocation.arg(epoch_candidate()).arg(bounds);
    for arg in args {
        invocation.arg(*arg);
    }
    invocation
}

/// Run a writing script and, when [`RedisConfig::wait_replicas`] asks for it, `WAIT` for
/// its replicas in the same pipeline (so on the same connection, right after it): a
/// write fewer replicas acknowledged is `Unavailable`.
pub(crate) async fn run_write_script(
    connection: &Connection,
    invocation: &redis::ScriptInvocation<'_>,
    config: &RedisConfig,
    (operation, retry): (&'static str, Retry),
) -> Result<Value> {
    if config.wait_replicas == 0 {
        return run_script(connection, invocation, config, (operation, retry)).await;
    }
    let failed = |e| from_redis(operation, e, config.request_timeout);
    let wait_ms = u64::try_from(config.wait_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut loaded = false;
    let (reply, acknowledged): (Value, u32) = loop {
        let pipeline = &redis::pipe()
            .invoke_script(invocation)
            .cmd("WAIT")
            .arg(config.wait_replicas)
            .arg(wait_ms)
            .clone();
        let outcome = connection
            .run(|mut connection| async move { pipeline.query_async(&mut connection).await })
            .await;
        match outcome {
            // A restarted server has forgotten the script: load it, once, and run again.
            Err(e)
                if !loaded
                    && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                connection
                    .run(|mut connection| async move {
                        invocation.load_async(&mut connection).await
                    })
                    .await
                    .map_err(failed)?;
                loaded = true;
            }
            other => break other.map_err(failed)?,
        }
    };
    if acknowledged < config.wait_replicas {
        return Err(Error::Unavailable {
            backend: BACKEND,
            operation,
            message: format!(
                "the write reached {acknowledged} of {} replicas within {:?}; it is applied \
                 on the primary but a failover may lose it",
                config.wait_replicas, config.wait_timeout
            ),
            source: None,
        });
    }
    Ok(reply)
}

/// Reading script replies, which are arrays of strings and integers.
pub(crate) trait Reply {
    fn text(&self) -> Option<String>;
    fn bytes(&self) -> Option<Vec<u8>>;
    fn int(&self) -> Option<i64>;
    fn items(&self) -> Option<&[Value]>;
}

impl Reply for Value {
    fn text(&self) -> Option<String> {
        self.bytes().and_then(|b| String::from_utf8(b).ok())
    }

    fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            Value::Int(i) => Some(i.to_string().into_bytes()),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}
