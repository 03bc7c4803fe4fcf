//! Model-based test: random sequences of put / delete / delete_tree / compare-and-swap /
//! list / TTL / lease operations run on the memory store and on a plain `BTreeMap`
//! reference model, and every result (values, revisions, create revisions, leases and
//! error kinds) must agree. Time runs on tokio's paused clock and moves only when the
//! sequence says so, so lease expiry is exact and reproducible.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kvstore_core::{Error, KvPair, LeaseId, Prefix, PutOptions, Store};
use kvstore_memory::MemoryStore;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

const KEYS: &[&str] = &["a", "a/b", "a/c", "a/b/d", "b", "ab/x"];
const PREFIXES: &[&str] = &["", "a", "a/b", "b", "ab"];

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: &'static str,
        value: u8,
        ttl_secs: Option<u64>,
    },
    PutOnLease {
        key: &'static str,
        value: u8,
        lease: i64,
    },
    Get {
        key: &'static str,
    },
    Delete {
        key: &'static str,
    },
    DeleteTree {
        prefix: &'static str,
    },
    List {
        prefix: &'static str,
    },
    Create {
        key: &'static str,
        value: u8,
    },
    CompareAndPut {
        key: &'static str,
        value: u8,
        revision: u64,
    },
    CompareAndDelete {
        key: &'static str,
        revision: u64,
    },
    GrantLease {
        ttl_secs: u64,
    },
    KeepAlive {
        lease: i64,
    },
    Revoke {
        lease: i64,
    },
    Advance {
        millis: u64,
    },
}

/// What an operation returned, comparable between model and store.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Pair(KvPair),
    Pairs(Vec<KvPair>),
    Lease(LeaseId),
    Ttl(Duration),
    Done,
    NotFound,
    Exists,
    Modified,
    LeaseLost,
}

#[derive(Clone, Debug)]
struct ModelLease {
    ttl_ms: u64,
    deadline_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct Model {
    now_ms: u64,
    revision: u64,
    next_lease: i64,
    keys: BTreeMap<String, KvPair>,
    leases: BTreeMap<i64, ModelLease>,
}

impl Model {
    fn step(&mut self, op: &Op) -> Outcome {
        if let Op::Advance { millis } = op {
            self.now_ms += millis;
        }
        self.expire();
        match *op {
            Op::Advance { .. } => Outcome::Done,
            Op::Put {
                key,
                value,
                ttl_secs,
            } => {
                let lease = ttl_secs.map(|ttl| self.grant(ttl * 1000));
                self.write(key, value, lease)
            }
            Op::PutOnLease { key, value, lease } => {
                if self.leases.contains_key(&lease) {
                    self.write(key, value, Some(lease))
                } else {
                    Outcome::LeaseLost
                }
            }
            Op::Get { key } => self
                .keys
                .get(key)
                .cloned()
                .map_or(Outcome::NotFound, Outcome::Pair),
            Op::Delete { key } => {
                self.delete_all(vec![key.to_owned()]);
                Outcome::Done
            }
            Op::DeleteTree { prefix } => {
                let prefix = Prefix::new(prefix).unwrap();
                let doomed = self
                    .keys
                    .keys()
                    .filter(|k| prefix.contains(k))
                    .cloned()
                    .collect();
                self.delete_all(doomed);
                Outcome::Done
            }
            Op::List { prefix } => {
                let prefix = Prefix::new(prefix).unwrap();
                Outcome::Pairs(
                    self.keys
                        .values()
                        .filter(|p| prefix.contains(&p.key))
                        .cloned()
                        .collect(),
                )
            }
            Op::Create { key, value } => {
                if self.keys.contains_key(key) {
                    Outcome::Exists
                } else {
                    self.write(key, value, None)
                }
            }
            Op::CompareAndPut {
                key,
                value,
                revision,
            } => match self.keys.get(key) {
                None => Outcome::NotFound,
                Some(p) if p.revision != revision => Outcome::Modified,
                Some(_) => self.write(key, value, None),
            },
            Op::CompareAndDelete { key, revision } => match self.keys.get(key) {
                None => Outcome::NotFound,
                Some(p) if p.revision != revision => Outcome::Modified,
                Some(_) => {
                    self.delete_all(vec![key.to_owned()]);
                    Outcome::Done
                }
            },
            Op::GrantLease { ttl_secs } => Outcome::Lease(LeaseId(self.grant(ttl_secs * 1000))),
            Op::KeepAlive { lease } => match self.leases.get_mut(&lease) {
                Some(l) => {
                    l.deadline_ms = self.now_ms + l.ttl_ms;
                    Outcome::Ttl(Duration::from_millis(l.ttl_ms))
                }
                None => Outcome::LeaseLost,
            },
            Op::Revoke { lease } => {
                self.revoke(lease);
                Outcome::Done
            }
        }
    }

