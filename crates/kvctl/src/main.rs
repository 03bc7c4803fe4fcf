//! `kvctl`: one command-line tool for every kvstore backend.

mod cli;
mod exit;
mod keys;
mod lease;
mod lock;
mod output;
mod services;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kvstore::{OpenOptions, Store};

use crate::cli::{Cli, Command, Global};
use crate::exit::{Context, Failure, usage};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}

/// Seconds from the command line as a duration.
///
/// # Errors
/// A usage failure for a negative, zero or non-finite number.
pub(crate) fn seconds(flag: &str, value: f64) -> Result<Duration, Failure> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(usage(
            flag,
            format!("must be a positive number of seconds, got {value}"),
        ))
    }
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
    let options = OpenOptions {
        namespace: global.namespace.clone(),
        connect_timeout: Some(timeout),
        request_timeout: Some(timeout),
        credentials: global.user.clone().zip(global.password.clone()),
        ca_pem,
    };
    kvstore::open_with(&global.store, &options)
        .await
        .context(|| format!("open {}", global.store))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
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
