//! # kvstore-testsuite: the conformance suite, as a library
//!
//! [the contract](kvstore_core::contract) turned into tests: one `pub async fn` per behaviour, each taking a
//! [`Harness`] that opens stores of the backend under test. Every test works under its
//! own random namespace, so suites can share one server. A backend crate (ours or a third
//! party's) runs all of it with one macro call:
//!
//! ```text
//! kvstore_testsuite::conformance_tests! {
//!     #[tokio::test(start_paused = true)]
//!     harness = MyHarness::new()
//! }
//! ```
//!
//! Tests that need a capability (leases, watch, locks) check [`kvstore_core::Capabilities`]
//! and return early only when the backend declares it does not have it; a backend that
//! declares a capability must pass its tests. Waits are bounded ([`WAIT`]): a test never
//! hangs and never sleeps hoping for something to have happened; it waits for events, and
//! uses a TTL key as the server's clock where it must let time pass.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use kvstore_core::{Result, Store};

mod election;
mod keys;
mod leases;
mod lifecycle;
mod locks;
mod operations;
mod txn;
mod watch;

pub use election::*;
pub use keys::*;
pub use leases::*;
pub use lifecycle::*;
pub use locks::*;
pub use operations::*;
pub use txn::*;
pub use watch::*;

/// Opens stores of the backend under test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new handle (its own connection, where the backend has connections) on the
    /// server under test, with keys under `namespace`. Two calls with one namespace must
    /// see the same keys; different namespaces must never see each other.
    async fn open(&self, namespace: &str) -> Result<Arc<dyn Store>>;

    /// Throw away the server's change history up to its current revision (etcd
    /// `Compact`, Redis `XTRIM`, the memory store's `compact`), so a watcher resuming
    /// from an older revision must receive a `Resync`.
    async fn compact(&self, namespace: &str) -> Result<()>;

    /// The TTL the suite uses for leases, TTL keys and locks. It must be valid on the
    /// backend (etcd's minimum is a little over 1 s). Default: 2 s.
    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// The bound on every wait for an event: generous, so a slow CI machine never fails a
/// correct backend, and finite, so a broken one fails instead of hanging. On tokio's
/// paused clock it costs nothing.
pub const WAIT: Duration = Duration::from_secs(30);

/// Whether the backend claims a capability a test needs: `has`, and when it does not,
/// a line on the real standard error (past the test harness's capture, so it shows
/// for passing tests too) saying the test was skipped and why. A test that returns
/// early without saying so would pass silently.
pub(crate) fn claims(has: bool, capability: &str) -> bool {
    use std::io::Write as _;
    if !has {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("a conformance test");
        let _ = writeln!(
            std::io::stderr(),
            "kvstore-testsuite: skipped {test}: the backend does not claim `Capabilities::{capability}`"
        );
    }
    has
}

/// A fresh namespace for one test: `kvstore-test/<random>`.
pub fn unique_namespace() -> String {
    format!("kvstore-test/{:016x}", rand::random::<u64>())
}

/// Open one store on a fresh namespace.
///
/// # Panics
/// If the harness cannot open a store: the server must be there.
pub async fn fresh_store(harness: &dyn Harness) -> (String, Arc<dyn Store>) {
    let namespace = unique_namespace();
    let store = harness
        .open(&namespace)
        .await
        .unwrap_or_else(|e| panic!("the harness could not open a store: {e}"));
    (namespace, store)
}

/// The next item of `stream`, waiting at most [`WAIT`].
///
/// # Panics
/// If nothing arrives within [`WAIT`], if the stream ends, or if the item is an error.
pub async fn next_item<T, S>(stream: &mut S, what: &str) -> T
where
    S: Stream<Item = Result<T>> + Unpin,
{
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("{what}: the stream yielded an error: {e}"),
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing arrived within {WAIT:?}"),
    }
}

/// Write `key` = `value`, retrying while the server is unreachable (a restart or
/// failover in progress), for at most [`WAIT`]. For fault tests.
///
/// # Panics
/// On a non-retryable error, or when [`WAIT`] runs out.
pub async fn put_retrying(store: &Arc<dyn Store>, key: &str, value: &str) -> kvstore_core::KvPair {
    /// Pause between attempts.
    const RETRY_DELAY: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let options = kvstore_core::PutOptions::default();
        match store
            .put(key, Bytes::copy_from_slice(value.as_bytes()), options)
            .await
        {
            Ok(pair) => return pair,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(e) => panic!("put {key} failed: {e}"),
        }
    }
}

