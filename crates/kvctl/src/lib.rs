//! # kvctl: one command-line tool for every kvstore backend
//!
//! The `kvctl` binary is [`main`]; this library lets a program build its own `kvctl`
//! with more backends: register their schemes with `kvstore::register_scheme`, then run
//! [`main`] (or [`run_args`]), and `--store myscheme://...` works like the built-in ones.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::process::ExitCode;
//!
//! // memory:// is refused (each command would get a fresh, empty store): usage error 2.
//! let code = kvctl::run_args(["kvctl", "--store", "memory://", "get", "k"]).await;
//! assert_eq!(code, ExitCode::from(2));
//! # }
//! ```

mod cli;
mod exit;
mod keys;
mod lease;
mod lock;
mod output;
mod services;
mod txn;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kvstore::redact_url;
use kvstore::{OpenOptions, Store};

use crate::cli::{Cli, Command, Global, LeaseCommand, ServiceCommand};
use crate::exit::{Context, Failure, usage};

/// Run `kvctl` on the process's command line and return its exit code: 0 on success, 2
/// for a usage error, 3 not found, 4 conflict, 5 unavailable, 6 authentication, 1 any
/// other failure (as `kvctl --help` lists them).
pub async fn main() -> ExitCode {
    run_cli(Cli::parse()).await
}

/// Run `kvctl` on `args` (the first being the program name), as [`main`] does; `--help`
/// and clap's usage errors are printed and give their exit codes.
pub async fn run_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => run_cli(cli).await,
        Err(error) => {
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        }
    }
}

async fn run_cli(cli: Cli) -> ExitCode {
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}

/// The most seconds any flag takes: [`kvstore::MAX_TTL`] (etcd's longest lease TTL, about
/// 285 years), the longest TTL kvstore accepts. Anything longer is a mistake, and
/// refusing it here keeps absurd numbers away from timer arithmetic.
const MAX_SECONDS: f64 = kvstore::MAX_TTL.as_secs() as f64;

/// Seconds from the command line as a duration.
///
/// # Errors
/// A usage failure naming `flag` for NaN, an infinite, negative or zero number, or one
/// over [`MAX_SECONDS`].
pub(crate) fn seconds(flag: &str, value: f64) -> Result<Duration, Failure> {
    let refuse = || {
        usage(
            flag,
            format!(
                "must be a number of seconds greater than 0 and at most {MAX_SECONDS}, got {value}"
            ),
        )
    };
    if !(value > 0.0 && value <= MAX_SECONDS) {
        return Err(refuse());
    }
    let duration = Duration::try_from_secs_f64(value).map_err(|_| refuse())?;
    if duration.is_zero() {
        // Positive but below a nanosecond.
        return Err(refuse());
    }
    Ok(duration)
}

/// What `memory://` is refused with.
pub(crate) const MEMORY_REFUSED: &str = "memory:// keeps keys only inside one process: each \
    kvctl command would get a fresh empty store and its writes would be lost when it exits; \
    use etcd://, redis:// or zookeeper://";

/// Check every number and ID on the command line before connecting, so bad input is a
/// usage error (exit 2) even when the store cannot be reached.
fn check_arguments(cli: &Cli) -> Result<(), Failure> {
    seconds("--timeout", cli.global.timeout)?;
    match (&cli.global.user, &cli.global.password) {
        (Some(_), None) => {
            return Err(usage(
                "--user",
                "needs a password: --password or KVSTORE_PASSWORD",
            ));
        }
        (None, Some(_)) => {
            return Err(usage(
                "--password",
                "needs --user (the password comes from --password or KVSTORE_PASSWORD)",
            ));
        }
        _ => {}
    }
    if cli.global.store.split_once("://").map(|(scheme, _)| scheme) == Some("memory") {
        return Err(usage("--store", MEMORY_REFUSED));
    }
    match &cli.command {
        Command::Put { ttl, lease, .. } => {
            if let Some(ttl) = ttl {
                seconds("--ttl", *ttl)?;
            }
            if let Some(lease) = lease {
                keys::lease_id(lease)?;
            }
        }
        Command::Lock { ttl, .. }
        | Command::Elect { ttl, .. }
        | Command::Svc(ServiceCommand::Register { ttl, .. }) => {
            seconds("--ttl", *ttl)?;
        }
        Command::Lease(LeaseCommand::Grant { ttl }) => {
            seconds("TTL", *ttl)?;
        }
        Command::Lease(LeaseCommand::Revoke { id } | LeaseCommand::KeepAlive { id }) => {
            keys::lease_id(id)?;
        }
        Command::Get { .. }
        | Command::Del { .. }
        | Command::Ls { .. }
        | Command::Rm { .. }
        | Command::Cas { .. }
        | Command::Watch { .. }
        | Command::Txn { .. }
        | Command::Svc(_) => {}
    }
    Ok(())
}

