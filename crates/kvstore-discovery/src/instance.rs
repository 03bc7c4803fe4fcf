//! [`Instance`]: one registered endpoint of a service, stored as JSON ([contract §9](kvstore_core::contract#9-discovery)).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use kvstore_core::{Error, Key, Result};
use serde::{Deserialize, Serialize};

/// The version of the JSON record this crate writes. Readers accept this version and
/// ignore fields they do not know, so later releases can add fields without a new
/// version; a record of another version does not decode, and readers drop it from their
/// views with a warning ([contract §9](kvstore_core::contract#9-discovery)).
pub const SCHEMA_VERSION: u32 = 1;

/// The prefix, under the store's namespace, of every registration:
/// `services/{service}/{id}`.
pub const SERVICES_PREFIX: &str = "services";

/// Whether an instance takes new traffic. Ordered from best to worst, so the worse of
/// two statuses is their `max` (a drained instance that fails its health check is
/// `Down`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Serving: balancers pick it.
    #[default]
    Up,
    /// Finishing work before leaving: still listed, but balancers skip it.
    Draining,
    /// Alive but failing its health check ([`crate::Registration::check_health`]):
    /// still listed, but balancers skip it until it is `Up` again.
    Down,
}

/// One endpoint of a service, as registered (go-micro's `Node`, etcd's
/// `endpoints.Endpoint`, with status and weight).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The record's schema version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Unique within the service; one key segment (no `/`).
    pub id: String,
    /// The service name; one key segment (no `/`).
    pub service: String,
    /// Where to reach it: `host:port`.
    pub address: String,
    /// The build or API version it runs (free-form, e.g. `1.4.2`).
    #[serde(default)]
    pub version: String,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic for the weighted balancer (0 takes none). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Availability zone, if the deployment has them.
    #[serde(default)]
    pub zone: Option<String>,
    /// `Up`, `Draining` or `Down`.
    #[serde(default)]
    pub status: Status,
    /// When it registered, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub registered_at: u64,
}

fn default_weight() -> u32 {
    1
}

impl Instance {
    /// An `Up` instance of `service` with weight 1, registered now.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        address: impl Into<String>,
    ) -> Instance {
        Instance {
            schema_version: SCHEMA_VERSION,
            id: id.into(),
            service: service.into(),
            address: address.into(),
            version: String::new(),
            metadata: BTreeMap::new(),
            weight: 1,
            zone: None,
            status: Status::Up,
            registered_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The store key of this instance: `services/{service}/{id}`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when the service or id is not a single valid key segment.
    pub fn key(&self) -> Result<Key> {
        instance_key(&self.service, &self.id)
    }

    /// Check the record before registering it.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a bad service or id; [`Error::InvalidArgument`] for an
    /// address that is not `host:port`.
    pub fn validate(&self) -> Result<()> {
        self.key()?;
        let valid_address = self
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_address {
            return Err(Error::invalid_argument(
                "register",
                format!("address {:?} is not host:port", self.address),
            ));
        }
        Ok(())
    }

    /// The JSON record.
    ///
    /// # Errors
    /// Never in practice (the record has only string keys); mapped to `InvalidArgument`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::invalid_argument("register", e.to_string()))
    }

    /// Parse a JSON record.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the problem for malformed JSON or an unknown
    /// schema version.
    pub fn from_json(bytes: &[u8]) -> Result<Instance> {
        let instance: Instance = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_argument("decode instance", e.to_string()))?;
        if instance.schema_version != SCHEMA_VERSION {
            return Err(Error::invalid_argument(
                "decode instance",
                format!("unknown schema version {}", instance.schema_version),
            ));
        }
        Ok(instance)
    }
}

/// The store key of instance `id` of `service`: `services/{service}/{id}`.
///
/// # Errors
/// [`Error::InvalidKey`] when either is not a single valid key segment.
pub fn instance_key(service: &str, id: &str) -> Result<Key> {
    service_prefix(service)?.join(single_segment(
        id,
        "an instance id must be one key segment (no `/`)",
    )?)
}

/// The prefix of every instance of `service`: `services/{service}`.
///
/// # Errors
/// [`Error::InvalidKey`] when `service` is not a single valid key segment.
pub fn service_prefix(service: &str) -> Result<Key> {
    Key::new(SERVICES_PREFIX)?.join(single_segment(
        service,
        "a service name must be one key segment (no `/`)",
    )?)
}

fn single_segment<'a>(segment: &'a str, reason: &'static str) -> Result<&'a str> {
    if segment.contains('/') {
        return Err(Error::InvalidKey {
            key: segment.to_owned(),
            reason,
        });
    }
    Key::new(segment)?;
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut instance = Instance::new("api", "api-1", "10.0.0.1:8080");
        instance.metadata.insert("region".into(), "eu".into());
        instance.zone = Some("eu-1a".into());
        instance.status = Status::Draining;
        let back = Instance::from_json(&instance.to_json().unwrap()).unwrap();
        assert_eq!(back, instance);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut record: serde_json::Value = serde_json::from_slice(
            &Instance::new("api", "api-1", "10.0.0.1:8080")
                .to_json()
                .unwrap(),
        )
        .unwrap();
        record["added_in_a_later_release"] = serde_json::json!({"nested": [1, 2]});
        let back = Instance::from_json(record.to_string().as_bytes()).unwrap();
        assert_eq!(back.id, "api-1");
    }

    #[test]
    fn records_from_a_future_schema_are_refused() {
        let mut instance = Instance::new("api", "api-1", "10.0.0.1:8080");
        instance.schema_version = 99;
        assert!(Instance::from_json(&instance.to_json().unwrap()).is_err());
    }

    #[test]
    fn bad_names_and_addresses_are_rejected() {
        assert!(Instance::new("a/b", "1", "h:1").validate().is_err());
        assert!(Instance::new("api", "..", "h:1").validate().is_err());
        assert!(Instance::new("api", "1", "no-port").validate().is_err());
        assert_eq!(instance_key("api", "1").unwrap().as_str(), "services/api/1");
    }
}
