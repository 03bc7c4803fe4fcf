//! The Lua scripts, each the shared prelude (`scripts/lib.lua`) followed by its own
//! body, except the standalone `lease_alive` (a read must not write) and `lease_grant`
//! (which needs nothing of the prelude, so a grant stays one cheap command; a TTL put
//! creates its lease inside the put script instead).
//! `redis::Script` loads each one once and calls it by SHA (`EVALSHA`), loading it again
//! only if the server answers `NOSCRIPT` (after a restart).

use redis::{Script, Value};

macro_rules! script {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("../scripts/lib.lua"),
            "\n",
            include_str!(concat!("../scripts/", $name, ".lua"))
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
            put: script!("put"),
            delete: script!("delete"),
            delete_prefix: script!("delete_prefix"),
            lease_grant: Script::new(include_str!("../scripts/lease_grant.lua")),
            lease_keep_alive: script!("lease_keep_alive"),
            lease_revoke: script!("lease_revoke"),
            txn: script!("txn"),
            reap: script!("reap"),
            lease_alive: Script::new(include_str!("../scripts/lease_alive.lua")),
        }
    }
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