async fn open(global: &Global) -> Result<Arc<dyn Store>, Failure> {
    let timeout = seconds("--timeout", global.timeout)?;
    let ca_pem = match &global.cacert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| usage("--cacert", format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let mut options = OpenOptions::default();
    options.namespace = global.namespace.clone();
    options.connect_timeout = Some(timeout);
    options.request_timeout = Some(timeout);
    options.credentials = global.user.clone().zip(global.password.clone());
    options.ca_pem = ca_pem;
    kvstore::open_with(&global.store, &options)
        .await
        .context(|| format!("open {}", redact_url(&global.store)))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    check_arguments(&cli)?;
    let store = open(&cli.global).await?;
    let format = cli.global.output;
    let code = match cli.command {
        Command::Get { key } => keys::get(&store, &key, format).await?,
        Command::Put {
            key,
            value,
            file,
            ttl,
            lease,
        } => keys::put(&store, &key, value, file, ttl, lease, format).await?,
        Command::Del { key } => keys::delete(&store, &key).await?,
        Command::Ls { prefix, values } => keys::list(&store, &prefix, values, format).await?,
        Command::Rm { prefix, .. } => keys::delete_tree(&store, &prefix).await?,
        Command::Cas {
            key,
            value,
            revision,
            create,
        } => keys::cas(&store, &key, value, revision, create, format).await?,
        Command::Watch { key, prefix } => watch::watch(&store, &key, prefix, format).await?,
        Command::Lock { key, ttl, command } => {
            lock::run_locked(&store, &key, ttl, &command).await?
        }
        Command::Elect {
            name,
            value,
            ttl,
            command,
        } => lock::run_elected(&store, &name, &value, ttl, &command).await?,
        Command::Txn { file } => {
            let text = match file {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| {
                    usage("txn --file", format!("cannot read {}: {e}", path.display()))
                })?,
                None => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| usage("txn", format!("cannot read standard input: {e}")))?,
            };
            txn::run(&store, &text, format).await?
        }
        Command::Lease(command) => lease::run(&store, command, format).await?,
        Command::Svc(command) => services::run(&store, command, format).await?,
    };
    Ok(code)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_refuses_absurd_numbers_naming_the_flag() {
        for value in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            -0.0,
            0.0,
            1e-12,
            1e30,
            f64::MAX,
            MAX_SECONDS * 1.5,
        ] {
            let failure = seconds("--ttl", value).expect_err(&value.to_string());
            assert_eq!(failure.context, "--ttl");
            assert_eq!(failure.code(), exit::USAGE, "{value}");
        }
    }

    #[test]
    fn seconds_takes_sensible_numbers() {
        assert_eq!(seconds("--ttl", 1.5).unwrap(), Duration::from_millis(1500));
        assert_eq!(seconds("--ttl", 1e-9).unwrap(), Duration::from_nanos(1));
        assert_eq!(
            seconds("--ttl", MAX_SECONDS).unwrap(),
            Duration::from_secs(9_000_000_000)
        );
    }

    fn check(args: &[&str]) -> Result<(), Failure> {
        let mut argv = vec!["kvctl"];
        argv.extend_from_slice(args);
        check_arguments(&Cli::try_parse_from(argv).expect("parses"))
    }

    #[test]
    fn every_number_and_id_is_checked_before_connecting() {
        for (args, context) in [
            (&["--timeout", "inf", "get", "k"][..], "--timeout"),
            (&["put", "k", "v", "--ttl", "1e30"][..], "--ttl"),
            (&["put", "k", "v", "--lease", "xyz"][..], "--lease"),
            (&["lock", "k", "--ttl", "NaN", "--", "true"][..], "--ttl"),
            (&["lease", "grant", "1e300"][..], "TTL"),
            (&["lease", "revoke", "xyz"][..], "--lease"),
            (&["lease", "keep-alive", "xyz"][..], "--lease"),
            (
                &["svc", "register", "api", "h:1", "--ttl", "0"][..],
                "--ttl",
            ),
            (&["--store", "memory://", "get", "k"][..], "--store"),
            (&["--user", "u", "get", "k"][..], "--user"),
            (&["--password", "p", "get", "k"][..], "--password"),
        ] {
            let failure = check(args).expect_err(&format!("{args:?}"));
            assert_eq!(failure.context, context, "{args:?}");
            assert_eq!(failure.code(), exit::USAGE, "{args:?}");
        }
        check(&["put", "k", "v", "--ttl", "30", "--timeout", "0.5"]).unwrap();
        check(&["lease", "grant", "30"]).unwrap();
        check(&["--user", "u", "get", "k", "--password", "p"]).unwrap();
    }

    #[test]
    fn memory_is_refused_with_the_reason() {
        let failure = check(&["--store", "memory://?namespace=a", "put", "a", "b"]).unwrap_err();
        assert!(
            failure.error.to_string().contains(MEMORY_REFUSED),
            "{}",
            failure.error
        );
    }
}
