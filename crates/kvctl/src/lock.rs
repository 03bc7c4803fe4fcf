//! `lock KEY -- COMMAND...`: run a command while holding a lock.

use std::sync::Arc;

use bytes::Bytes;
use kvstore::{LockOptions, Store};

use crate::exit::{Context, FAILURE, Failure, usage};
use crate::{interrupted, seconds};

/// Acquire the lock, print the fencing token, run the command with
/// `KVSTORE_FENCING_TOKEN` set, release, and exit with the command's status. If the lock
/// is lost while the command runs, the command is killed and kvctl fails.
pub async fn run_locked(
    store: &Arc<dyn Store>,
    key: &str,
    ttl: f64,
    command: &[String],
) -> Result<u8, Failure> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| usage("lock", "no command given after --"))?;
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
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("KVSTORE_FENCING_TOKEN", guard.fencing_token().to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| usage("lock", format!("cannot run {program:?}: {e}")))?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| usage("lock", format!("waiting for {program:?}: {e}")))?,
        reason = guard.lost() => {
            let _ = child.kill().await;
            return Err(Failure {
                context: format!("lock {key}"),
                error: kvstore::Error::LockLost { key: key.to_owned(), reason },
            });
        }
    };
    guard.unlock().await.context(|| format!("unlock {key}"))?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(FAILURE))
}
