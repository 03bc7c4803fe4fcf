//! `watch KEY` and `watch --prefix PREFIX`: changes as lines until interrupted.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kvstore::{KvPair, Store, WatchEvent, WatchFrom};
use serde_json::json;

use crate::exit::{Context, Failure, OK};
use crate::interrupted;
use crate::output::{Format, escape, event_line, pair_json};

pub(crate) async fn watch(
    store: &Arc<dyn Store>,
    key: &str,
    prefix: bool,
    format: Format,
) -> Result<u8, Failure> {
    let context = || format!("watch {key}");
    if prefix {
        let events = store
            .watch_prefix_events(key, WatchFrom::Snapshot)
            .await
            .context(context)?;
        print_until_interrupted(events, key, |event: WatchEvent| event_line(&event, format)).await
    } else {
        let states = store.watch(key).await.context(context)?;
        let mut first = true;
        print_until_interrupted(states, key, move |state: Option<KvPair>| {
            let line = state_line(key, state, first, format);
            first = false;
            line
        })
        .await
    }
}

/// One line for a key's state: its current value first, then each change.
fn state_line(key: &str, state: Option<KvPair>, current: bool, format: Format) -> String {
    match (format, state) {
        (Format::Text, Some(pair)) => {
            let kind = if current { "CURRENT" } else { "PUT" };
            format!(
                "{kind} {} {} (revision {})",
                pair.key,
                escape(&pair.value),
                pair.revision
            )
        }
        (Format::Text, None) if current => format!("CURRENT {key} (absent)"),
        (Format::Text, None) => format!("DELETE {key}"),
        (Format::Json, Some(pair)) => {
            json!({"type": if current { "current" } else { "put" }, "pair": pair_json(&pair)})
                .to_string()
        }
        (Format::Json, None) => {
            json!({"type": if current { "current" } else { "delete" }, "key": key}).to_string()
        }
    }
}

async fn print_until_interrupted<T>(
    mut items: impl Stream<Item = kvstore::Result<T>> + Unpin,
    key: &str,
    mut line: impl FnMut(T) -> String,
) -> Result<u8, Failure> {
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            () = &mut stop => return Ok(OK),
            item = items.next() => item,
        };
        let Some(item) = item else { return Ok(OK) };
        println!("{}", line(item.context(|| format!("watch {key}"))?));
    }
}
