//! Subcommands that talk to a running agent over its HTTP API.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::agent_client::AgentClient;
use crate::config::{ClientArgs, CompletionShell, JoinArgs, KeyringArgs};

async fn request(args: &ClientArgs, method: &str, path: &str) -> anyhow::Result<Value> {
    request_with_body(args, method, path, None)
        .await
        .map(|(_, value)| value)
}

/// One exchange with the agent: the answer's status, headers and whole body, or an error
/// saying the agent could not be reached (within `timeout`).
async fn exchange(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, hyper::HeaderMap, Bytes, String)> {
    let agent = AgentClient::new(args)?;
    let url = agent.url(path);
    let request = agent
        .request(method, &url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| anyhow!("invalid address {:?}: {e}", args.http_addr))?;
    let response = tokio::time::timeout(timeout, agent.client.request(request))
        .await
        .map_err(|_| anyhow!("{url}: no answer within {}s", timeout.as_secs()))?
        .with_context(|| {
            format!(
                "cannot reach the agent at {} (is it running? {ADDRESS_HINT})",
                args.http_addr
            )
        })?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((parts.status, parts.headers, body, url))
}

/// Sends a request (with an optional JSON body); answers the status and the JSON body, or an
/// error carrying the server's message for 4xx/5xx.
pub async fn request_with_body(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Value)> {
    let path = match &args.dc {
        Some(dc) => for_datacenter(path, dc)?,
        None => path.to_string(),
    };
    let (status, _, body, _) = exchange(args, method, &path, body, Duration::from_secs(30)).await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let parsed = serde_json::from_slice::<Value>(&body).ok();
        let mut message = parsed
            .as_ref()
            .and_then(|v| {
                v.get("error")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| text.trim().to_string());
        for detail in parsed
            .as_ref()
            .and_then(|v| v.get("details"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = detail
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default();
            for error in detail
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                message.push_str(&format!(
                    "\n  {path}: {}",
                    error.as_str().unwrap_or_default()
                ));
            }
        }
        return Err(HttpFailure {
            status: status.as_u16(),
            message,
        }
        .into());
    }
    if body.is_empty() {
        return Ok((status.as_u16(), Value::Null));
    }
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status.as_u16(), value))
}

/// What to do when the agent cannot be reached.
pub const ADDRESS_HINT: &str =
    "give its address with --http-addr, or in ATOLL_HTTP_ADDR or CONSUL_HTTP_ADDR";

/// An answer to a read that may block: `X-Consul-Index` and the JSON body (`None` for a 404).
#[derive(Debug)]
pub struct Indexed {
    /// `X-Consul-Index`.
    pub index: u64,
    /// The JSON body; `None` when the agent answered 404.
    pub body: Option<Value>,
}

/// A GET of a Consul endpoint that reports `X-Consul-Index`, waiting at most `timeout` (a
/// blocking query asks `?index=&wait=` and waits for as long); a 404 is an answer without
/// a body, other 4xx/5xx are [`HttpFailure`]s.
pub async fn get_indexed(
    args: &ClientArgs,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Indexed> {
    let (status, headers, body, url) = exchange(args, "GET", path, None, timeout).await?;
    let index = headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(Indexed { index, body: None });
    }
    if !status.is_success() {
        return Err(HttpFailure {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).trim().to_string(),
        }
        .into());
    }
    let body =
        serde_json::from_slice(&body).with_context(|| format!("{url}: the answer is not JSON"))?;
    Ok(Indexed {
        index,
        body: Some(body),
    })
}

/// Whether to print colours on standard output: only to a terminal, and never when
/// `NO_COLOR` is set (no-color.org).
pub fn colour_on_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Terminal colours of table cells.
#[derive(Debug, Clone, Copy)]
pub enum Colour {
    /// Passing.
    Green,
    /// Warning.
    Yellow,
    /// Critical.
    Red,
}

