//! `atoll kv ...`: the key/value store from the command line, with `consul kv`'s output,
//! messages and exit codes (a missing key or a failed check-and-set is status 1).

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::{request_with_body, HttpFailure};
use crate::config::{ClientArgs, KvCommand, KvDeleteArgs, KvGetArgs, KvPutArgs};
use crate::lock_cli::escape;

/// Runs an `atoll kv` subcommand; a refusal `consul kv` reports with `Error!` is printed
/// here and is status 1.
pub async fn run(command: KvCommand) -> anyhow::Result<ExitCode> {
    let outcome = match command {
        KvCommand::Get(args) => get(&args).await?,
        KvCommand::Put(args) => put(&args).await?,
        KvCommand::Delete(args) => delete(&args).await?,
        KvCommand::Export { prefix, client } => export(&client, &prefix).await?,
        KvCommand::Import { data, client } => import(&client, &data).await?,
    };
    Ok(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(refusal) => {
            eprintln!("Error! {refusal}");
            ExitCode::FAILURE
        }
    })
}

/// What a command did: done, or refused with `consul kv`'s message (after `Error! `).
type Outcome = Result<(), String>;

/// One entry of `consul kv export`'s JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedEntry {
    /// The key.
    pub key: String,
    /// The entry's flags.
    #[serde(default)]
    pub flags: u64,
    /// The value, base64.
    #[serde(default)]
    pub value: String,
}

/// A key as the commands take it: never starting with `/`, and not empty unless
/// `may_be_empty` (a prefix).
fn checked_key(key: &str, may_be_empty: bool) -> Result<(), String> {
    if key.starts_with('/') {
        return Err(format!(
            "Invalid key name {key:?}: keys must not begin with a '/'"
        ));
    }
    if key.is_empty() && !may_be_empty {
        return Err("Missing KEY argument".to_string());
    }
    Ok(())
}

fn kv_path(key: &str, query: &str) -> String {
    if query.is_empty() {
        format!("/v1/kv/{}", escape(key))
    } else {
        format!("/v1/kv/{}?{query}", escape(key))
    }
}

