//! `atoll lock PREFIX -- CMD ARGS...`: runs a command while holding a lock (or, with
//! `-n N`, one of N slots of a semaphore), with exactly the keys `consul lock` uses, so the
//! two contend for the same prefix:
//!
//! - a lock (`-n 1`): a session (behavior `release`) acquires `PREFIX/.lock` with the flags
//!   `0x2ddccbc058a50c18`;
//! - a semaphore: a session (behavior `delete`) acquires its contender key
//!   `PREFIX/<session>` (flags `0xe0f69a2baa414de0`), and `PREFIX/.lock` holds
//!   `{"Limit":N,"Holders":{"<session>":true,...}}`, changed only by check-and-set; holders
//!   whose contender key lost its session are pruned.
//!
//! The session is renewed every half TTL while the command runs. When the command ends, the
//! lock is released, the session destroyed, and `atoll lock` exits with the command's
//! status. If the lock is lost meanwhile (the session expired, the key changed hands), the
//! command is killed and the exit status is 1.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::agent_client::AgentClient;
use crate::config::LockArgs;

/// `consul lock`'s flags on the key of a lock (`api.LockFlagValue`).
pub const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;
/// `consul lock`'s flags on the keys of a semaphore (`api.SemaphoreFlagValue`).
pub const SEMAPHORE_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;
/// The coordination key under the prefix (`api.DefaultSemaphoreKey`).
const LOCK_KEY: &str = ".lock";
/// The session TTL `consul lock` asks for.
const SESSION_TTL: Duration = Duration::from_secs(15);
/// How long one blocking read waits.
const BLOCK_WAIT: &str = "15000ms";
/// Pause before trying again when the key is free but refused (its lock delay runs), as
/// `consul lock` does (`DefaultLockRetryTime`).
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(5);

/// An answer of the agent: status, `X-Consul-Index`, body.
struct Answer {
    status: u16,
    index: u64,
    body: Bytes,
}

#[derive(Clone)]
struct Agent {
    address: String,
    client: AgentClient,
}

impl Agent {
    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        let url = self.client.url(path);
        let request = self
            .client
            .request(method, &url)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| anyhow!("invalid address {:?}: {e}", self.address))?;
        let response =
            tokio::time::timeout(Duration::from_secs(60), self.client.client.request(request))
                .await
                .map_err(|_| anyhow!("{url}: no answer within 60s"))?
                .with_context(|| {
                    format!(
                        "cannot reach the agent at {} (is it running? see --http-addr)",
                        self.address
                    )
                })?;
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    /// A call that must succeed (2xx), answering its JSON body.
    async fn json(&self, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let answer = self.call(method, path, body).await?;
        if !(200..300).contains(&answer.status) {
            bail!(
                "{method} {path}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            );
        }
        Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null))
    }

    /// A KV read: the entries (none on 404) and the index.
    async fn kv_get(&self, key: &str, params: &str) -> anyhow::Result<(Vec<Value>, u64)> {
        let answer = self
            .call(
                "GET",
                &format!("/v1/kv/{}?{params}", escape(key)),
                Vec::new(),
            )
            .await?;
        match answer.status {
            404 => Ok((Vec::new(), answer.index)),
            200 => {
                let entries: Vec<Value> = serde_json::from_slice(&answer.body)
                    .with_context(|| format!("reading the entries of {key}"))?;
                Ok((entries, answer.index))
            }
            status => bail!(
                "reading {key}: {status} {}",
                String::from_utf8_lossy(&answer.body).trim()
            ),
        }
    }

    /// A KV write answering `true`/`false`.
    async fn kv_put(&self, key: &str, params: &str, value: Vec<u8>) -> anyhow::Result<bool> {
        let answer = self
            .json("PUT", &format!("/v1/kv/{}?{params}", escape(key)), value)
            .await?;
        Ok(answer == Value::Bool(true))
    }

    async fn kv_delete(&self, key: &str, params: &str) -> anyhow::Result<bool> {
        let answer = self
            .json(
                "DELETE",
                &format!("/v1/kv/{}?{params}", escape(key)),
                Vec::new(),
            )
            .await?;
        Ok(answer == Value::Bool(true))
    }
}

