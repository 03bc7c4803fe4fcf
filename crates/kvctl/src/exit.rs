//! Exit codes, and the one-line error every failure prints.

use std::process::ExitCode;

use kvstore::Error;

/// The store, and the exit codes, as `kvctl --help` documents them.
pub(crate) const HELP: &str = "\
Store:
  --store URL or KVSTORE_URL; the default is etcd://127.0.0.1:2379, as etcdctl's.
  memory:// is refused: each kvctl command would get a fresh empty store and its writes
  would be lost when it exits.

Exit codes:
  0  success
  1  any other failure
  2  usage error: bad flags, malformed store URL, invalid key or argument
  3  not found: the key, lease or service does not exist
  4  conflict: compare-and-swap failed (revision changed, key exists)
  5  unavailable: the store cannot be reached or did not answer in time
  6  authentication refused";

/// Success.
pub(crate) const OK: u8 = 0;
/// Any other failure.
pub(crate) const FAILURE: u8 = 1;
/// Bad flags, malformed URL, invalid key or argument.
pub(crate) const USAGE: u8 = 2;
/// The key, lease or service does not exist.
pub(crate) const NOT_FOUND: u8 = 3;
/// Compare-and-swap failed.
pub(crate) const CONFLICT: u8 = 4;
/// The store cannot be reached or timed out.
pub(crate) const UNAVAILABLE: u8 = 5;
/// Authentication refused.
pub(crate) const AUTH: u8 = 6;

/// A failed command: what it was doing and why.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What was being done, e.g. `get config/mode`.
    pub context: String,
    /// The cause.
    pub error: Error,
}

impl Failure {
    /// The exit code for this failure.
    pub(crate) fn code(&self) -> u8 {
        match &self.error {
            Error::KeyNotFound { .. } | Error::LeaseLost { .. } => NOT_FOUND,
            Error::KeyExists { .. } | Error::KeyModified { .. } => CONFLICT,
            Error::InvalidKey { .. }
            | Error::InvalidArgument { .. }
            | Error::ValueTooLarge { .. }
            | Error::Config { .. }
            | Error::Unsupported { .. } => USAGE,
            Error::Unavailable { .. } | Error::Timeout { .. } => UNAVAILABLE,
            Error::Auth { .. } => AUTH,
            _ => FAILURE,
        }
    }

    /// Print the one-line message and return the exit code.
    pub(crate) fn report(&self) -> ExitCode {
        eprintln!("kvctl: {}: {}", self.context, self.error);
        ExitCode::from(self.code())
    }
}

/// Attach what was being done to a store error.
pub(crate) trait Context<T> {
    /// Name the command and key the error happened in.
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Context<T> for kvstore::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|error| Failure {
            context: context(),
            error,
        })
    }
}

/// A usage problem found by kvctl itself (not by clap).
pub(crate) fn usage(context: &str, message: impl Into<String>) -> Failure {
    Failure {
        context: context.to_owned(),
        error: Error::InvalidArgument {
            operation: "kvctl",
            message: message.into(),
        },
    }
}
