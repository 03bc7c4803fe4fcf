//! Where things live in the ensemble and how they are encoded: znode paths, key names,
//! the key record and the change-log entry.

use bytes::{Buf, BufMut, Bytes};
use kvstore_core::LeaseId;

/// The two key areas of a store: user keys, and lock bookkeeping beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Area {
    /// User keys: `/{ns}/kv`.
    Kv,
    /// Lock waiter keys: `/{ns}/lock`, invisible to user reads.
    Lock,
}

impl Area {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Area::Kv => "kv",
            Area::Lock => "lock",
        }
    }

    fn code(self) -> u8 {
        match self {
            Area::Kv => 0,
            Area::Lock => 1,
        }
    }

    fn from_code(code: u8) -> Option<Area> {
        match code {
            0 => Some(Area::Kv),
            1 => Some(Area::Lock),
            _ => None,
        }
    }
}

/// The znode paths of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    /// `/{ns}`.
    pub root: String,
}

/// The prefix of change-log entry names (`e-0000000042`).
pub(crate) const LOG_ENTRY_PREFIX: &str = "e-";

impl Paths {
    pub(crate) fn new(namespace: &str) -> Paths {
        Paths {
            root: format!("/{namespace}"),
        }
    }

    /// The parent of every key of `area`.
    pub(crate) fn area(&self, area: Area) -> String {
        format!("{}/{}", self.root, area.name())
    }

    /// The znode of `key` in `area`: one znode per key, its name the escaped key.
    pub(crate) fn key(&self, area: Area, key: &str) -> String {
        format!("{}/{}/{}", self.root, area.name(), escape(key))
    }

    /// The revision counter, written by every operation.
    pub(crate) fn rev(&self) -> String {
        format!("{}/rev", self.root)
    }

    /// A node written to read the server's clock.
    pub(crate) fn clock(&self) -> String {
        format!("{}/clock", self.root)
    }

    /// The change log's parent; its data is the trim mark.
    pub(crate) fn log(&self) -> String {
        format!("{}/log", self.root)
    }

    /// A change-log entry by name.
    pub(crate) fn log_entry(&self, name: &str) -> String {
        format!("{}/log/{name}", self.root)
    }

    /// The path prefix a sequential create of a log entry takes.
    pub(crate) fn log_entry_prefix(&self) -> String {
        format!("{}/log/{LOG_ENTRY_PREFIX}", self.root)
    }

    /// The parent of every lease.
    pub(crate) fn leases(&self) -> String {
        format!("{}/leases", self.root)
    }

    /// The znode of a lease: `{ns}/leases/<id in hex>`.
    pub(crate) fn lease(&self, lease: LeaseId) -> String {
        format!("{}/leases/{lease}", self.root)
    }

    /// The membership znode saying `key` of `area` is attached to `lease`.
    pub(crate) fn member(&self, lease: LeaseId, area: Area, key: &str) -> String {
        format!("{}/leases/{lease}/{}", self.root, member_name(area, key))
    }

    /// Every structural znode, parents first.
    pub(crate) fn structure(&self) -> Vec<String> {
        vec![
            self.area(Area::Kv),
            self.area(Area::Lock),
            self.rev(),
            self.clock(),
            self.log(),
            self.leases(),
        ]
    }
}

/// The name of a lease membership znode: `kv:<escaped key>` or `lock:<escaped key>`.
pub(crate) fn member_name(area: Area, key: &str) -> String {
    format!("{}:{}", area.name(), escape(key))
}

/// The area and key a lease membership znode names.
pub(crate) fn parse_member(name: &str) -> Option<(Area, String)> {
    let (area, key) = name.split_once(':')?;
    let area = match area {
        "kv" => Area::Kv,
        "lock" => Area::Lock,
        _ => return None,
    };
    Some((area, unescape(key)?))
}

/// Whether ZooKeeper refuses `c` in a path (its `PathUtils.validatePath`): control
/// characters and the ranges U+D800–U+F8FF and U+FFF0–U+FFFF.
pub(crate) fn refused_by_zookeeper(c: char) -> bool {
    let u = u32::from(c);
    [
        0x0000..=0x001f,
        0x007f..=0x009f,
        0xd800..=0xf8ff,
        0xfff0..=0xffff,
    ]
    .into_iter()
    .any(|r| r.contains(&u))
}