    fn grant(&mut self, ttl_ms: u64) -> i64 {
        self.next_lease += 1;
        let deadline_ms = self.now_ms + ttl_ms;
        self.leases.insert(
            self.next_lease,
            ModelLease {
                ttl_ms,
                deadline_ms,
            },
        );
        self.next_lease
    }

    fn write(&mut self, key: &str, value: u8, lease: Option<i64>) -> Outcome {
        self.revision += 1;
        let create_revision = self
            .keys
            .get(key)
            .map_or(self.revision, |p| p.create_revision);
        let pair = KvPair {
            key: key.to_owned(),
            value: Bytes::from(vec![value]),
            revision: self.revision,
            create_revision,
            lease: lease.map(LeaseId),
        };
        self.keys.insert(key.to_owned(), pair.clone());
        Outcome::Pair(pair)
    }

    fn delete_all(&mut self, keys: Vec<String>) {
        let present: Vec<String> = keys
            .into_iter()
            .filter(|k| self.keys.contains_key(k))
            .collect();
        if !present.is_empty() {
            self.revision += 1;
            for key in present {
                self.keys.remove(&key);
            }
        }
    }

    fn revoke(&mut self, lease: i64) {
        if self.leases.remove(&lease).is_some() {
            let attached = self
                .keys
                .values()
                .filter(|p| p.lease == Some(LeaseId(lease)))
                .map(|p| p.key.clone())
                .collect();
            self.delete_all(attached);
        }
    }