/// A key as a URL path: each segment escaped, the slashes kept.
pub(crate) fn escape(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text<'a>(entry: &'a Value, field: &str) -> &'a str {
    entry.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn number(entry: &Value, field: &str) -> u64 {
    entry.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// The checked input of `atoll lock`.
struct Plan {
    prefix: String,
    limit: u32,
    name: String,
    command: Vec<String>,
}

fn plan(args: &LockArgs) -> anyhow::Result<Plan> {
    let prefix = args.prefix.trim_matches('/').to_string();
    if prefix.is_empty() {
        bail!("a key prefix is required: atoll lock [-n N] PREFIX -- CMD ARGS...");
    }
    if args.command.is_empty() || args.command.iter().all(|a| a.trim().is_empty()) {
        bail!("a command to run is required: atoll lock [-n N] PREFIX -- CMD ARGS...");
    }
    if args.limit == 0 {
        bail!("-n must be at least 1 (1 is a lock, more a semaphore)");
    }
    let shown = args.command.join(" ");
    Ok(Plan {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("atoll lock for '{shown}' at '{prefix}'")),
        prefix,
        limit: args.limit,
        command: args.command.clone(),
    })
}

/// Runs `atoll lock`; the exit status is the command's.
pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    let agent = Agent {
        address: args.client.http_addr.clone(),
        client: AgentClient::new(&args.client)?,
    };
    let behavior = if plan.limit == 1 { "release" } else { "delete" };
    let created = agent
        .json(
            "PUT",
            "/v1/session/create",
            serde_json::to_vec(&json!({
                "Name": plan.name,
                "TTL": format!("{}s", SESSION_TTL.as_secs()),
                "Behavior": behavior,
            }))?,
        )
        .await
        .context("creating the session")?;
    let session = text(&created, "ID").to_string();
    if session.is_empty() {
        bail!("the agent answered no session id: {created}");
    }
    let result = hold_and_run(&agent, &plan, &session).await;
    // Whatever happened, the session goes: its keys are released (or deleted) with it.
    if let Err(e) = agent
        .json("PUT", &format!("/v1/session/destroy/{session}"), Vec::new())
        .await
    {
        eprintln!("atoll lock: could not destroy session {session}: {e:#}");
    }
    result
}

async fn hold_and_run(agent: &Agent, plan: &Plan, session: &str) -> anyhow::Result<ExitCode> {
    let (lost_tx, mut lost) = watch::channel(false);
    let renewer = tokio::spawn(renew(agent.clone(), session.to_string(), lost_tx.clone()));
    let acquired = tokio::select! {
        acquired = acquire(agent, plan, session) => acquired,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted while waiting for the lock")),
        _ = lost.wait_for(|lost| *lost) => Err(anyhow!("the session expired while waiting for the lock")),
    };
    if let Err(e) = acquired {
        renewer.abort();
        return Err(e);
    }
    let monitor = tokio::spawn(monitor(
        agent.clone(),
        plan.prefix.clone(),
        plan.limit,
        session.to_string(),
        lost_tx,
    ));
    let mut child = spawn_command(&plan.command)?;
    let code = tokio::select! {
        status = child.wait() => exit_code(status.context("waiting for the command")?),
        _ = lost.wait_for(|lost| *lost) => {
            eprintln!("atoll lock: lock lost; stopping the command");
            let _ = child.start_kill();
            let _ = child.wait().await;
            1
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            130
        }
    };
    monitor.abort();
    renewer.abort();
    if let Err(e) = release(agent, plan, session).await {
        eprintln!("atoll lock: could not release the lock: {e:#}");
    }
    Ok(ExitCode::from(code))
}

