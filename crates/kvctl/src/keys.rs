//! Key commands: get, put, del, ls, rm -r, cas.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use kvstore::{KvPair, LeaseId, PutOptions, Store};

use crate::exit::{Context, Failure, OK, usage};
use crate::output::{Format, escape, pair_json};
use crate::seconds;

fn print_written(pair: &KvPair, format: Format) {
    match format {
        Format::Text => println!("OK revision {}", pair.revision),
        Format::Json => println!("{}", pair_json(pair)),
    }
}

/// Parse a lease ID as `lease grant` prints it (hex).
pub(crate) fn lease_id(text: &str) -> Result<LeaseId, Failure> {
    i64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map(LeaseId)
        .map_err(|_| usage("--lease", format!("{text:?} is not a hexadecimal lease ID")))
}

pub(crate) async fn get(store: &Arc<dyn Store>, key: &str, format: Format) -> Result<u8, Failure> {
    let pair = store.get(key).await.context(|| format!("get {key}"))?;
    match format {
        Format::Text => println!("{}", escape(&pair.value)),
        Format::Json => println!("{}", pair_json(&pair)),
    }
    Ok(OK)
}

pub(crate) async fn put(
    store: &Arc<dyn Store>,
    key: &str,
    value: Option<String>,
    file: Option<PathBuf>,
    ttl: Option<f64>,
    lease: Option<String>,
    format: Format,
) -> Result<u8, Failure> {
    let value = match (value, file) {
        (Some(value), _) => Bytes::from(value),
        (None, Some(path)) => Bytes::from(
            std::fs::read(&path)
                .map_err(|e| usage("put --file", format!("cannot read {}: {e}", path.display())))?,
        ),
        (None, None) => {
            let mut buffer = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buffer)
                .map_err(|e| usage("put", format!("cannot read standard input: {e}")))?;
            Bytes::from(buffer)
        }
    };
    let options = PutOptions {
        ttl: ttl.map(|t| seconds("--ttl", t)).transpose()?,
        lease: lease.as_deref().map(lease_id).transpose()?,
    };
    let pair = store
        .put(key, value, options)
        .await
        .context(|| format!("put {key}"))?;
    print_written(&pair, format);
    Ok(OK)
}

pub(crate) async fn delete(store: &Arc<dyn Store>, key: &str) -> Result<u8, Failure> {
    store.delete(key).await.context(|| format!("del {key}"))?;
    Ok(OK)
}

pub(crate) async fn list(
    store: &Arc<dyn Store>,
    prefix: &str,
    values: bool,
    format: Format,
) -> Result<u8, Failure> {
    let pairs = store
        .list(prefix)
        .await
        .context(|| format!("ls {prefix}"))?;
    for pair in &pairs {
        match (format, values) {
            (Format::Json, _) => println!("{}", pair_json(pair)),
            (Format::Text, true) => println!("{} = {}", pair.key, escape(&pair.value)),
            (Format::Text, false) => println!("{}", pair.key),
        }
    }
    Ok(OK)
}

pub(crate) async fn delete_tree(store: &Arc<dyn Store>, prefix: &str) -> Result<u8, Failure> {
    store
        .delete_tree(prefix)
        .await
        .context(|| format!("rm -r {prefix}"))?;
    Ok(OK)
}

pub(crate) async fn cas(
    store: &Arc<dyn Store>,
    key: &str,
    value: String,
    revision: Option<u64>,
    create: bool,
    format: Format,
) -> Result<u8, Failure> {
    let previous = match (revision, create) {
        (Some(revision), false) => Some(KvPair {
            key: key.to_owned(),
            value: Bytes::new(),
            revision,
            create_revision: 0,
            lease: None,
        }),
        (None, true) => None,
        _ => {
            return Err(usage(
                "cas",
                "give exactly one of --revision N and --create",
            ));
        }
    };
    let pair = store
        .atomic_put(
            key,
            Bytes::from(value),
            previous.as_ref(),
            PutOptions::default(),
        )
        .await
        .context(|| format!("cas {key}"))?;
    print_written(&pair, format);
    Ok(OK)
}
