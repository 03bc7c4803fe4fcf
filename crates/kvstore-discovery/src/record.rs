//! The stored form of a registration: the [`Instance`] JSON plus the registration's
//! claim on its id, and the decoding of records into view members.
//!
//! **One id, one writer** ([contract §9](kvstore_core::contract#9-discovery)). Every [`crate::Registration`] writes a
//! random token and the revision of its first write (`since`) next to the instance
//! fields:
//!
//! ```json
//! {"schema_version":1,"id":"api-1",...,"registration":{"token":"5f0c9a3e17d2b864","since":1742}}
//! ```
//!
//! A registration that finds a record of its id carrying another token compares claims:
//! the newer registration is the one whose first write has the higher store revision (a
//! record without `since` is that first write, so its own revision is its claim), the
//! token breaking ties. The older one reports `Replaced` and stops writing, so two
//! registrations of one id settle after a couple of writes instead of rewriting each
//! other forever. Store revisions order the claims, so no clock needs to agree.
//! Readers of the instance ignore the field, as they ignore every field they do not
//! know.

use std::sync::Arc;

use bytes::Bytes;
use kvstore_core::{Error, KvPair, Result};
use serde::{Deserialize, Serialize};

use crate::instance::Instance;

/// A registration's claim on its id, as stored in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// Random per registration, as 16 hex digits (a JSON number would lose bits in
    /// JavaScript readers).
    #[serde(with = "hex_token")]
    pub token: u64,
    /// The revision of the registration's first write; absent in that first write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl Claim {
    /// A fresh claim for a new registration (its `since` is learned from its first
    /// write).
    pub(crate) fn new() -> Claim {
        Claim {
            token: rand::random(),
            since: None,
        }
    }

    /// Where this claim, found in `pair`, ranks: a later first write wins, the token
    /// breaks ties.
    pub(crate) fn rank(&self, pair: &KvPair) -> (u64, u64) {
        (self.since.unwrap_or(pair.revision), self.token)
    }

    /// The claim stored in a record, if it has one.
    pub(crate) fn read(record: &[u8]) -> Option<Claim> {
        #[derive(Deserialize)]
        struct Envelope {
            registration: Option<Claim>,
        }
        serde_json::from_slice::<Envelope>(record)
            .ok()
            .and_then(|envelope| envelope.registration)
    }
}

mod hex_token {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(token: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{token:016x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        u64::from_str_radix(&text, 16).map_err(D::Error::custom)
    }
}

/// The record a registration writes: the instance's fields and its claim.
pub(crate) fn encode(instance: &Instance, claim: &Claim) -> Result<Bytes> {
    #[derive(Serialize)]
    struct Record<'a> {
        #[serde(flatten)]
        instance: &'a Instance,
        registration: &'a Claim,
    }
    serde_json::to_vec(&Record {
        instance,
        registration: claim,
    })
    .map(Bytes::from)
    .map_err(|e| Error::invalid_argument("register", e.to_string()))
}

/// One instance in a view, with the revision of its record.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub instance: Arc<Instance>,
    pub revision: u64,
}

/// Why a record under a service's prefix is not a usable instance.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Undecodable {
    #[error("{0}")]
    Invalid(Error),
    #[error("the record is for {service}/{id}")]
    Misplaced { service: String, id: String },
}

/// The instance of a record at `services/{service}/{id}`.
pub(crate) fn decode(
    service: &str,
    id: &str,
    pair: &KvPair,
) -> std::result::Result<Member, Undecodable> {
    let instance = Instance::from_json(&pair.value).map_err(Undecodable::Invalid)?;
    if instance.id != id || instance.service != service {
        return Err(Undecodable::Misplaced {
            service: instance.service,
            id: instance.id,
        });
    }
    Ok(Member {
        instance: Arc::new(instance),
        revision: pair.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(value: Bytes, revision: u64) -> KvPair {
        KvPair {
            key: "services/api/api-1".into(),
            value,
            revision,
            create_revision: revision,
            lease: None,
        }
    }

    #[test]
    fn a_record_carries_its_claim_and_still_decodes_as_an_instance() {
        let instance = Instance::new("api", "api-1", "10.0.0.1:8080");
        let claim = Claim {
            token: u64::MAX - 1,
            since: Some(1_800_000_000_000_000),
        };
        let record = encode(&instance, &claim).unwrap();
        assert_eq!(Claim::read(&record), Some(claim));
        assert_eq!(Instance::from_json(&record).unwrap(), instance);
        let member = decode("api", "api-1", &pair(record, 7)).unwrap();
        assert_eq!(member.revision, 7);
    }

    #[test]
    fn a_first_write_ranks_by_its_own_revision() {
        let first = Claim {
            token: 1,
            since: None,
        };
        let record = pair(Bytes::new(), 42);
        assert_eq!(first.rank(&record), (42, 1));
        let later = Claim {
            token: 0,
            since: Some(40),
        };
        assert!(first.rank(&record) > later.rank(&record));
    }

    #[test]
    fn records_without_a_claim_or_in_the_wrong_place_are_recognised() {
        let instance = Instance::new("api", "other", "10.0.0.1:8080");
        let record = Bytes::from(instance.to_json().unwrap());
        assert_eq!(Claim::read(&record), None);
        assert!(matches!(
            decode("api", "api-1", &pair(record, 3)),
            Err(Undecodable::Misplaced { .. })
        ));
        assert!(matches!(
            decode("api", "api-1", &pair(Bytes::from("{not json"), 3)),
            Err(Undecodable::Invalid(_))
        ));
    }
}