/// Shorthand for a `Bytes` value.
pub fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Runs every conformance test as a `#[test]` of the calling crate.
///
/// The attribute tokens come first (e.g. `#[tokio::test(start_paused = true)]` for a
/// backend on tokio's clock, `#[tokio::test(flavor = "multi_thread")]` for one with a
/// server), then `harness = EXPR`, evaluated once per test.
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* harness = $harness:expr $(,)?) => {
        $crate::__each_conformance_test! { [$(#[$attr])*] $harness }
    };
}

/// The list of conformance tests; used by [`conformance_tests!`] and [`CONFORMANCE_TESTS`].
/// Every `pub async fn ..(harness: &dyn Harness)` of this crate must be in it: a test
/// of this crate checks that none is left out.
#[doc(hidden)]
#[macro_export]
macro_rules! __each_conformance_test {
    ([$($attr:tt)*] $harness:expr) => {
        $crate::__each_conformance_test! { @call __define_tests [$($attr)*] $harness }
    };
    (@names) => {
        $crate::__each_conformance_test! { @call __test_names [] () }
    };
    (@call $callback:ident [$($attr:tt)*] $harness:expr) => {
        $crate::$callback! { [$($attr)*] $harness;
            put_then_get_returns_the_value,
            keys_are_normalised,
            get_of_missing_key_fails_with_key_not_found,
            exists_reports_presence,
            delete_removes_the_key_and_is_idempotent,
            binary_and_empty_values_round_trip,
            special_characters_in_keys_are_literal,
            invalid_keys_are_rejected_before_io,
            oversize_value_is_rejected_before_io,
            namespaces_are_isolated,
            revisions_increase_with_every_write,
            list_is_recursive_sorted_and_bounded_by_prefix,
            list_of_missing_prefix_is_empty,
            delete_tree_removes_the_subtree_at_one_revision,
            atomic_put_without_previous_creates_a_missing_key,
            atomic_put_without_previous_on_existing_key_fails_with_key_exists,
            atomic_put_with_current_revision_replaces,
            atomic_put_with_stale_revision_fails_with_key_modified,
            atomic_put_with_previous_on_missing_key_fails_with_key_not_found,
            atomic_delete_with_current_revision_deletes,
            atomic_delete_with_stale_revision_fails_with_key_modified,
            atomic_delete_of_missing_key_fails_with_key_not_found,
            compare_and_swap_race_loses_no_increment,
            put_options_are_validated,
            absurd_ttls_are_invalid_arguments,
            ttl_key_expires_and_watchers_see_the_delete,
            rewriting_ttl_key_without_ttl_keeps_it,
            revoking_a_lease_deletes_its_keys_at_one_revision,
            lease_lost_fires_when_revoked_elsewhere,
            kept_alive_lease_outlives_its_ttl,
            abandoned_lease_expires_with_its_keys,
            watch_yields_current_value_first,
            watch_of_missing_key_yields_none_first,
            watch_sees_same_value_rewrite_as_a_change,
            watch_sees_delete,
            watch_observes_writes_from_other_handles,
            watch_tree_yields_full_lists,
            watch_prefix_events_starts_with_snapshot_then_events,
            watch_prefix_events_from_revision_replays_history,
            watch_yields_resync_after_history_loss,
            dropping_a_watch_leaves_the_store_usable,
            lock_value_is_visible_while_held_and_gone_after_unlock,
            lock_bookkeeping_is_invisible,
            nested_namespace_lock_bookkeeping_is_never_read,
            lock_is_renewed_past_its_ttl,
            second_locker_waits_until_release,
            dead_holder_is_replaced_after_ttl,
            fencing_tokens_increase,
            locks_exclude_under_contention,
            close_makes_every_call_fail_with_closed,
            leases_and_locks_are_lost_at_once_when_the_store_closes,
            txn_applies_its_branch_at_one_revision,
            txn_failed_compare_applies_nothing_of_the_other_branch,
            txn_compares_value_revision_create_revision_lease_and_absence,
            txn_writes_reach_watchers_as_one_revision,
            txn_transfers_under_contention_conserve_every_unit,
            txn_over_the_limits_is_invalid_argument,
            txn_ttl_put_expires,
            election_has_one_leader_at_a_time_across_connections,
            killed_leader_is_replaced_within_ttl,
            observers_see_every_leader_change_in_order,
            proclaim_after_resigning_elsewhere_is_lock_lost,
            elections_and_locks_of_one_name_do_not_meet,
        }
    };
}

/// The names of a list of tests, as strings.
#[doc(hidden)]
#[macro_export]
macro_rules! __test_names {
    ($attrs:tt $harness:expr; $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
}

/// The name of every test [`conformance_tests!`] runs.
pub const CONFORMANCE_TESTS: &[&str] = __each_conformance_test!(@names);

/// Defines one test function per name; used by [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __define_tests {
    ($attrs:tt $harness:expr; $($name:ident),* $(,)?) => {
        $( $crate::__define_test! { $attrs $name, $harness } )*
    };
}

/// Defines one test function; used by [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __define_test {
    ([$($attr:tt)*] $name:ident, $harness:expr) => {
        $($attr)*
        async fn $name() {
            let harness = $harness;
            $crate::$name(&harness).await;
        }
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` taking a harness in this crate's test modules.
    fn defined_tests() -> Vec<String> {
        let sources = [
            include_str!("election.rs"),
            include_str!("keys.rs"),
            include_str!("leases.rs"),
            include_str!("lifecycle.rs"),
            include_str!("locks.rs"),
            include_str!("operations.rs"),
            include_str!("txn.rs"),
            include_str!("watch.rs"),
        ];
        let mut names = Vec::new();
        for source in sources {
            for (at, marker) in source.match_indices("\npub async fn ") {
                let rest = &source[at + marker.len()..];
                let Some((name, args)) = rest.split_once('(') else {
                    continue;
                };
                let args = args.split(')').next().unwrap_or_default();
                if args.trim_start().starts_with("harness: &dyn Harness") {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn every_conformance_test_is_in_the_list_the_macro_runs() {
        let mut listed: Vec<String> = super::CONFORMANCE_TESTS
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        listed.sort();
        let defined = defined_tests();
        let missing: Vec<&String> = defined.iter().filter(|n| !listed.contains(n)).collect();
        let stale: Vec<&String> = listed.iter().filter(|n| !defined.contains(n)).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "conformance_tests! misses {missing:?} and lists tests that do not exist: {stale:?}"
        );
        assert!(
            defined.len() >= 60,
            "the parse found only {}",
            defined.len()
        );
    }
}
