//! Key normalisation and validation ([contract §1](crate::contract#1-keys-values-and-namespaces)), done once here for every backend.
//!
//! A key is a UTF-8 string of `/`-separated segments. Leading and trailing `/` are dropped,
//! so `"/a/b/"` and `"a/b"` name the same key. A [`Key`] or [`Prefix`] can only be built by
//! validating, so a backend never sees a key that breaks the rules.
//!
//! ```
//! use kvstore_core::{Key, Prefix};
//!
//! assert_eq!(Key::new("/svc/api/").unwrap().as_str(), "svc/api");
//! assert!(Key::new("a//b").is_err());
//! assert!(Key::new("a/../b").is_err());
//! assert_eq!(Prefix::new("svc").unwrap().contains("svc/x"), true);
//! assert_eq!(Prefix::new("svc").unwrap().contains("svcX/x"), false);
//! ```

use std::fmt;

use crate::error::{Error, Result};

/// The longest key accepted, in bytes after normalisation (and before any namespace is
/// added). etcd has no key limit of its own beyond its request size; 4 KiB keeps keys
/// comfortably inside every backend.
pub const MAX_KEY_LEN: usize = 4096;

/// A validated, normalised key: non-empty, no empty, `.` or `..` segments, no control
/// characters (NUL included), at most [`MAX_KEY_LEN`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

/// A validated, normalised prefix (a "directory"). It names every key strictly below
/// `prefix/`; the empty prefix names the whole store ([contract §1](crate::contract#1-keys-values-and-namespaces)).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Prefix(String);

fn normalise(raw: &str) -> &str {
    raw.trim_matches('/')
}

fn check_segments(raw: &str, normalised: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidKey {
            key: raw.to_owned(),
            reason,
        })
    };
    if normalised.len() > MAX_KEY_LEN {
        return invalid("longer than 4096 bytes");
    }
    if let Some(control) = normalised.chars().find(|c| c.is_control()) {
        return invalid(if control == '\0' {
            "contains a NUL byte"
        } else {
            "contains a control character"
        });
    }
    for segment in normalised.split('/') {
        match segment {
            "" => return invalid("contains an empty segment (`//`)"),
            "." | ".." => return invalid("contains a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `key` is a valid key exactly as written (already normalised), without
/// allocating. Reads use it to skip what another namespace's bookkeeping or another tool
/// left in the keyspace ([contract §1](crate::contract#1-keys-values-and-namespaces)).
pub(crate) fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && normalise(key) == key && check_segments(key, key).is_ok()
}

impl Key {
    /// Normalise and validate `raw`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] naming the rule `raw` breaks (empty, `//`, `.`/`..` segment,
    /// NUL or other control character, too long).
    pub fn new(raw: &str) -> Result<Self> {
        let normalised = normalise(raw);
        if normalised.is_empty() {
            return Err(Error::InvalidKey {
                key: raw.to_owned(),
                reason: "is empty",
            });
        }
        check_segments(raw, normalised)?;
        Ok(Key(normalised.to_owned()))
    }

    /// The normalised key, relative to the store's namespace.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key with `child` (itself validated) appended as further segments.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if `child` is not a valid key or the result is too long.
    pub fn join(&self, child: &str) -> Result<Key> {
        Key::new(&format!("{}/{}", self.0, Key::new(child)?.0))
    }
}

impl Prefix {
    /// Normalise and validate `raw`. Unlike a key, the empty prefix is allowed and names
    /// the whole store.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] naming the rule `raw` breaks.
    pub fn new(raw: &str) -> Result<Self> {
        let normalised = normalise(raw);
        if !normalised.is_empty() {
            check_segments(raw, normalised)?;
        }
        Ok(Prefix(normalised.to_owned()))
    }

    /// The normalised prefix ("" for the whole store).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the normalised key `key` lies strictly below this prefix: `svc` contains
    /// `svc/a` but neither `svc` itself nor `svcX/a`.
    pub fn contains(&self, key: &str) -> bool {
        self.0.is_empty()
            || (key.len() > self.0.len()
                && key.starts_with(self.0.as_str())
                && key.as_bytes()[self.0.len()] == b'/')
    }

    /// The string every key below this prefix starts with: `"svc/"`, or `""` at the root.
    /// Backends use it to build range or `ZRANGEBYLEX` bounds.
    pub fn key_start(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("{}/", self.0)
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_and_trailing_slashes_are_dropped() {
        assert_eq!(Key::new("/a/b/").unwrap().as_str(), "a/b");
        assert_eq!(Prefix::new("/").unwrap().as_str(), "");
    }

    #[test]
    fn invalid_keys_name_the_rule() {
        for (raw, reason) in [
            ("", "is empty"),
            ("///", "is empty"),
            ("a//b", "contains an empty segment (`//`)"),
            ("a/./b", "contains a `.` or `..` segment"),
            ("..", "contains a `.` or `..` segment"),
            ("a\0b", "contains a NUL byte"),
            ("a\u{1}b", "contains a control character"),
        ] {
            match Key::new(raw) {
                Err(Error::InvalidKey { key, reason: r }) => {
                    assert_eq!(key, raw);
                    assert_eq!(r, reason);
                }
                other => panic!("{raw:?}: expected InvalidKey, got {other:?}"),
            }
        }
        assert!(Key::new(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn only_keys_valid_as_written_pass_the_read_filter() {
        assert!(is_valid_key("a/b"));
        for key in ["", "/a", "a/", "a//b", "a/../b", "b\u{1}locks/x", "a\0b"] {
            assert!(!is_valid_key(key), "{key:?}");
        }
    }

    #[test]
    fn special_characters_are_plain_key_characters() {
        assert_eq!(Key::new("a*b?[c]\\d%e").unwrap().as_str(), "a*b?[c]\\d%e");
    }

    #[test]
    fn prefix_contains_only_keys_strictly_below() {
        let svc = Prefix::new("svc").unwrap();
        assert!(svc.contains("svc/a"));
        assert!(svc.contains("svc/a/b"));
        assert!(!svc.contains("svc"));
        assert!(!svc.contains("svcX/a"));
        assert!(Prefix::default().contains("anything"));
    }
}
