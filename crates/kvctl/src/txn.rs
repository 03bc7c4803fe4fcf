//! `txn`: a transaction read from standard input (or a file), in etcdctl's text form.
//!
//! Three sections separated by blank lines: comparisons, the operations applied when
//! they all hold, the operations applied otherwise.
//!
//! ```text
//! value("config/mode") = "blue"
//! mod("config/mode") > "0"
//!
//! put config/mode "green"
//! del config/old
//!
//! get config/mode
//! ```
//!
//! Comparisons: `value|mod|create|lease("KEY") =|!=|>|< "OPERAND"` (`mod` is the
//! revision of the key's last write, `create` its create revision, `lease` its lease id
//! in hex, as `lease grant` prints it, `"0"` for none). Operations: `put KEY VALUE`,
//! `del KEY`, `get KEY`; a value with spaces is quoted, `\"` and `\\` escape inside
//! quotes.

use std::sync::Arc;

use bytes::Bytes;
use kvstore::{
    Compare, CompareOp, CompareTarget, LeaseId, PutOptions, Store, Txn, TxnOp, TxnResult,
};

use serde_json::json;

use crate::exit::{Context, Failure, usage};
use crate::output::{Format, escape, pair_json};

/// Parse the text form of a transaction.
///
/// # Errors
/// A usage failure naming the line that does not parse.
pub(crate) fn parse(text: &str) -> Result<Txn, Failure> {
    let mut sections: Vec<Vec<(usize, &str)>> = vec![Vec::new()];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            sections.push(Vec::new());
            continue;
        }
        if let Some(section) = sections.last_mut() {
            section.push((number + 1, line));
        }
    }
    // Trailing empty sections from trailing blank lines carry nothing.
    while sections.len() > 3 && sections.last().is_some_and(Vec::is_empty) {
        sections.pop();
    }
    if sections.len() > 3 {
        return Err(usage(
            "txn",
            "expected at most three sections (comparisons, then, else) separated by blank lines",
        ));
    }
    let mut sections = sections.into_iter();
    let mut txn = Txn::new();
    for (number, line) in sections.next().unwrap_or_default() {
        txn = txn.when([compare(line).map_err(|e| at(number, line, e))?]);
    }
    for (number, line) in sections.next().unwrap_or_default() {
        txn = txn.and_then([operation(line).map_err(|e| at(number, line, e))?]);
    }
    for (number, line) in sections.next().unwrap_or_default() {
        txn = txn.or_else([operation(line).map_err(|e| at(number, line, e))?]);
    }
    Ok(txn)
}

fn at(number: usize, line: &str, problem: String) -> Failure {
    usage("txn", format!("line {number} {line:?}: {problem}"))
}

/// `target("KEY") op "OPERAND"`.
fn compare(line: &str) -> Result<Compare, String> {
    let (target, rest) = line
        .split_once('(')
        .ok_or("expected value|mod|create|lease(\"KEY\") OP \"OPERAND\"")?;
    let (key, rest) = quoted(rest.trim_start())?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or("expected ) after the key")?
        .trim_start();
    let (op, rest) = [
        ("!=", CompareOp::NotEqual),
        ("=", CompareOp::Equal),
        (">", CompareOp::Greater),
        ("<", CompareOp::Less),
    ]
    .into_iter()
    .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|rest| (op, rest)))
    .ok_or("expected one of = != > < after the key")?;
    let (operand, rest) = quoted(rest.trim_start())?;
    if !rest.trim().is_empty() {
        return Err(format!("unexpected {:?} after the operand", rest.trim()));
    }
    let number = |what: &str| {
        operand
            .parse::<u64>()
            .map_err(|_| format!("{what} takes a revision number, got {operand:?}"))
    };
    let target = match target.trim() {
        "value" => CompareTarget::Value(Bytes::from(operand.clone())),
        "mod" => CompareTarget::Revision(number("mod")?),
        "create" => CompareTarget::CreateRevision(number("create")?),
        "lease" => CompareTarget::Lease(match operand.as_str() {
            "0" | "" => None,
            hex => {
                Some(LeaseId(i64::from_str_radix(hex, 16).map_err(|_| {
                    format!("lease takes a hex lease id, got {hex:?}")
                })?))
            }
        }),
        other => {
            return Err(format!(
                "unknown comparison {other:?}: use value, mod, create or lease"
            ));
        }
    };
    Ok(Compare { key, target, op })
}