fn spawn_command(command: &[String]) -> anyhow::Result<tokio::process::Child> {
    let mut process = if command.len() == 1 {
        let mut shell = tokio::process::Command::new("sh");
        shell.arg("-c").arg(&command[0]);
        shell
    } else {
        let mut direct = tokio::process::Command::new(&command[0]);
        direct.args(&command[1..]);
        direct
    };
    process
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {:?}", command.join(" ")))
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Renews the session every half TTL; a 404 (expired) says the lock is lost.
async fn renew(agent: Agent, session: String, lost: watch::Sender<bool>) {
    let mut wait = SESSION_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        match agent
            .call("PUT", &format!("/v1/session/renew/{session}"), Vec::new())
            .await
        {
            Ok(answer) if answer.status == 404 => {
                let _ = lost.send(true);
                return;
            }
            Ok(answer) if answer.status == 200 => wait = SESSION_TTL / 2,
            // Try again soon: the session lives twice its TTL.
            _ => wait = Duration::from_secs(1),
        }
    }
}

async fn acquire(agent: &Agent, plan: &Plan, session: &str) -> anyhow::Result<()> {
    if plan.limit == 1 {
        acquire_lock(agent, &format!("{}/{LOCK_KEY}", plan.prefix), session).await
    } else {
        acquire_semaphore(agent, plan, session).await
    }
}

/// `api.Lock.Lock`: wait while another session holds the key, then acquire it.
async fn acquire_lock(agent: &Agent, key: &str, session: &str) -> anyhow::Result<()> {
    let mut index = 0;
    loop {
        let (entries, at) = agent
            .kv_get(key, &format!("index={index}&wait={BLOCK_WAIT}"))
            .await?;
        index = at;
        if let Some(entry) = entries.first() {
            if number(entry, "Flags") != LOCK_FLAG {
                bail!("existing key {key} does not match lock use (its flags are not a lock's)");
            }
            let holder = text(entry, "Session");
            if !holder.is_empty() && holder != session {
                continue; // Held: wait for a change.
            }
        }
        let params = format!("acquire={session}&flags={LOCK_FLAG}");
        if agent.kv_put(key, &params, Vec::new()).await? {
            return Ok(());
        }
        // Refused while free: the lock delay of a holder that went away runs.
        let (entries, _) = agent.kv_get(key, "").await?;
        let held = entries
            .first()
            .is_some_and(|e| !text(e, "Session").is_empty());
        if !held {
            tokio::time::sleep(RETRY_AFTER_REFUSAL).await;
        }
    }
}

/// The semaphore's coordination record, as `api.Semaphore` writes it.
fn decode_semaphore(
    entry: Option<&Value>,
    limit: u32,
) -> anyhow::Result<(u32, BTreeMap<String, bool>, u64)> {
    let Some(entry) = entry else {
        return Ok((limit, BTreeMap::new(), 0));
    };
    if number(entry, "Flags") != SEMAPHORE_FLAG {
        bail!(
            "existing key {} does not match semaphore use",
            text(entry, "Key")
        );
    }
    let value = base64::engine::general_purpose::STANDARD
        .decode(text(entry, "Value"))
        .unwrap_or_default();
    let record: Value = serde_json::from_slice(&value).context("reading the semaphore record")?;
    let found = record.get("Limit").and_then(Value::as_u64).unwrap_or(0);
    if found != u64::from(limit) {
        bail!("semaphore limit conflict (lock: {found}, local: {limit})");
    }
    let holders = record
        .get("Holders")
        .and_then(Value::as_object)
        .map(|h| h.keys().map(|k| (k.clone(), true)).collect())
        .unwrap_or_default();
    Ok((limit, holders, number(entry, "ModifyIndex")))
}

fn encode_semaphore(limit: u32, holders: &BTreeMap<String, bool>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "Limit": limit, "Holders": holders })).unwrap_or_default()
}