/// `text` in `colour` (when `on`).
pub fn paint(text: &str, colour: Colour, on: bool) -> String {
    if !on {
        return text.to_string();
    }
    let code = match colour {
        Colour::Green => 32,
        Colour::Yellow => 33,
        Colour::Red => 31,
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// How many columns `text` takes on a terminal: its characters less colour sequences.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, _) => width += 1,
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    width
}

/// `path` with `dc=DC` added to its query.
fn for_datacenter(path: &str, dc: &str) -> anyhow::Result<String> {
    if !dc
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("invalid datacenter name {dc:?}: use letters, digits, '-' and '_'");
    }
    let separator = if path.contains('?') { '&' } else { '?' };
    Ok(format!("{path}{separator}dc={dc}"))
}

/// A 4xx/5xx answer.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct HttpFailure {
    /// HTTP status.
    pub status: u16,
    /// The server's message.
    pub message: String,
}

/// Prints rows in aligned columns (cells may be coloured with [`paint`]).
pub fn print_table(rows: Vec<Vec<String>>) {
    let columns = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| visible_width(c)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| {
                let padding = w.saturating_sub(visible_width(cell));
                format!("{cell}{}", " ".repeat(padding))
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// `atoll members [--wan]`.
pub async fn members(args: &ClientArgs, wan: bool) -> anyhow::Result<()> {
    let path = if wan {
        "/v1/agent/members?wan=1"
    } else {
        "/v1/agent/members"
    };
    let members = request(args, "GET", path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    if wan {
        print_table(wan_rows(&members));
        return Ok(());
    }
    let mut rows = vec![vec![
        "Node".into(),
        "Address".into(),
        "Status".into(),
        "Type".into(),
        "DC".into(),
    ]];
    for member in members.as_array().into_iter().flatten() {
        let tags = member.get("Tags").cloned().unwrap_or(Value::Null);
        let status = match member.get("Status").and_then(Value::as_u64) {
            Some(1) => "alive",
            Some(3) => "left",
            Some(4) => "failed",
            _ => "unknown",
        };
        let kind = if text(&tags, "role") == "consul" {
            "server"
        } else {
            "client"
        };
        rows.push(vec![
            text(member, "Name"),
            format!("{}:{}", text(member, "Addr"), text(&tags, "port")),
            status.into(),
            kind.into(),
            text(&tags, "dc"),
        ]);
    }
    print_table(rows);
    Ok(())
}

/// The WAN pool as `consul members -wan` prints it.
fn wan_rows(members: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "Node", "Address", "Status", "Type", "Build", "Protocol", "DC",
    ]
    .map(String::from)
    .to_vec()];
    for member in members.as_array().into_iter().flatten() {
        let tags = member.get("Tags").cloned().unwrap_or(Value::Null);
        let status = match member.get("Status").and_then(Value::as_u64) {
            Some(1) => "alive",
            Some(2) => "leaving",
            Some(3) => "left",
            Some(4) => "failed",
            _ => "unknown",
        };
        let kind = if text(&tags, "role") == "consul" {
            "server"
        } else {
            "client"
        };
        let addr = text(member, "Addr");
        let addr = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr
        };
        rows.push(vec![
            text(member, "Name"),
            format!("{addr}:{}", text(member, "Port")),
            status.into(),
            kind.into(),
            text(&tags, "build"),
            text(&tags, "vsn"),
            text(&tags, "dc"),
        ]);
    }
    rows
}