    /// Leases past their deadline expire one by one, earliest deadline first (ties by
    /// lease ID), each at its own revision.
    fn expire(&mut self) {
        let mut due: Vec<(u64, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline_ms <= self.now_ms)
            .map(|(id, l)| (l.deadline_ms, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.revoke(id);
        }
    }
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let key = proptest::sample::select(KEYS);
        let prefix = proptest::sample::select(PREFIXES);
        let lease = 1..=state.next_lease.max(1);
        // Revisions near the current one hit both the matching and the stale case.
        let revision = 1..=state.revision.max(1);
        prop_oneof![
            4 => (key.clone(), any::<u8>(), proptest::option::weighted(0.3, 1..4u64))
                .prop_map(|(key, value, ttl_secs)| Op::Put { key, value, ttl_secs }),
            1 => (key.clone(), any::<u8>(), lease.clone())
                .prop_map(|(key, value, lease)| Op::PutOnLease { key, value, lease }),
            2 => key.clone().prop_map(|key| Op::Get { key }),
            2 => key.clone().prop_map(|key| Op::Delete { key }),
            1 => prefix.clone().prop_map(|prefix| Op::DeleteTree { prefix }),
            2 => prefix.prop_map(|prefix| Op::List { prefix }),
            2 => (key.clone(), any::<u8>()).prop_map(|(key, value)| Op::Create { key, value }),
            3 => (key.clone(), any::<u8>(), revision.clone())
                .prop_map(|(key, value, revision)| Op::CompareAndPut { key, value, revision }),
            2 => (key, revision).prop_map(|(key, revision)| Op::CompareAndDelete { key, revision }),
            1 => (1..4u64).prop_map(|ttl_secs| Op::GrantLease { ttl_secs }),
            1 => lease.clone().prop_map(|lease| Op::KeepAlive { lease }),
            1 => lease.prop_map(|lease| Op::Revoke { lease }),
            2 => (1..2500u64).prop_map(|millis| Op::Advance { millis }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.step(op);
        state
    }
}

/// The memory store under test, with its own copy of the model to predict outcomes.
struct System {
    runtime: tokio::runtime::Runtime,
    store: MemoryStore,
    model: Model,
}

impl System {
    async fn run(store: &MemoryStore, op: &Op) -> kvstore_core::Result<Outcome> {
        let bytes = |v: u8| Bytes::from(vec![v]);
        Ok(match *op {
            Op::Advance { millis } => {
                tokio::time::advance(Duration::from_millis(millis)).await;
                Outcome::Done
            }
            Op::Put {
                key,
                value,
                ttl_secs,
            } => {
                let options = match ttl_secs {
                    Some(secs) => PutOptions::with_ttl(Duration::from_secs(secs)),
                    None => PutOptions::default(),
                };
                Outcome::Pair(store.put(key, bytes(value), options).await?)
            }
            Op::PutOnLease { key, value, lease } => Outcome::Pair(
                store
                    .put(key, bytes(value), PutOptions::with_lease(LeaseId(lease)))
                    .await?,
            ),
            Op::Get { key } => Outcome::Pair(store.get(key).await?),
            Op::Delete { key } => {
                store.delete(key).await?;
                Outcome::Done
            }
            Op::DeleteTree { prefix } => {
                store.delete_tree(prefix).await?;
                Outcome::Done
            }
            Op::List { prefix } => Outcome::Pairs(store.list(prefix).await?),
            Op::Create { key, value } => Outcome::Pair(
                store
                    .atomic_put(key, bytes(value), None, PutOptions::default())
                    .await?,
            ),
            Op::CompareAndPut {
                key,
                value,
                revision,
            } => {
                let previous = expected_pair(key, revision);
                Outcome::Pair(
                    store
                        .atomic_put(key, bytes(value), Some(&previous), PutOptions::default())
                        .await?,
                )
            }
            Op::CompareAndDelete { key, revision } => {
                store
                    .atomic_delete(key, &expected_pair(key, revision))
                    .await?;
                Outcome::Done
            }
            // The raw grant: a kept-alive `Lease` handle would move deadlines by itself.
            Op::GrantLease { ttl_secs } => Outcome::Lease(
                kvstore_core::backend::Backend::grant_lease(store, Duration::from_secs(ttl_secs))
                    .await?
                    .id,
            ),
            Op::KeepAlive { lease } => Outcome::Ttl(store.keep_alive_lease(LeaseId(lease)).await?),
            Op::Revoke { lease } => {
                store.revoke_lease(LeaseId(lease)).await?;
                Outcome::Done
            }
        })
    }
}

fn expected_pair(key: &str, revision: u64) -> KvPair {
    KvPair {
        key: key.to_owned(),
        value: Bytes::new(),
        revision,
        create_revision: 0,
        lease: None,
    }
}

fn outcome_of(result: kvstore_core::Result<Outcome>) -> Outcome {
    match result {
        Ok(outcome) => outcome,
        Err(Error::KeyNotFound { .. }) => Outcome::NotFound,
        Err(Error::KeyExists { .. }) => Outcome::Exists,
        Err(Error::KeyModified { .. }) => Outcome::Modified,
        Err(Error::LeaseLost { .. }) => Outcome::LeaseLost,
        Err(other) => panic!("unexpected error from the memory store: {other}"),
    }
}

impl StateMachineTest for System {
    type SystemUnderTest = System;
    type Reference = ModelMachine;

    fn init_test(_: &Model) -> System {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        let store = runtime.block_on(async { MemoryStore::new() });
        System {
            runtime,
            store,
            model: Model::default(),
        }
    }

    fn apply(mut system: System, reference: &Model, op: Op) -> System {
        let expected = system.model.step(&op);
        let actual = outcome_of(system.runtime.block_on(System::run(&system.store, &op)));
        assert_eq!(actual, expected, "after {op:?}");
        assert_eq!(system.model.revision, reference.revision);
        system
    }

    fn check_invariants(system: &System, reference: &Model) {
        let listed = system
            .runtime
            .block_on(system.store.list(""))
            .expect("list of the whole store");
        let expected: Vec<KvPair> = reference.keys.values().cloned().collect();
        assert_eq!(listed, expected, "the whole store matches the model");
    }
}

prop_state_machine! {
    #![proptest_config(Config { cases: 256, max_shrink_iters: 4096, ..Config::default() })]
    #[test]
    fn memory_store_matches_the_btreemap_model(sequential 1..60 => System);
}
