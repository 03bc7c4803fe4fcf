//! [`KvPair`]: a key, its value and its revisions ([contract §2](crate::contract#2-revisions)).

use bytes::Bytes;

use crate::lease::LeaseId;

/// A key with its value and revisions, as returned by reads and writes.
///
/// Revisions are store-wide and strictly increasing: every successful write gets a new
/// one, and one operation has one revision however many keys it touches (as etcd's
/// `mod_revision` / `create_revision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvPair {
    /// The normalised key, relative to the store's namespace.
    pub key: String,
    /// The value: arbitrary bytes, possibly empty.
    pub value: Bytes,
    /// The revision of the key's last write (libkv `LastIndex`, etcd `mod_revision`);
    /// always `> 0`. Pass the pair to `atomic_put`/`atomic_delete` to compare against it.
    pub revision: u64,
    /// The revision that created this incarnation of the key (etcd `create_revision`):
    /// it stays the same across updates and changes after a delete and re-create.
    pub create_revision: u64,
    /// The lease the key is attached to, if any; the key is deleted when it ends.
    pub lease: Option<LeaseId>,
}
