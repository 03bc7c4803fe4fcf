//! `svc ls|get|watch|register`: the discovery records.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kvstore::Store;
use kvstore_discovery::{Discovery, Instance, InstanceChange, Registrar};
use serde_json::json;

use crate::cli::ServiceCommand;
use crate::exit::{Context, Failure, OK};
use crate::output::Format;
use crate::{interrupted, seconds};

pub(crate) async fn run(
    store: &Arc<dyn Store>,
    command: ServiceCommand,
    format: Format,
) -> Result<u8, Failure> {
    let discovery = Discovery::new(store.clone());
    match command {
        ServiceCommand::Ls => {
            for service in discovery
                .list_services()
                .await
                .context(|| "svc ls".into())?
            {
                match format {
                    Format::Text => println!("{service}"),
                    Format::Json => println!("{}", json!({ "service": service })),
                }
            }
        }
        ServiceCommand::Get { service } => {
            let instances = discovery
                .resolve(&service)
                .await
                .context(|| format!("svc get {service}"))?;
            print_instances(&instances, format);
        }
        ServiceCommand::Watch { service } => {
            let mut set = discovery
                .watch(&service)
                .await
                .context(|| format!("svc watch {service}"))?;
            let current: Vec<Instance> =
                set.instances().iter().map(|i| Instance::clone(i)).collect();
            print_instances(&current, format);
            loop {
                let changes = tokio::select! {
                    changes = set.next_change() => changes,
                    () = interrupted() => break,
                };
                let Some(changes) = changes else { break };
                for change in changes {
                    let (kind, instance, revision) = match change {
                        InstanceChange::Added { instance, revision } => {
                            ("added", instance, revision)
                        }
                        InstanceChange::Updated { instance, revision } => {
                            ("updated", instance, revision)
                        }
                        InstanceChange::Removed { instance, revision } => {
                            ("removed", instance, revision)
                        }
                    };
                    match format {
                        Format::Text => println!(
                            "{} {} {} (revision {revision})",
                            kind.to_uppercase(),
                            instance.id,
                            instance.address
                        ),
                        Format::Json => println!(
                            "{}",
                            json!({"type": kind, "instance": instance_json(&instance), "revision": revision})
                        ),
                    }
                }
            }
        }
        ServiceCommand::Register {
            service,
            address,
            id,
            ttl,
        } => {
            let port = address.rsplit_once(':').map_or("0", |(_, port)| port);
            let id = id.unwrap_or_else(|| format!("{service}-{port}"));
            let ttl = seconds("--ttl", ttl)?;
            let instance = Instance::new(service.as_str(), id.as_str(), address.as_str());
            let registration = Registrar::new(store.clone())
                .register(instance, ttl)
                .await
                .context(|| format!("svc register {service}/{id}"))?;
            println!(
                "registered {service}/{id} at {address} (TTL {}s); Ctrl-C deregisters",
                ttl.as_secs_f64()
            );
            interrupted().await;
            registration
                .deregister()
                .await
                .context(|| format!("svc deregister {service}/{id}"))?;
            println!("deregistered {service}/{id}");
        }
    }
    Ok(OK)
}

fn instance_json(instance: &Instance) -> serde_json::Value {
    serde_json::to_value(instance).unwrap_or_else(|_| json!({"id": instance.id}))
}

fn print_instances(instances: &[Instance], format: Format) {
    if format == Format::Json {
        for instance in instances {
            println!("{}", instance_json(instance));
        }
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(["ID", "ADDRESS", "STATUS", "WEIGHT", "ZONE", "AGE"]);
    for i in instances {
        let age = now.saturating_sub(u128::from(i.registered_at)) / 1000;
        table.add_row([
            i.id.clone(),
            i.address.clone(),
            format!("{:?}", i.status).to_lowercase(),
            i.weight.to_string(),
            i.zone.clone().unwrap_or_else(|| "-".into()),
            format!("{age}s"),
        ]);
    }
    // Columns flush left, two spaces apart.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    println!("{}", table.trim_fmt());
}