/// `put KEY VALUE`, `del KEY`, `get KEY`.
fn operation(line: &str) -> Result<TxnOp, String> {
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let (key, rest) = word(rest.trim_start())?;
    let rest = rest.trim_start();
    match verb {
        "put" => {
            let (value, rest) = word(rest)?;
            if !rest.trim().is_empty() {
                return Err("put takes a key and one value (quote a value with spaces)".into());
            }
            Ok(TxnOp::put(key, Bytes::from(value), PutOptions::default()))
        }
        "del" | "get" if !rest.is_empty() => Err(format!("{verb} takes one key")),
        "del" => Ok(TxnOp::delete(key)),
        "get" => Ok(TxnOp::get(key)),
        other => Err(format!("unknown operation {other:?}: use put, del or get")),
    }
}

/// A quoted string or a bare word, and the rest.
fn word(text: &str) -> Result<(String, &str), String> {
    if text.starts_with('"') {
        return quoted(text);
    }
    if text.is_empty() {
        return Err("expected a key or value".into());
    }
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    Ok((text[..end].to_owned(), &text[end..]))
}

/// `"..."` with `\"` and `\\` escapes, and the rest.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let body = text.strip_prefix('"').ok_or("expected a quoted string")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => out.push(escaped),
                _ => return Err("only \\\" and \\\\ escape inside quotes".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".into())
}

/// Apply the transaction and print what it did: `SUCCESS` or `FAILURE`, then one line
/// (or pair) per operation of the applied branch, as etcdctl does.
pub(crate) async fn run(store: &Arc<dyn Store>, text: &str, format: Format) -> Result<u8, Failure> {
    let txn = parse(text)?;
    let response = store.txn(txn).await.context(|| "txn".to_owned())?;
    match format {
        Format::Json => {
            let results: Vec<serde_json::Value> = response
                .results
                .iter()
                .map(|result| match result {
                    TxnResult::Put(pair) => json!({ "put": pair_json(pair) }),
                    TxnResult::Delete { deleted } => json!({ "delete": { "deleted": deleted } }),
                    TxnResult::Get(pair) => json!({ "get": pair.as_ref().map(pair_json) }),
                })
                .collect();
            let answer = json!({
                "succeeded": response.succeeded,
                "revision": response.revision,
                "results": results,
            });
            println!("{answer}");
        }
        Format::Text => {
            println!(
                "{}",
                if response.succeeded {
                    "SUCCESS"
                } else {
                    "FAILURE"
                }
            );
            for result in &response.results {
                match result {
                    TxnResult::Put(pair) => println!("OK revision {}", pair.revision),
                    TxnResult::Delete { deleted } => println!("{}", u8::from(*deleted)),
                    TxnResult::Get(Some(pair)) => {
                        println!("{}\n{}", pair.key, escape(&pair.value));
                    }
                    TxnResult::Get(None) => println!("(absent)"),
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etcdctl_text_form_parses() {
        let txn = parse(
            "value(\"config/mode\") = \"blue\"\nmod(\"config/mode\") > \"3\"\n\nput config/mode \"dark green\"\ndel old\n\nget config/mode\n",
        )
        .unwrap();
        assert_eq!(
            txn.compares(),
            [
                Compare::value("config/mode", CompareOp::Equal, "blue"),
                Compare::revision("config/mode", CompareOp::Greater, 3),
            ]
        );
        assert_eq!(
            txn.success(),
            [
                TxnOp::put(
                    "config/mode",
                    Bytes::from("dark green"),
                    PutOptions::default()
                ),
                TxnOp::delete("old"),
            ]
        );
        assert_eq!(txn.failure(), [TxnOp::get("config/mode")]);
    }

    #[test]
    fn a_transaction_without_comparisons_starts_with_a_blank_line() {
        let txn = parse("\nput a 1\n").unwrap();
        assert!(txn.compares().is_empty());
        assert_eq!(txn.success().len(), 1);
    }

    #[test]
    fn bad_lines_are_usage_errors_naming_the_line() {
        for text in [
            "size(\"a\") = \"1\"",
            "mod(\"a\") = \"x\"",
            "value(\"a\") ~ \"1\"",
            "value(\"a\") = \"1\n\nput a",
            "\nput a 1 2",
            "\nmove a b",
            "\n\n\nget a\n\nget b",
        ] {
            let failure = parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            assert_eq!(failure.code(), 2, "{text:?}");
        }
    }
}
