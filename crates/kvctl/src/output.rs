//! Rendering pairs and events as text lines or JSON lines. Binary values are shown
//! safely: escaped in text mode, base64 in JSON mode.

use kvstore::{KvPair, WatchEvent};
use serde_json::Value;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Human-readable lines; non-printable bytes escaped (`\x00`, `\n`).
    Text,
    /// One JSON object per line; values base64-encoded in `value_base64`.
    Json,
}

/// A value as text: valid UTF-8 without control characters is printed as is, anything
/// else byte by byte with `\n`, `\t`, `\\` and `\xNN` escapes.
pub(crate) fn escape(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => value
            .iter()
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect(),
    }
}

/// A pair as JSON (kvstore's `serde` form: the value base64 in `value_base64`).
pub(crate) fn pair_json(pair: &KvPair) -> Value {
    serde_json::to_value(pair).unwrap_or(Value::Null)
}

/// An event as one line.
pub(crate) fn event_line(event: &WatchEvent, format: Format) -> String {
    match (format, event) {
        (Format::Text, WatchEvent::Put(pair)) => {
            format!(
                "PUT {} {} (revision {})",
                pair.key,
                escape(&pair.value),
                pair.revision
            )
        }
        (Format::Text, WatchEvent::Delete { key, revision }) => {
            format!("DELETE {key} (revision {revision})")
        }
        (Format::Text, WatchEvent::Snapshot(s)) => {
            format!("SNAPSHOT {} keys (revision {})", s.pairs.len(), s.revision)
        }
        (Format::Text, WatchEvent::Resync(s)) => {
            format!("RESYNC {} keys (revision {})", s.pairs.len(), s.revision)
        }
        (Format::Json, event) => serde_json::to_string(event).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_are_escaped_in_text() {
        assert_eq!(escape(b"plain"), "plain");
        assert_eq!(escape(b"a\nb"), "a\\nb");
        assert_eq!(escape(&[0, 255]), "\\x00\\xff");
    }
}