/// A key as one znode name: `%` and `/` percent-encoded (`a/b` → `a%2Fb`), and so are
/// characters ZooKeeper refuses in paths (as their UTF-8 bytes). Everything else is kept,
/// so `zkCli.sh get /kvstore/kv/config%2Fmode` reads the key `config/mode`.
pub(crate) fn escape(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        if c == '%' || c == '/' || refused_by_zookeeper(c) {
            let mut bytes = [0u8; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                name.push_str(&format!("%{byte:02X}"));
            }
        } else {
            name.push(c);
        }
    }
    name
}

/// The key a znode name holds, or `None` for a name no key escapes to (written by
/// another tool): such znodes are skipped.
pub(crate) fn unescape(name: &str) -> Option<String> {
    let key = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    (escape(&key) == name).then_some(key)
}

/// The first bytes of a key znode's data when it carries a header (a lease, or a value
/// that itself starts with these bytes). Any other data is the value itself.
const RECORD_MAGIC: &[u8] = b"\0kvs1";

/// A key znode's data: the value, with the key's lease. Data without the header (what
/// `zkCli.sh create` writes) is a value without lease, so plain values stay readable.
pub(crate) fn encode_record(value: &[u8], lease: Option<LeaseId>) -> Vec<u8> {
    if lease.is_none() && !value.starts_with(RECORD_MAGIC) {
        return value.to_vec();
    }
    let mut data = Vec::with_capacity(RECORD_MAGIC.len() + 8 + value.len());
    data.extend_from_slice(RECORD_MAGIC);
    data.put_i64(lease.map_or(0, |l| l.0));
    data.extend_from_slice(value);
    data
}

/// The value and lease of a key znode's data.
pub(crate) fn decode_record(data: Vec<u8>) -> (Bytes, Option<LeaseId>) {
    let header = RECORD_MAGIC.len() + 8;
    if data.len() >= header && data.starts_with(RECORD_MAGIC) {
        let mut lease = &data[RECORD_MAGIC.len()..header];
        let lease = lease.get_i64();
        let value = Bytes::from(data).slice(header..);
        (value, (lease != 0).then_some(LeaseId(lease)))
    } else {
        (Bytes::from(data), None)
    }
}

/// The first bytes of a change-log entry.
const LOG_MAGIC: &[u8] = b"kvlog1";

/// What one operation did to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Written with this value.
    Put {
        value: Bytes,
        /// `None` when this operation created the key (its create revision is the
        /// entry's revision).
        create_revision: Option<u64>,
        lease: Option<LeaseId>,
    },
    /// Deleted.
    Delete,
}

/// One key changed by an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub area: Area,
    pub key: String,
    pub op: Op,
}

/// The bytes a change adds to an entry, for sizing batches.
pub(crate) fn change_size(key: &str, value_len: usize) -> usize {
    32 + key.len() + value_len
}

/// A change-log entry: every key one operation changed. Its revision is the entry
/// znode's `czxid`, the zxid of the operation's `multi`.
pub(crate) fn encode_entry(changes: &[Change]) -> Vec<u8> {
    let size: usize = changes
        .iter()
        .map(|c| {
            let value = match &c.op {
                Op::Put { value, .. } => value.len(),
                Op::Delete => 0,
            };
            change_size(&c.key, value)
        })
        .sum();
    let mut data = Vec::with_capacity(LOG_MAGIC.len() + 4 + size);
    data.extend_from_slice(LOG_MAGIC);
    data.put_u32(u32::try_from(changes.len()).unwrap_or(u32::MAX));
    for change in changes {
        data.put_u8(change.area.code());
        data.put_u32(u32::try_from(change.key.len()).unwrap_or(u32::MAX));
        data.extend_from_slice(change.key.as_bytes());
        match &change.op {
            Op::Delete => data.put_u8(0),
            Op::Put {
                value,
                create_revision,
                lease,
            } => {
                data.put_u8(1);
                data.put_u64(create_revision.unwrap_or(0));
                data.put_i64(lease.map_or(0, |l| l.0));
                data.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
                data.extend_from_slice(value);
            }
        }
    }
    data
}

