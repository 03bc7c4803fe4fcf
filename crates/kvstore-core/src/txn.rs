//! Transactions ([contract §10](crate::contract#10-transactions)): etcd's `Txn`, on every backend.
//!
//! A [`Txn`] holds comparisons and two branches of operations: if every comparison holds,
//! the `and_then` branch is applied, otherwise the `or_else` branch; either way atomically,
//! at one revision. Watchers see a branch's writes as one batch at that revision.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kvstore_core::Error> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use kvstore_core::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp, TxnResult};
//!
//! let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! store.put("accounts/a", Bytes::from("10"), PutOptions::default()).await?;
//! let a = store.get("accounts/a").await?;
//!
//! // Move the balance to b only if nobody changed a since we read it.
//! let moved = store
//!     .txn(
//!         Txn::new()
//!             .when([Compare::revision("accounts/a", CompareOp::Equal, a.revision)])
//!             .and_then([
//!                 TxnOp::put("accounts/a", Bytes::from("0"), PutOptions::default()),
//!                 TxnOp::put("accounts/b", Bytes::from("10"), PutOptions::default()),
//!             ])
//!             .or_else([TxnOp::get("accounts/a")]),
//!     )
//!     .await?;
//! assert!(moved.succeeded);
//! assert!(matches!(&moved.results[1], TxnResult::Put(b) if b.revision == moved.revision));
//! # Ok(()) }
//! ```

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::LeaseId;
use crate::options::PutOptions;
use crate::pair::KvPair;

/// The most comparisons, and the most operations in each branch, of one transaction:
/// etcd's default `--max-txn-ops`. More is [`Error::InvalidArgument`].
pub const MAX_TXN_OPS: usize = 128;

/// How a comparison relates the key's current state to the given operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// The key's value is equal to the operand.
    Equal,
    /// Not equal.
    NotEqual,
    /// The key's value is greater (byte-wise for values).
    Greater,
    /// The key's value is less (byte-wise for values).
    Less,
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, current: &T, operand: &T) -> bool {
        match self {
            CompareOp::Equal => current == operand,
            CompareOp::NotEqual => current != operand,
            CompareOp::Greater => current > operand,
            CompareOp::Less => current < operand,
        }
    }
}

/// What a comparison looks at, with its operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value. On an absent key a value comparison never holds (as etcd).
    Value(Bytes),
    /// The revision of the key's last write (etcd `mod_revision`); 0 when absent.
    Revision(u64),
    /// The revision that created the key (etcd `create_revision`); 0 when absent, so
    /// `CreateRevision(0)` with [`CompareOp::Equal`] means "absent".
    CreateRevision(u64),
    /// The lease the key is attached to; `None` when it has none or is absent.
    Lease(Option<LeaseId>),
}

/// One comparison of a transaction (etcd `Compare`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared, relative to the store's namespace.
    pub key: String,
    /// What is compared.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