/// `atoll join [--wan] ADDR...`: asks the agent to join through each address; succeeds
/// when one was contacted.
pub async fn join(args: &JoinArgs) -> anyhow::Result<()> {
    let mut joined = 0;
    for address in &args.addresses {
        let mut path = format!("/v1/agent/join/{}", path_segment(address));
        if args.wan {
            path.push_str("?wan=1");
        }
        match request(&args.client, "PUT", &path).await {
            Ok(_) => joined += 1,
            Err(e) => eprintln!("Error joining address '{address}': {e}"),
        }
    }
    if joined == 0 {
        bail!("Failed to join any nodes.");
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(())
}

/// `atoll keyring`: lists, installs, uses or removes a gossip key on every server, through
/// `/v1/operator/keyring`, printing as `consul keyring` does.
pub async fn keyring(args: &KeyringArgs) -> anyhow::Result<()> {
    let change = [
        (
            "POST",
            &args.install,
            "Installing new gossip encryption key...",
        ),
        (
            "PUT",
            &args.use_key,
            "Changing primary gossip encryption key...",
        ),
        ("DELETE", &args.remove, "Removing gossip encryption key..."),
    ]
    .into_iter()
    .find_map(|(method, key, says)| key.as_ref().map(|key| (method, key, says)));
    if let Some((method, key, says)) = change {
        if args.local_only {
            bail!("--local-only only applies to --list");
        }
        println!("==> {says}");
        let body = serde_json::to_vec(&serde_json::json!({ "Key": key }))?;
        request_with_body(&args.client, method, "/v1/operator/keyring", Some(body)).await?;
        return Ok(());
    }
    println!("==> Gathering installed encryption keys...");
    let path = if args.local_only {
        "/v1/operator/keyring?local-only=true"
    } else {
        "/v1/operator/keyring"
    };
    let entries = request(&args.client, "GET", path).await?;
    print!("{}", keyring_listing(&entries));
    Ok(())
}

/// The listing of `atoll keyring --list`: each pool, then each key with how many of the
/// pool's members hold it.
fn keyring_listing(entries: &Value) -> String {
    let mut out = String::new();
    for entry in entries.as_array().into_iter().flatten() {
        let pool = if entry.get("WAN").and_then(Value::as_bool) == Some(true) {
            "WAN".to_string()
        } else {
            format!("{} (LAN)", text(entry, "Datacenter"))
        };
        let nodes = entry.get("NumNodes").and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!("\n{pool}:\n"));
        let keys = entry.get("Keys").and_then(Value::as_object);
        let primary = entry.get("PrimaryKeys").and_then(Value::as_object);
        for (key, count) in keys.into_iter().flatten() {
            let is_primary = primary.is_some_and(|p| p.contains_key(key));
            out.push_str(&format!(
                "  {key} [{}/{nodes}]{}\n",
                count.as_u64().unwrap_or(0),
                if is_primary { " (primary)" } else { "" }
            ));
        }
    }
    out
}

/// `text` percent-encoded for one path segment (an address may hold `[`, `]` and `%`).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `atoll operator raft storage`.
pub async fn storage(args: &ClientArgs) -> anyhow::Result<()> {
    let report = request(args, "GET", "/v1/operator/raft/storage").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let number = |key: &str| report.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mib = |key: &str| format!("{:.1} MiB", number(key) as f64 / (1024.0 * 1024.0));
    let rows = vec![
        vec!["Data dir".into(), mib("DataDirBytes")],
        vec!["File".into(), text(&report, "Path")],
        vec!["File size".into(), mib("FileBytes")],
        vec!["In use".into(), mib("AllocatedBytes")],
        vec!["Stored".into(), mib("StoredBytes")],
        vec![
            "Raft log".into(),
            format!(
                "{} entries ({}..{}), {}",
                number("LogEntries"),
                number("LogFirstIndex"),
                number("LogLastIndex"),
                mib("LogBytes")
            ),
        ],
        vec![
            "Snapshot".into(),
            format!(
                "index {}, {}",
                number("SnapshotIndex"),
                mib("SnapshotBytes")
            ),
        ],
        vec!["Snapshot file".into(), text(&report, "SnapshotPath")],
    ];
    print_table(rows);
    Ok(())
}

