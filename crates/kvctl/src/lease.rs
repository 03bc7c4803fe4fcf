//! `lease grant|revoke|keep-alive`.

use std::sync::Arc;

use kvstore::Store;
use serde_json::json;

use crate::cli::LeaseCommand;
use crate::exit::{Context, Failure, OK};
use crate::keys::lease_id;
use crate::output::Format;
use crate::{interrupted, seconds};

pub(crate) async fn run(
    store: &Arc<dyn Store>,
    command: LeaseCommand,
    format: Format,
) -> Result<u8, Failure> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let lease = store
                .grant_lease(seconds("ttl", ttl)?)
                .await
                .context(|| "lease grant".into())?;
            let (id, ttl) = (lease.id(), lease.ttl());
            // The lease outlives this process: it expires after its TTL unless kept alive.
            lease.abandon();
            match format {
                Format::Text => println!("{id} granted with TTL {}s", ttl.as_secs_f64()),
                Format::Json => println!(
                    "{}",
                    json!({"id": id.to_string(), "ttl_seconds": ttl.as_secs_f64()})
                ),
            }
        }
        LeaseCommand::Revoke { id } => {
            let lease = lease_id(&id)?;
            store
                .revoke_lease(lease)
                .await
                .context(|| format!("lease revoke {id}"))?;
        }
        LeaseCommand::KeepAlive { id } => {
            let lease = lease_id(&id)?;
            loop {
                let ttl = store
                    .keep_alive_lease(lease)
                    .await
                    .context(|| format!("lease keep-alive {id}"))?;
                match format {
                    Format::Text => println!("{lease} kept alive, TTL {}s", ttl.as_secs_f64()),
                    Format::Json => println!(
                        "{}",
                        json!({"id": lease.to_string(), "ttl_seconds": ttl.as_secs_f64()})
                    ),
                }
                tokio::select! {
                    () = tokio::time::sleep(ttl / 3) => {}
                    () = interrupted() => break,
                }
            }
        }
    }
    Ok(OK)
}