impl Compare {
    /// The key's value `op` `value`.
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<Bytes>) -> Compare {
        Compare {
            key: key.into(),
            target: CompareTarget::Value(value.into()),
            op,
        }
    }

    /// The key's revision (of its last write) `op` `revision`.
    pub fn revision(key: impl Into<String>, op: CompareOp, revision: u64) -> Compare {
        Compare {
            key: key.into(),
            target: CompareTarget::Revision(revision),
            op,
        }
    }

    /// The key's create revision `op` `revision`.
    pub fn create_revision(key: impl Into<String>, op: CompareOp, revision: u64) -> Compare {
        Compare {
            key: key.into(),
            target: CompareTarget::CreateRevision(revision),
            op,
        }
    }

    /// The key's lease `op` `lease` (`None`: no lease; ordered by id).
    pub fn lease(key: impl Into<String>, op: CompareOp, lease: Option<LeaseId>) -> Compare {
        Compare {
            key: key.into(),
            target: CompareTarget::Lease(lease),
            op,
        }
    }

    /// The key is absent (its create revision is 0, as etcd's idiom).
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare::create_revision(key, CompareOp::Equal, 0)
    }

    /// The key is present.
    pub fn present(key: impl Into<String>) -> Compare {
        Compare::create_revision(key, CompareOp::Greater, 0)
    }

    /// Whether this comparison holds for the key's current state (`None`: absent). The
    /// reference semantics every backend follows (the memory backend uses it directly).
    pub fn holds(&self, current: Option<&KvPair>) -> bool {
        match (&self.target, current) {
            (CompareTarget::Value(_), None) => false,
            (CompareTarget::Value(operand), Some(pair)) => {
                self.op.holds(pair.value.as_ref(), operand.as_ref())
            }
            (CompareTarget::Revision(operand), current) => {
                self.op.holds(&current.map_or(0, |p| p.revision), operand)
            }
            (CompareTarget::CreateRevision(operand), current) => self
                .op
                .holds(&current.map_or(0, |p| p.create_revision), operand),
            (CompareTarget::Lease(operand), current) => {
                let id = |lease: Option<LeaseId>| lease.map_or(0, |l| l.0);
                self.op
                    .holds(&id(current.and_then(|p| p.lease)), &id(*operand))
            }
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Write `value` at `key` with `options` (a TTL or a lease, as [`crate::Store::put`]).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// TTL or lease.
        options: PutOptions,
    },
    /// Delete `key` (nothing when absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Read `key` as it is after the operations before this one in the branch.
    Get {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// A put.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>, options: PutOptions) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            options,
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> TxnOp {
        TxnOp::Delete { key: key.into() }
    }

    /// A get.
    pub fn get(key: impl Into<String>) -> TxnOp {
        TxnOp::Get { key: key.into() }
    }

    /// The key the operation is on.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }
}

/// A transaction: comparisons, and the operations applied when they all hold
/// (`and_then`) or when one does not (`or_else`). Build it with [`Txn::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no comparison: the `and_then` branch applies).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Add comparisons; all of them must hold for the `and_then` branch.
    #[must_use]
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(compares);
        self
    }

    /// Add operations applied when every comparison holds.
    #[must_use]
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Add operations applied when a comparison does not hold.
    #[must_use]
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.failure.extend(ops);
        self
    }

    /// The comparisons.
    pub fn compares(&self) -> &[Compare] {
        &self.compares
    }

    /// The operations applied when every comparison holds.
    pub fn success(&self) -> &[TxnOp] {
        &self.success
    }

    /// The operations applied otherwise.
    pub fn failure(&self) -> &[TxnOp] {
        &self.failure
    }

    /// The branch applied given whether the comparisons held.
    pub fn branch(&self, succeeded: bool) -> &[TxnOp] {
        if succeeded {
            &self.success
        } else {
            &self.failure
        }
    }

    /// Check sizes and keys, and normalise keys, before any I/O; `max_value` is the
    /// backend's value limit.
    pub(crate) fn validated(mut self, max_value: usize) -> Result<Txn> {
        const OPERATION: &str = "txn";
        if self.compares.len() > MAX_TXN_OPS
            || self.success.len() > MAX_TXN_OPS
            || self.failure.len() > MAX_TXN_OPS
        {
            return Err(Error::invalid_argument(
                OPERATION,
                format!(
                    "a transaction takes at most {MAX_TXN_OPS} comparisons and {MAX_TXN_OPS} \
                     operations in each branch; this one has {} comparisons, {} and {}",
                    self.compares.len(),
                    self.success.len(),
                    self.failure.len()
                ),
            ));
        }
        for compare in &mut self.compares {
            compare.key = Key::new(&compare.key)?.as_str().to_owned();
        }
        for branch in [&mut self.success, &mut self.failure] {
            let mut written = std::collections::HashSet::new();
            for op in branch.iter_mut() {
                let normalised = Key::new(op.key())?;
                match op {
                    TxnOp::Put {
                        key,
                        value,
                        options,
                    } => {
                        options.validate(OPERATION)?;
                        if value.len() > max_value {
                            return Err(Error::ValueTooLarge {
                                key: normalised.to_string(),
                                size: value.len(),
                                limit: max_value,
                            });
                        }
                        *key = normalised.as_str().to_owned();
                    }
                    TxnOp::Delete { key } | TxnOp::Get { key } => {
                        *key = normalised.as_str().to_owned();
                    }
                }
                if !matches!(op, TxnOp::Get { .. }) && !written.insert(op.key().to_owned()) {
                    return Err(Error::invalid_argument(
                        OPERATION,
                        format!(
                            "key {:?} is written twice in one branch (etcd refuses it too)",
                            op.key()
                        ),
                    ));
                }
            }
        }
        Ok(self)
    }

    /// Every put of either branch with a TTL, for core to turn into leases.
    pub(crate) fn ttl_puts_mut(&mut self) -> impl Iterator<Item = &mut PutOptions> {
        self.success
            .iter_mut()
            .chain(self.failure.iter_mut())
            .filter_map(|op| match op {
                TxnOp::Put { options, .. } if options.ttl.is_some() => Some(options),
                _ => None,
            })
    }
}

/// The outcome of one operation of the applied branch, in the branch's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResult {
    /// The pair a put wrote (its revision is the transaction's).
    Put(KvPair),
    /// Whether a delete found the key.
    Delete {
        /// `true` when the key existed and was deleted.
        deleted: bool,
    },
    /// The pair a get read, `None` when absent.
    Get(Option<KvPair>),
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every comparison held (the `and_then` branch was applied).
    pub succeeded: bool,
    /// The store's revision after the transaction: the revision of its writes when the
    /// applied branch wrote anything.
    pub revision: u64,
    /// One result per operation of the applied branch.
    pub results: Vec<TxnResult>,
}