/// `atoll operator raft list-peers`.
pub async fn list_peers(args: &ClientArgs) -> anyhow::Result<()> {
    let configuration = request(args, "GET", "/v1/operator/raft/configuration").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&configuration)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "Node".into(),
        "ID".into(),
        "Address".into(),
        "State".into(),
        "Voter".into(),
    ]];
    for server in configuration
        .get("Servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let leader = server
            .get("Leader")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        rows.push(vec![
            text(server, "Node"),
            text(server, "ID"),
            text(server, "Address"),
            if leader {
                "leader".into()
            } else {
                "follower".into()
            },
            text(server, "Voter"),
        ]);
    }
    print_table(rows);
    Ok(())
}

/// `atoll completion SHELL`: the completion script of every command and flag.
pub fn completion(shell: CompletionShell) -> anyhow::Result<()> {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = <crate::config::Cli as clap::CommandFactory>::command();
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "atoll", &mut stdout);
    std::io::Write::flush(&mut stdout)?;
    Ok(())
}

/// `atoll leave`.
pub async fn leave(args: &ClientArgs) -> anyhow::Result<()> {
    request(args, "PUT", "/v1/agent/leave").await?;
    println!("Graceful leave complete");
    Ok(())
}

/// `atoll force-leave NODE`.
pub async fn force_leave(args: &ClientArgs, node: &str) -> anyhow::Result<()> {
    if node.is_empty() || node.contains('/') {
        bail!("invalid node name {node:?}");
    }
    request(args, "PUT", &format!("/v1/agent/force-leave/{node}")).await?;
    println!("Node {node} removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datacenter_is_added_to_the_query() {
        assert_eq!(
            for_datacenter("/v2/apps", "dc2").unwrap(),
            "/v2/apps?dc=dc2"
        );
        assert_eq!(
            for_datacenter("/v2/apps/a?force=true", "dc-2").unwrap(),
            "/v2/apps/a?force=true&dc=dc-2"
        );
        assert!(for_datacenter("/v2/apps", "dc2&x=1").is_err());
    }

    #[test]
    fn wan_members_are_listed_as_consul_lists_them() {
        let members = serde_json::json!([{
            "Name": "s1.dc2", "Addr": "127.0.0.2", "Port": 8302, "Status": 1,
            "Tags": {"role": "consul", "dc": "dc2", "build": "0.1.0", "vsn": "2"}
        }]);
        let rows = wan_rows(&members);
        assert_eq!(
            rows[0],
            ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
        );
        assert_eq!(
            rows[1],
            [
                "s1.dc2",
                "127.0.0.2:8302",
                "alive",
                "server",
                "0.1.0",
                "2",
                "dc2"
            ]
        );
    }

    #[test]
    fn colours_take_no_width_in_a_table() {
        let red = paint("3", Colour::Red, true);
        assert_ne!(red, "3");
        assert_eq!(visible_width(&red), 1);
        assert_eq!(paint("3", Colour::Red, false), "3");
    }

    #[test]
    fn keyrings_are_listed_by_pool() {
        let entries = serde_json::json!([
            {"WAN": true, "Datacenter": "dc1", "Keys": {"K1": 2, "K2": 1},
             "PrimaryKeys": {"K1": 2}, "NumNodes": 2},
            {"WAN": false, "Datacenter": "dc1", "Keys": {"K1": 1},
             "PrimaryKeys": {"K1": 1}, "NumNodes": 1},
        ]);
        assert_eq!(
            keyring_listing(&entries),
            "\nWAN:\n  K1 [2/2] (primary)\n  K2 [1/2]\n\ndc1 (LAN):\n  K1 [1/1] (primary)\n"
        );
    }

    #[test]
    fn join_addresses_are_one_path_segment() {
        assert_eq!(path_segment("127.0.0.1:8302"), "127.0.0.1:8302");
        assert_eq!(path_segment("[::1]:8302"), "%5B::1%5D:8302");
        assert_eq!(path_segment("a/b"), "a%2Fb");
    }
}