/// The entries at `path`: none when the agent answers 404.
async fn entries(client: &ClientArgs, path: &str) -> anyhow::Result<Vec<Value>> {
    match request_with_body(client, "GET", path, None).await {
        Ok((_, Value::Array(entries))) => Ok(entries),
        Ok((_, other)) => bail!("GET {path}: expected a list of entries, got {other}"),
        Err(e)
            if e.downcast_ref::<HttpFailure>()
                .is_some_and(|f| f.status == 404) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// An entry's value, decoded (empty when it has none).
fn value_of(entry: &Value) -> anyhow::Result<Vec<u8>> {
    match entry.get("Value").and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .with_context(|| format!("the value of {} is not base64", field(entry, "Key"))),
    }
}

fn field(entry: &Value, name: &str) -> String {
    match entry.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// An entry's value as printed: its bytes, or with `base64` as stored.
fn printed_value(entry: &Value, base64: bool) -> anyhow::Result<Vec<u8>> {
    if base64 {
        return Ok(field(entry, "Value").into_bytes());
    }
    value_of(entry)
}

/// `consul kv get -detailed`'s block for one entry.
fn detailed(entry: &Value, base64: bool) -> anyhow::Result<Vec<u8>> {
    let session = field(entry, "Session");
    let value = printed_value(entry, base64)?;
    let mut out = Vec::new();
    for (name, text) in [
        ("CreateIndex", field(entry, "CreateIndex")),
        ("Flags", field(entry, "Flags")),
        ("Key", field(entry, "Key")),
        ("LockIndex", field(entry, "LockIndex")),
        ("ModifyIndex", field(entry, "ModifyIndex")),
        (
            "Session",
            if session.is_empty() {
                "-".into()
            } else {
                session
            },
        ),
    ] {
        writeln!(out, "{name:<16} {text}")?;
    }
    write!(out, "{:<16} ", "Value")?;
    out.extend_from_slice(&value);
    out.push(b'\n');
    Ok(out)
}

async fn get(args: &KvGetArgs) -> anyhow::Result<Outcome> {
    let prefix = args.recurse || args.keys;
    if let Err(refusal) = checked_key(&args.key, prefix) {
        return Ok(Err(refusal));
    }
    let client = &args.client;
    let mut out = Vec::new();
    if args.keys {
        let query = format!("keys&separator={}", query_value(&args.separator));
        let path = kv_path(&args.key, &query);
        let keys = match request_with_body(client, "GET", &path, None).await {
            Ok((_, keys)) => keys,
            Err(e)
                if e.downcast_ref::<HttpFailure>()
                    .is_some_and(|f| f.status == 404) =>
            {
                Value::Array(Vec::new())
            }
            Err(e) => return Err(e),
        };
        if client.json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
            return Ok(Ok(()));
        }
        for key in keys.as_array().into_iter().flatten() {
            writeln!(out, "{}", key.as_str().unwrap_or_default())?;
        }
    } else if args.recurse {
        let found = entries(client, &kv_path(&args.key, "recurse")).await?;
        if client.json {
            println!("{}", serde_json::to_string_pretty(&found)?);
            return Ok(Ok(()));
        }
        for (i, entry) in found.iter().enumerate() {
            if args.detailed {
                if i > 0 {
                    out.push(b'\n');
                }
                out.extend(detailed(entry, args.base64)?);
            } else {
                write!(out, "{}:", field(entry, "Key"))?;
                out.extend(printed_value(entry, args.base64)?);
                out.push(b'\n');
            }
        }
    } else {
        let found = entries(client, &kv_path(&args.key, "")).await?;
        let Some(entry) = found.first() else {
            return Ok(Err(format!("No key exists at: {}", args.key)));
        };
        if client.json {
            println!("{}", serde_json::to_string_pretty(entry)?);
            return Ok(Ok(()));
        }
        if args.detailed {
            out.extend(detailed(entry, args.base64)?);
        } else {
            out.extend(printed_value(entry, args.base64)?);
            out.push(b'\n');
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(Ok(()))
}

/// `text` percent-encoded for a query value.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The bytes a `VALUE|-|@FILE` argument names.
fn read_data(argument: &str) -> anyhow::Result<Vec<u8>> {
    if argument == "-" {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?;
        return Ok(data);
    }
    if let Some(path) = argument.strip_prefix('@') {
        return std::fs::read(path).with_context(|| format!("cannot read {path}"));
    }
    Ok(argument.as_bytes().to_vec())
}

async fn put(args: &KvPutArgs) -> anyhow::Result<Outcome> {
    if let Err(refusal) = checked_key(&args.key, false) {
        return Ok(Err(refusal));
    }
    let mut value = match &args.value {
        Some(argument) => read_data(argument)?,
        None => Vec::new(),
    };
    if args.base64 {
        let text = String::from_utf8_lossy(&value);
        value = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| anyhow!("--base64: the value is not base64: {e}"))?;
    }
    let mut query = Vec::new();
    if let Some(flags) = args.flags {
        query.push(format!("flags={flags}"));
    }
    if args.cas {
        query.push(format!("cas={}", args.modify_index.unwrap_or(0)));
    }
    let path = kv_path(&args.key, &query.join("&"));
    let (_, written) = request_with_body(&args.client, "PUT", &path, Some(value)).await?;
    match written {
        Value::Bool(true) => {
            println!("Success! Data written to: {}", args.key);
            Ok(Ok(()))
        }
        Value::Bool(false) if args.cas => {
            Ok(Err(format!("Did not write to {}: CAS failed", args.key)))
        }
        other => bail!("the agent did not write {}: it answered {other}", args.key),
    }
}

async fn delete(args: &KvDeleteArgs) -> anyhow::Result<Outcome> {
    if let Err(refusal) = checked_key(&args.key, args.recurse) {
        return Ok(Err(refusal));
    }
    let query = match (args.recurse, args.modify_index) {
        (true, _) => "recurse".to_string(),
        (false, Some(index)) if args.cas => format!("cas={index}"),
        (false, _) => String::new(),
    };
    let path = kv_path(&args.key, &query);
    let (_, deleted) = request_with_body(&args.client, "DELETE", &path, None).await?;
    match (deleted, args.recurse) {
        (Value::Bool(false), _) if args.cas => {
            Ok(Err(format!("Did not delete key {}: CAS failed", args.key)))
        }
        (Value::Bool(true), true) => {
            println!("Success! Deleted keys with prefix: {}", args.key);
            Ok(Ok(()))
        }
        (Value::Bool(true), false) => {
            println!("Success! Deleted key: {}", args.key);
            Ok(Ok(()))
        }
        (other, _) => bail!("the agent did not delete {}: it answered {other}", args.key),
    }
}

/// The entries under `prefix` in export form.
fn exported(found: &[Value]) -> anyhow::Result<Vec<ExportedEntry>> {
    found
        .iter()
        .map(|entry| {
            Ok(ExportedEntry {
                key: field(entry, "Key"),
                flags: entry.get("Flags").and_then(Value::as_u64).unwrap_or(0),
                value: base64::engine::general_purpose::STANDARD.encode(value_of(entry)?),
            })
        })
        .collect()
}

async fn export(client: &ClientArgs, prefix: &str) -> anyhow::Result<Outcome> {
    if let Err(refusal) = checked_key(prefix, true) {
        return Ok(Err(refusal));
    }
    let found = entries(client, &kv_path(prefix, "recurse")).await?;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    exported(&found)?.serialize(&mut serializer)?;
    out.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(Ok(()))
}

/// The entries of an export, each value decoded; an error names the entry at fault.
fn parse_export(data: &[u8]) -> anyhow::Result<Vec<(ExportedEntry, Vec<u8>)>> {
    let entries: Vec<ExportedEntry> = serde_json::from_slice(data).map_err(|e| {
        anyhow!("the data is not an export (a JSON list of {{\"key\", \"flags\", \"value\"}}): {e}")
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            if entry.key.is_empty() || entry.key.starts_with('/') {
                bail!(
                    "entry {i}: the key {:?} is empty or begins with a '/'",
                    entry.key
                );
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(&entry.value)
                .map_err(|e| anyhow!("entry {i} ({}): the value is not base64: {e}", entry.key))?;
            Ok((entry, value))
        })
        .collect()
}

async fn import(client: &ClientArgs, argument: &str) -> anyhow::Result<Outcome> {
    let data = read_data(argument)?;
    // Every entry is checked before the first is written.
    let entries = parse_export(&data)?;
    for (entry, value) in entries {
        let path = kv_path(&entry.key, &format!("flags={}", entry.flags));
        let (_, written) = request_with_body(client, "PUT", &path, Some(value)).await?;
        if written != Value::Bool(true) {
            bail!(
                "the agent did not write {}: it answered {written}",
                entry.key
            );
        }
        println!("Imported: {}", entry.key);
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_export_lists_key_flags_and_base64_values() {
        let found = vec![
            json!({"Key": "a/b", "Flags": 42, "Value": "aGk="}),
            json!({"Key": "a/empty", "Flags": 0, "Value": null}),
        ];
        let entries = exported(&found).unwrap();
        assert_eq!(
            serde_json::to_value(&entries).unwrap(),
            json!([
                {"key": "a/b", "flags": 42, "value": "aGk="},
                {"key": "a/empty", "flags": 0, "value": ""}
            ])
        );
        let text = serde_json::to_vec(&entries).unwrap();
        let back = parse_export(&text).unwrap();
        assert_eq!(back[0].1, b"hi");
        assert_eq!(back[0].0.flags, 42);
        assert_eq!(back[1].1, b"");
    }

    #[test]
    fn a_bad_export_names_the_entry() {
        let error = parse_export(br#"[{"key": "k", "flags": 0, "value": "%%"}]"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("entry 0 (k)"), "{error}");
        let error = parse_export(br#"[{"key": "/k", "value": ""}]"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("entry 0"), "{error}");
        assert!(parse_export(b"{}").is_err());
    }

    #[test]
    fn keys_never_begin_with_a_slash() {
        assert!(checked_key("a/b", false).is_ok());
        assert!(checked_key("", true).is_ok());
        assert!(checked_key("", false).is_err());
        assert!(checked_key("/a", true).is_err());
    }

    #[test]
    fn details_list_every_field() {
        let entry = json!({"Key": "k", "Flags": 3, "Value": "dg==", "CreateIndex": 5,
            "ModifyIndex": 6, "LockIndex": 0, "Session": ""});
        let text = String::from_utf8(detailed(&entry, false).unwrap()).unwrap();
        assert!(text.contains("Flags            3\n"), "{text}");
        assert!(text.contains("Session          -\n"), "{text}");
        assert!(text.ends_with("Value            v\n"), "{text}");
        let text = String::from_utf8(detailed(&entry, true).unwrap()).unwrap();
        assert!(text.ends_with("Value            dg==\n"), "{text}");
    }
}
