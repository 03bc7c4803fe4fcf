//! Where a store's data lives in Redis: every key name the crate uses, all under the hash
//! tag `{namespace}`, so that on Redis Cluster they share one slot (scripts and stream
//! reads stay on one node). The crate docs' "Layout" table says what each key holds.
//!
//! The Lua scripts derive the same names from the revision counter's, their `KEYS[1]`
//! (`scripts/lib.lua`): a name changed here must change there too.

/// The area of user keys; lock bookkeeping lives in [`LOCK_AREA`].
pub(crate) const USER_AREA: &str = "kv";
/// The area of lock waiter keys, outside the user keys.
pub(crate) const LOCK_AREA: &str = "lock";

/// The revision counter, `{namespace}:rev`: the first key of every script.
pub(crate) fn revision(namespace: &str) -> String {
    format!("{{{namespace}}}:rev")
}

/// The hash holding `key` of `area`: `{namespace}:{area}:k:{key}`.
pub(crate) fn key(namespace: &str, area: &str, key: &str) -> String {
    format!("{{{namespace}}}:{area}:k:{key}")
}

/// The change stream: `{namespace}:log`.
pub(crate) fn log(namespace: &str) -> String {
    format!("{{{namespace}}}:log")
}

/// The random id of this generation of the data: `{namespace}:epoch`.
pub(crate) fn epoch(namespace: &str) -> String {
    format!("{{{namespace}}}:epoch")
}

/// The sorted set of lease deadlines: `{namespace}:leases`.
pub(crate) fn leases(namespace: &str) -> String {
    format!("{{{namespace}}}:leases")
}

/// The hash of lease TTLs: `{namespace}:lease-ttl`.
pub(crate) fn lease_ttl(namespace: &str) -> String {
    format!("{{{namespace}}}:lease-ttl")
}

/// The key that exists only while no lease is due: `{namespace}:lease-next`.
pub(crate) fn lease_next(namespace: &str) -> String {
    format!("{{{namespace}}}:lease-next")
}
