//! `lock KEY -- COMMAND...` and `elect NAME VALUE -- COMMAND...`: run a command while
//! holding a lock, or while leading an election.

use std::sync::Arc;

use bytes::Bytes;
use kvstore::{ElectionOptions, LeaseLoss, LockOptions, Store};

use crate::exit::{Context, FAILURE, Failure, usage};
use crate::{interrupted, seconds};

/// Acquire the lock, print the fencing token, run the command with
/// `KVSTORE_FENCING_TOKEN` set, release, and exit with the command's status. If the lock
/// is lost while the command runs, the command is killed and kvctl fails.
pub(crate) async fn run_locked(
    store: &Arc<dyn Store>,
    key: &str,
    ttl: f64,
    command: &[String],
) -> Result<u8, Failure> {
    if command.is_empty() {
        return Err(usage("lock", "no command given after --"));
    }
    let holder = format!("kvctl pid {}", std::process::id());
    let locker = store
        .new_lock(
            key,
            LockOptions {
                value: Bytes::from(holder),
                ttl: seconds("--ttl", ttl)?,
            },
        )
        .context(|| format!("lock {key}"))?;
    let guard = tokio::select! {
        guard = locker.lock() => guard.context(|| format!("lock {key}"))?,
        () = interrupted() => return Ok(FAILURE),
    };
    eprintln!(
        "kvctl: holding lock {key} with fencing token {}",
        guard.fencing_token()
    );
    let context = format!("lock {key}");
    let status =
        run_while_held(&context, key, guard.fencing_token(), guard.lost(), command).await?;
    guard.unlock().await.context(|| format!("unlock {key}"))?;
    Ok(status)
}

/// Campaign in election `name` with `value`, print the fencing token once elected, run
/// the command with `KVSTORE_FENCING_TOKEN` set, resign, and exit with the command's
/// status. If the leadership is lost while the command runs, the command is killed and
/// kvctl fails.
pub(crate) async fn run_elected(
    store: &Arc<dyn Store>,
    name: &str,
    value: &str,
    ttl: f64,
    command: &[String],
) -> Result<u8, Failure> {
    if command.is_empty() {
        return Err(usage("elect", "no command given after --"));
    }
    let context = format!("elect {name}");
    let election = store
        .new_election(
            name,
            ElectionOptions {
                ttl: seconds("--ttl", ttl)?,
            },
        )
        .context(|| context.clone())?;
    let leadership = tokio::select! {
        leadership = election.campaign(Bytes::from(value.to_owned())) => {
            leadership.context(|| context.clone())?
        }
        () = interrupted() => return Ok(FAILURE),
    };
    eprintln!(
        "kvctl: leading election {name} with fencing token {}",
        leadership.fencing_token()
    );
    let status = run_while_held(
        &context,
        name,
        leadership.fencing_token(),
        leadership.lost(),
        command,
    )
    .await?;
    leadership
        .resign()
        .await
        .context(|| format!("resign {name}"))?;
    Ok(status)
}

/// Run `command` with `KVSTORE_FENCING_TOKEN` set until it exits (its status) or `lost`
/// resolves (the command is killed: [`kvstore::Error::LockLost`]).
async fn run_while_held(
    context: &str,
    key: &str,
    fencing_token: u64,
    lost: impl std::future::Future<Output = LeaseLoss>,
    command: &[String],
) -> Result<u8, Failure> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| usage(context, "no command given after --"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("KVSTORE_FENCING_TOKEN", fencing_token.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| usage(context, format!("cannot run {program:?}: {e}")))?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| usage(context, format!("waiting for {program:?}: {e}")))?,
        reason = lost => {
            let _ = child.kill().await;
            return Err(Failure {
                context: context.to_owned(),
                error: kvstore::Error::LockLost { key: key.to_owned(), reason },
            });
        }
    };
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(FAILURE))
}
