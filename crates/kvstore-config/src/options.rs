//! [`ConfigOptions`]: how a key's value becomes a `T`.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

/// The format of the key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON (`serde_json`).
    Json,
    /// TOML (`toml`).
    Toml,
}

impl Format {
    /// Parse `bytes` as this format into a `T`.
    ///
    /// # Errors
    /// What the parser says is wrong (with its position), when the bytes are not UTF-8
    /// (TOML), or when they do not fit `T`. The message never quotes the value's text
    /// (which may hold a secret): the parser's quoted strings and variants are replaced
    /// by `<redacted>`, and TOML's excerpt of the offending line is left out.
    pub fn parse<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Format::Json => serde_json::from_slice(bytes).map_err(|e| {
                // serde_json's message ends with "at line L column C".
                format!("invalid JSON: {}", redacted(&e.to_string()))
            }),
            Format::Toml => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    format!("invalid TOML: not UTF-8 after byte {}", e.valid_up_to())
                })?;
                toml::from_str(text).map_err(|e| {
                    let at = e.span().map_or_else(String::new, |span| {
                        let before = &text[..span.start.min(text.len())];
                        let line = before.matches('\n').count() + 1;
                        let column = before.rsplit('\n').next().map_or(0, str::len) + 1;
                        format!(" at line {line} column {column}")
                    });
                    format!("invalid TOML: {}{at}", redacted(e.message().trim()))
                })
            }
        }
    }
}

/// `message` with what serde quotes of the input replaced: `"..."` (strings, as in
/// `invalid type: string "...", expected u16`) and the backticked word after
/// `variant` (`unknown variant `...``). Field names, which come from the schema, stay.
fn redacted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[start] as char;
        let (head, tail) = rest.split_at(start);
        out.push_str(head);
        let Some(end) = tail[1..].find(quote) else {
            out.push_str(tail);
            return out;
        };
        let quoted = &tail[..end + 2];
        let is_value = quote == '"' || head.trim_end().ends_with("variant");
        out.push_str(if is_value {
            if quote == '"' {
                "\"<redacted>\""
            } else {
                "`<redacted>`"
            }
        } else {
            quoted
        });
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// What a missing key (never written, or deleted) means.
pub enum Missing<T> {
    /// An error at start ([`crate::ConfigError::Missing`]); after start, a deleted key
    /// keeps the last good value and is reported as [`crate::Status::Missing`].
    Error,
    /// This value (usually `T::default()`), at start and when the key is deleted.
    Default(Arc<dyn Fn() -> T + Send + Sync>),
}

impl<T> Clone for Missing<T> {
    fn clone(&self) -> Self {
        match self {
            Missing::Error => Missing::Error,
            Missing::Default(make) => Missing::Default(make.clone()),
        }
    }
}

impl<T> fmt::Debug for Missing<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Missing::Error => "Error",
            Missing::Default(_) => "Default",
        })
    }
}

/// A user check run on every parsed value; `Err(reason)` refuses it.
pub(crate) type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// How a key's value becomes a live `T`: its format, what a missing key means, and a
/// validation hook. Start from [`ConfigOptions::json`] or [`ConfigOptions::toml`].
pub struct ConfigOptions<T> {
    pub(crate) format: Format,
    pub(crate) missing: Missing<T>,
    pub(crate) validator: Option<Validator<T>>,
}

impl<T> fmt::Debug for ConfigOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigOptions")
            .field("format", &self.format)
            .field("missing", &self.missing)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl<T> ConfigOptions<T> {
    /// Values are JSON; a missing key is an error; no validation.
    pub fn json() -> Self {
        ConfigOptions::new(Format::Json)
    }

    /// Values are TOML; a missing key is an error; no validation.
    pub fn toml() -> Self {
        ConfigOptions::new(Format::Toml)
    }

    /// Values in `format`; a missing key is an error; no validation.
    pub fn new(format: Format) -> Self {
        ConfigOptions {
            format,
            missing: Missing::Error,
            validator: None,
        }
    }

    /// A missing key means `T::default()`.
    #[must_use]
    pub fn default_when_missing(mut self) -> Self
    where
        T: Default + 'static,
    {
        self.missing = Missing::Default(Arc::new(T::default));
        self
    }

    /// A missing key means `missing` (the default: [`Missing::Error`]).
    #[must_use]
    pub fn when_missing(mut self, missing: Missing<T>) -> Self {
        self.missing = missing;
        self
    }

    /// Check every parsed value with `check`; a value it refuses (`Err(reason)`) never
    /// replaces the last good one.
    #[must_use]
    pub fn validate(
        mut self,
        check: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(check));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Settings {
        port: u16,
        mode: Mode,
    }

    #[derive(Debug, serde::Deserialize)]
    enum Mode {
        Blue,
    }

    #[test]
    fn a_refused_value_is_never_quoted_in_the_reason() {
        let cases: [(Format, &[u8]); 4] = [
            (
                Format::Json,
                br#"{"port": "hunter2-secret", "mode": "Blue"}"#,
            ),
            (Format::Json, br#"{"port": 1, "mode": "hunter2-secret"}"#),
            (
                Format::Toml,
                b"port = \"hunter2-secret\"\nmode = \"Blue\"\n",
            ),
            (Format::Toml, b"port = 1\nmode = \"hunter2-secret\"\n"),
        ];
        for (format, bytes) in cases {
            let reason = format.parse::<Settings>(bytes).unwrap_err();
            assert!(!reason.contains("hunter2"), "{format:?}: {reason}");
            assert!(reason.contains("line"), "{format:?} says where: {reason}");
        }
        let missing = Format::Json
            .parse::<Settings>(br#"{"mode": "Blue"}"#)
            .unwrap_err();
        assert!(missing.contains("`port`"), "field names stay: {missing}");
    }
}