/// `api.Semaphore.Acquire`: a contender key, then a slot in the record by check-and-set.
async fn acquire_semaphore(agent: &Agent, plan: &Plan, session: &str) -> anyhow::Result<()> {
    let contender = format!("{}/{session}", plan.prefix);
    let lock_key = format!("{}/{LOCK_KEY}", plan.prefix);
    let params = format!("acquire={session}&flags={SEMAPHORE_FLAG}");
    if !agent.kv_put(&contender, &params, Vec::new()).await? {
        bail!("failed to make the contender entry {contender}");
    }
    let mut index = 0;
    loop {
        let (entries, at) = agent
            .kv_get(
                &format!("{}/", plan.prefix),
                &format!("recurse&index={index}&wait={BLOCK_WAIT}"),
            )
            .await?;
        index = at;
        let record = entries.iter().find(|e| text(e, "Key") == lock_key);
        let (limit, mut holders, modify_index) = decode_semaphore(record, plan.limit)?;
        // Holders whose contender key lost its session are gone.
        let alive: Vec<&str> = entries
            .iter()
            .map(|e| text(e, "Session"))
            .filter(|s| !s.is_empty())
            .collect();
        holders.retain(|holder, _| alive.contains(&holder.as_str()));
        if holders.len() >= limit as usize {
            continue;
        }
        holders.insert(session.to_string(), true);
        let params = format!("cas={modify_index}&flags={SEMAPHORE_FLAG}");
        if agent
            .kv_put(&lock_key, &params, encode_semaphore(limit, &holders))
            .await?
        {
            return Ok(());
        }
    }
}

/// Watches the lock while the command runs (consistent blocking reads); says when it is lost.
async fn monitor(
    agent: Agent,
    prefix: String,
    limit: u32,
    session: String,
    lost: watch::Sender<bool>,
) {
    let lock_key = format!("{prefix}/{LOCK_KEY}");
    let contender = format!("{prefix}/{session}");
    let mut index = 0;
    let mut failures = 0;
    loop {
        let read = if limit == 1 {
            agent
                .kv_get(
                    &lock_key,
                    &format!("consistent&index={index}&wait={BLOCK_WAIT}"),
                )
                .await
        } else {
            agent
                .kv_get(
                    &format!("{prefix}/"),
                    &format!("recurse&consistent&index={index}&wait={BLOCK_WAIT}"),
                )
                .await
        };
        let (entries, at) = match read {
            Ok(read) => read,
            Err(_) if failures < 3 => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                let _ = lost.send(true);
                return;
            }
        };
        failures = 0;
        index = at;
        let held = if limit == 1 {
            entries
                .first()
                .is_some_and(|e| text(e, "Session") == session)
        } else {
            let mine = entries
                .iter()
                .any(|e| text(e, "Key") == contender && text(e, "Session") == session);
            let record = entries.iter().find(|e| text(e, "Key") == lock_key);
            mine && decode_semaphore(record, limit).is_ok_and(|(_, h, _)| h.contains_key(&session))
        };
        if !held {
            let _ = lost.send(true);
            return;
        }
    }
}

/// Gives the lock (or the slot) back and removes what is no longer used, as `consul lock`
/// does on exit.
async fn release(agent: &Agent, plan: &Plan, session: &str) -> anyhow::Result<()> {
    let lock_key = format!("{}/{LOCK_KEY}", plan.prefix);
    if plan.limit == 1 {
        agent
            .kv_put(
                &lock_key,
                &format!("release={session}&flags={LOCK_FLAG}"),
                Vec::new(),
            )
            .await?;
        // `Lock.Destroy`: delete the key unless someone holds it meanwhile.
        let (entries, _) = agent.kv_get(&lock_key, "").await?;
        if let Some(entry) = entries.first() {
            if text(entry, "Session").is_empty() {
                let cas = number(entry, "ModifyIndex");
                agent.kv_delete(&lock_key, &format!("cas={cas}")).await?;
            }
        }
        return Ok(());
    }
    for _ in 0..10 {
        let (entries, _) = agent.kv_get(&lock_key, "").await?;
        let (limit, mut holders, modify_index) = decode_semaphore(entries.first(), plan.limit)?;
        if holders.remove(session).is_none() {
            break;
        }
        // The last holder out removes the record (`Semaphore.Destroy`).
        let done = if holders.is_empty() {
            agent
                .kv_delete(&lock_key, &format!("cas={modify_index}"))
                .await?
        } else {
            let params = format!("cas={modify_index}&flags={SEMAPHORE_FLAG}");
            agent
                .kv_put(&lock_key, &params, encode_semaphore(limit, &holders))
                .await?
        };
        if done {
            break;
        }
    }
    agent
        .kv_delete(&format!("{}/{session}", plan.prefix), "")
        .await?;
    Ok(())
}