/// The changes of an entry, or `None` when the data is not an entry.
pub(crate) fn decode_entry(data: Vec<u8>) -> Option<Vec<Change>> {
    let data = Bytes::from(data);
    if !data.starts_with(LOG_MAGIC) {
        return None;
    }
    let mut buf = data.slice(LOG_MAGIC.len()..);
    let count = take_u32(&mut buf)?;
    let mut changes = Vec::new();
    for _ in 0..count {
        if buf.remaining() < 1 {
            return None;
        }
        let area = Area::from_code(buf.get_u8())?;
        let key_len = take_u32(&mut buf)?;
        let key = String::from_utf8(take(&mut buf, key_len)?.to_vec()).ok()?;
        if buf.remaining() < 1 {
            return None;
        }
        let op = match buf.get_u8() {
            0 => Op::Delete,
            1 => {
                if buf.remaining() < 16 {
                    return None;
                }
                let create_revision = buf.get_u64();
                let lease = buf.get_i64();
                let value_len = take_u32(&mut buf)?;
                Op::Put {
                    value: take(&mut buf, value_len)?,
                    create_revision: (create_revision != 0).then_some(create_revision),
                    lease: (lease != 0).then_some(LeaseId(lease)),
                }
            }
            _ => return None,
        };
        changes.push(Change { area, key, op });
    }
    Some(changes)
}

fn take_u32(buf: &mut Bytes) -> Option<usize> {
    (buf.remaining() >= 4).then(|| buf.get_u32() as usize)
}

fn take(buf: &mut Bytes, len: usize) -> Option<Bytes> {
    (buf.remaining() >= len).then(|| buf.split_to(len))
}

/// The sequence number of a log entry name, for ordering (`None`: not an entry).
pub(crate) fn entry_sequence(name: &str) -> Option<i64> {
    name.strip_prefix(LOG_ENTRY_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_to_one_readable_znode_name_and_back() {
        for (key, name) in [
            ("config/mode", "config%2Fmode"),
            ("g/100%/1", "g%2F100%25%2F1"),
            ("plain", "plain"),
            ("a*b?[c]\\d", "a*b?[c]\\d"),
            ("priv\u{e000}", "priv%EE%80%80"),
        ] {
            assert_eq!(escape(key), name);
            assert_eq!(unescape(name).as_deref(), Some(key));
        }
        assert_eq!(unescape("a%2fb"), None, "only our own spelling is a key");
        assert_eq!(unescape("bad%zz"), None);
    }

    #[test]
    fn records_keep_plain_values_plain() {
        assert_eq!(encode_record(b"blue", None), b"blue");
        let leased = encode_record(b"blue", Some(LeaseId(7)));
        assert_eq!(
            decode_record(leased),
            (Bytes::from("blue"), Some(LeaseId(7)))
        );
        let tricky = encode_record(b"\0kvs1-looks-like-a-header", None);
        assert_eq!(
            decode_record(tricky),
            (Bytes::from("\0kvs1-looks-like-a-header"), None)
        );
        assert_eq!(decode_record(Vec::new()), (Bytes::new(), None));
    }

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let changes = vec![
            Change {
                area: Area::Kv,
                key: "a/b".into(),
                op: Op::Put {
                    value: Bytes::from_static(b"\0\xffv"),
                    create_revision: Some(42),
                    lease: Some(LeaseId(9)),
                },
            },
            Change {
                area: Area::Lock,
                key: "l/1".into(),
                op: Op::Delete,
            },
        ];
        assert_eq!(decode_entry(encode_entry(&changes)), Some(changes.clone()));
        let mut truncated = encode_entry(&changes);
        truncated.truncate(truncated.len() - 1);
        assert_eq!(decode_entry(truncated), None);
        assert_eq!(decode_entry(b"hello".to_vec()), None);
    }

    #[test]
    fn member_names_carry_area_and_key() {
        let name = member_name(Area::Lock, "jobs/x");
        assert_eq!(name, "lock:jobs%2Fx");
        assert_eq!(parse_member(&name), Some((Area::Lock, "jobs/x".into())));
        assert_eq!(parse_member("other:x"), None);
    }
}
