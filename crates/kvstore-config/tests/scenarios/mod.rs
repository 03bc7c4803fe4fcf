//! Live configuration behaviours, written once and run on every backend
//! (docs/CONTRACT.md §12).

use std::sync::Arc;

use bytes::Bytes;
use kvstore_config::{ConfigError, ConfigOptions, LiveConfig, Status};
use kvstore_core::{PutOptions, Store};
use kvstore_testsuite::{Harness, WAIT, fresh_store};

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub(crate) struct Limits {
    pub requests_per_second: u32,
    #[serde(default)]
    pub feature_x: bool,
}

fn positive(limits: &Limits) -> Result<(), String> {
    if limits.requests_per_second == 0 {
        Err("requests_per_second must be positive".into())
    } else {
        Ok(())
    }
}

async fn put(store: &Arc<dyn Store>, key: &str, text: &str) -> u64 {
    store
        .put(key, Bytes::from(text.to_owned()), PutOptions::default())
        .await
        .unwrap()
        .revision
}

/// Wait (bounded) until the configuration's status satisfies `done`.
async fn wait_for_status(config: &LiveConfig<Limits>, done: impl Fn(&Status) -> bool) -> Status {
    tokio::time::timeout(WAIT, async {
        loop {
            let status = config.status();
            if done(&status) {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("status stayed {:?}", config.status()))
}

async fn changed(config: &mut LiveConfig<Limits>) -> Arc<Limits> {
    tokio::time::timeout(WAIT, config.changed())
        .await
        .expect("a change within WAIT")
        .unwrap()
}

/// A JSON value becomes a typed value; each change is awaited and applied.
pub(crate) async fn json_value_is_applied_and_changes_are_awaited(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let first = put(&store, "cfg/limits", r#"{"requests_per_second": 10}"#).await;
    let mut config =
        LiveConfig::<Limits>::watch(store.clone(), "cfg/limits", ConfigOptions::json())
            .await
            .unwrap();
    assert_eq!(config.get().requests_per_second, 10);
    assert_eq!(config.status(), Status::Applied { revision: first });
    let second = put(
        &store,
        "cfg/limits",
        r#"{"requests_per_second": 20, "feature_x": true}"#,
    )
    .await;
    let now = changed(&mut config).await;
    assert_eq!(
        *now,
        Limits {
            requests_per_second: 20,
            feature_x: true
        }
    );
    assert_eq!(config.status(), Status::Applied { revision: second });
}

/// TOML values parse the same way.
pub(crate) async fn toml_value_is_applied(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    put(
        &store,
        "cfg/limits",
        "requests_per_second = 7\nfeature_x = true\n",
    )
    .await;
    let config = LiveConfig::<Limits>::watch(store.clone(), "cfg/limits", ConfigOptions::toml())
        .await
        .unwrap();
    assert_eq!(
        *config.get(),
        Limits {
            requests_per_second: 7,
            feature_x: true
        }
    );
}

/// A value that does not parse, or that the validation hook refuses, never replaces the
/// last good one; the status says why; a good value afterwards is applied.
pub(crate) async fn invalid_update_keeps_the_last_good_value_and_says_why(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    put(&store, "cfg/limits", r#"{"requests_per_second": 10}"#).await;
    let options = ConfigOptions::json().validate(positive);
    let mut config = LiveConfig::watch(store.clone(), "cfg/limits", options)
        .await
        .unwrap();

    let garbage = put(&store, "cfg/limits", "{not json").await;
    let status = wait_for_status(&config, |s| matches!(s, Status::Rejected { .. })).await;
    match status {
        Status::Rejected { revision, reason } => {
            assert_eq!(revision, garbage);
            assert!(reason.contains("JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.get().requests_per_second, 10);

    let refused = put(&store, "cfg/limits", r#"{"requests_per_second": 0}"#).await;
    let status = wait_for_status(
        &config,
        |s| matches!(s, Status::Rejected { revision, .. } if *revision == refused),
    )
    .await;
    assert!(matches!(status, Status::Rejected { reason, .. } if reason.contains("positive")));
    assert_eq!(config.get().requests_per_second, 10);

    put(&store, "cfg/limits", r#"{"requests_per_second": 30}"#).await;
    assert_eq!(changed(&mut config).await.requests_per_second, 30);
}

/// A missing key is `T::default()` or an error, as chosen; a deleted key follows the
/// same choice.
pub(crate) async fn missing_key_is_the_default_or_an_error_by_choice(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let refused =
        LiveConfig::<Limits>::watch(store.clone(), "cfg/limits", ConfigOptions::json()).await;
    assert!(
        matches!(refused, Err(ConfigError::Missing { .. })),
        "{refused:?}"
    );

    let mut defaulted = LiveConfig::<Limits>::watch(
        store.clone(),
        "cfg/limits",
        ConfigOptions::json().default_when_missing(),
    )
    .await
    .unwrap();
    assert_eq!(*defaulted.get(), Limits::default());
    assert_eq!(defaulted.status(), Status::Default);

    put(&store, "cfg/limits", r#"{"requests_per_second": 5}"#).await;
    assert_eq!(changed(&mut defaulted).await.requests_per_second, 5);
    let strict = LiveConfig::<Limits>::watch(store.clone(), "cfg/limits", ConfigOptions::json())
        .await
        .unwrap();

    store.delete("cfg/limits").await.unwrap();
    assert_eq!(*changed(&mut defaulted).await, Limits::default());
    wait_for_status(&strict, |s| *s == Status::Missing).await;
    assert_eq!(
        strict.get().requests_per_second,
        5,
        "the last good value stays"
    );
}

/// A value that is already invalid when the configuration starts is an error: there is
/// no last good value to keep.
pub(crate) async fn invalid_value_at_start_is_an_error(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    put(&store, "cfg/limits", r#"{"requests_per_second": 0}"#).await;
    let options = ConfigOptions::json().validate(positive);
    let refused = LiveConfig::watch(store.clone(), "cfg/limits", options).await;
    assert!(
        matches!(refused, Err(ConfigError::Invalid { .. })),
        "{refused:?}"
    );
}

/// Runs every scenario as a test of the calling crate.
#[macro_export]
macro_rules! config_tests {
    ($(#[$attr:meta])* harness = $harness:expr $(,)?) => {
        config_tests!(@each [$(#[$attr])*] $harness;
            json_value_is_applied_and_changes_are_awaited,
            toml_value_is_applied,
            invalid_update_keeps_the_last_good_value_and_says_why,
            missing_key_is_the_default_or_an_error_by_choice,
            invalid_value_at_start_is_an_error,
        );
    };
    (@each $attrs:tt $harness:expr; $($name:ident),* $(,)?) => {
        $( config_tests!(@one $attrs $name, $harness); )*
    };
    (@one [$($attr:tt)*] $name:ident, $harness:expr) => {
        $($attr)*
        async fn $name() {
            let harness = $harness;
            scenarios::$name(&harness).await;
        }
    };
}
