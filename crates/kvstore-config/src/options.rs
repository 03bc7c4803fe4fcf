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
    /// (TOML), or when they do not fit `T`.
    pub fn parse<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Format::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
            Format::Toml => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| format!("invalid TOML: not UTF-8: {e}"))?;
                toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))
            }
        }
    }
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
