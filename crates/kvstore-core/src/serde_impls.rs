//! `serde` support (feature `serde`): [`KvPair`], [`LeaseId`], [`Snapshot`] and
//! [`WatchEvent`] as JSON-friendly records, the shapes `kvctl --output json` prints:
//!
//! - a pair: `{"key": "a", "value_base64": "dg==", "revision": 7, "create_revision": 5,
//!   "lease": "000000000000002a"}` (values are bytes, so base64; a lease as the 16 hex
//!   digits its `Display` shows, or `null`);
//! - an event: `{"type": "put", "pair": {..}}`, `{"type": "delete", "key": "a",
//!   "revision": 8}`, `{"type": "snapshot" | "resync", "revision": 8, "pairs": [..]}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lease::LeaseId;
use crate::pair::KvPair;
use crate::watch::{Snapshot, WatchEvent};

impl Serialize for LeaseId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let id = u64::from_str_radix(&text, 16).map_err(|error| {
            serde::de::Error::custom(format!("lease id {text:?} is not 16 hex digits: {error}"))
        })?;
        // Display shows the i64's two's-complement bits.
        Ok(LeaseId(id as i64))
    }
}

#[derive(Serialize, Deserialize)]
struct PairRecord {
    key: String,
    value_base64: String,
    revision: u64,
    create_revision: u64,
    lease: Option<LeaseId>,
}

impl Serialize for KvPair {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PairRecord {
            key: self.key.clone(),
            value_base64: STANDARD.encode(&self.value),
            revision: self.revision,
            create_revision: self.create_revision,
            lease: self.lease,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KvPair {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = PairRecord::deserialize(deserializer)?;
        let value = STANDARD.decode(&record.value_base64).map_err(|error| {
            serde::de::Error::custom(format!("value_base64 is not base64: {error}"))
        })?;
        Ok(KvPair {
            key: record.key,
            value: Bytes::from(value),
            revision: record.revision,
            create_revision: record.create_revision,
            lease: record.lease,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventRecord {
    Snapshot { revision: u64, pairs: Vec<KvPair> },
    Resync { revision: u64, pairs: Vec<KvPair> },
    Put { pair: KvPair },
    Delete { key: String, revision: u64 },
}

impl Serialize for WatchEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = match self.clone() {
            WatchEvent::Snapshot(Snapshot { revision, pairs }) => {
                EventRecord::Snapshot { revision, pairs }
            }
            WatchEvent::Resync(Snapshot { revision, pairs }) => {
                EventRecord::Resync { revision, pairs }
            }
            WatchEvent::Put(pair) => EventRecord::Put { pair },
            WatchEvent::Delete { key, revision } => EventRecord::Delete { key, revision },
        };
        record.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for WatchEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match EventRecord::deserialize(deserializer)? {
            EventRecord::Snapshot { revision, pairs } => {
                WatchEvent::Snapshot(Snapshot { revision, pairs })
            }
            EventRecord::Resync { revision, pairs } => {
                WatchEvent::Resync(Snapshot { revision, pairs })
            }
            EventRecord::Put { pair } => WatchEvent::Put(pair),
            EventRecord::Delete { key, revision } => WatchEvent::Delete { key, revision },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_events_round_trip_through_json() {
        let pair = KvPair {
            key: "a/b".into(),
            value: Bytes::from_static(b"\x00v"),
            revision: 7,
            create_revision: 5,
            lease: Some(LeaseId(-2)),
        };
        let json = serde_json::to_value(&pair).unwrap();
        assert_eq!(json["value_base64"], "AHY=");
        assert_eq!(json["lease"], "fffffffffffffffe");
        assert_eq!(serde_json::from_value::<KvPair>(json).unwrap(), pair);
        for event in [
            WatchEvent::Put(pair.clone()),
            WatchEvent::Delete {
                key: "a".into(),
                revision: 9,
            },
            WatchEvent::Resync(Snapshot {
                revision: 9,
                pairs: vec![pair.clone()],
            }),
        ] {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<WatchEvent>(&json).unwrap(), event);
        }
        let put = serde_json::to_value(WatchEvent::Put(pair)).unwrap();
        assert_eq!(put["type"], "put");
        assert_eq!(put["pair"]["key"], "a/b");
    }
}
