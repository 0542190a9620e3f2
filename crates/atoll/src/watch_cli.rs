//! `atoll watch`: follows one view with blocking queries, as `consul watch` does. The
//! handler (`sh -c`, the JSON on its standard input, `CONSUL_INDEX` in its environment) runs
//! once at the start and again each time the index moves and the answer differs; without a
//! handler the JSON is printed. SIGINT or SIGTERM stops it (a running handler is killed).

use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::cli::{get_indexed, Indexed};
use crate::config::{WatchArgs, WatchKind};
use crate::lock_cli::escape;

/// How long one blocking query waits at the agent.
const BLOCK_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between attempts while the agent cannot be reached.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// What is watched: the endpoint and what a 404 means there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    /// The path, with its query, without `index`/`wait`.
    path: String,
    /// The answer standing for a 404 (a missing key is `null`, an empty prefix `[]`).
    absent: Value,
    /// Whether a key view hands its one entry rather than the list.
    single: bool,
}

/// The view `args` asks for; flags that do not belong to the type are refused by name.
fn view(args: &WatchArgs) -> anyhow::Result<View> {
    let named = |flag: &str, value: &Option<String>, wanted: bool| -> anyhow::Result<()> {
        if value.is_some() && !wanted {
            bail!("{flag} does not apply to --type {}", kind_name(args.kind));
        }
        Ok(())
    };
    named("--key", &args.key, args.kind == WatchKind::Key)?;
    named("--prefix", &args.prefix, args.kind == WatchKind::Keyprefix)?;
    named(
        "--service",
        &args.service,
        matches!(args.kind, WatchKind::Service | WatchKind::Checks),
    )?;
    named("--tag", &args.tag, args.kind == WatchKind::Service)?;
    named("--state", &args.state, args.kind == WatchKind::Checks)?;
    if args.passingonly && args.kind != WatchKind::Service {
        bail!(
            "--passingonly does not apply to --type {}",
            kind_name(args.kind)
        );
    }
    let required = |flag: &str, value: &Option<String>| -> anyhow::Result<String> {
        value
            .clone()
            .ok_or_else(|| anyhow!("--type {} needs {flag}", kind_name(args.kind)))
    };
    let name = |flag: &str, value: String| -> anyhow::Result<String> {
        if value.is_empty() || value.contains('/') {
            bail!("{flag} {value:?} is not a name (it must not be empty or hold '/')");
        }
        Ok(escape(&value))
    };
    let kv = |flag: &str, value: String| -> anyhow::Result<String> {
        if value.starts_with('/') {
            bail!("{flag} {value:?} must not begin with a '/'");
        }
        Ok(escape(&value))
    };
    let view = |path: String, absent: Value, single: bool| View {
        path,
        absent,
        single,
    };
    Ok(match args.kind {
        WatchKind::Key => {
            let key = kv("--key", required("--key", &args.key)?)?;
            if key.is_empty() {
                bail!("--key must not be empty");
            }
            view(format!("/v1/kv/{key}"), Value::Null, true)
        }
        WatchKind::Keyprefix => view(
            format!(
                "/v1/kv/{}?recurse",
                kv("--prefix", required("--prefix", &args.prefix)?)?
            ),
            Value::Array(Vec::new()),
            false,
        ),
        WatchKind::Services => view("/v1/catalog/services".into(), Value::Null, false),
        WatchKind::Nodes => view("/v1/catalog/nodes".into(), Value::Null, false),
        WatchKind::Service => {
            let mut path = format!(
                "/v1/health/service/{}",
                name("--service", required("--service", &args.service)?)?
            );
            let mut query = Vec::new();
            if let Some(tag) = &args.tag {
                query.push(format!("tag={}", escape(tag).replace('/', "%2F")));
            }
            if args.passingonly {
                query.push("passing".to_string());
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            view(path, Value::Array(Vec::new()), false)
        }
        WatchKind::Checks => match &args.service {
            Some(service) => view(
                format!("/v1/health/checks/{}", name("--service", service.clone())?),
                Value::Array(Vec::new()),
                false,
            ),
            None => {
                let state = args.state.as_deref().unwrap_or("any");
                if !matches!(state, "any" | "passing" | "warning" | "critical") {
                    bail!("--state {state:?} is not one of any, passing, warning, critical");
                }
                view(
                    format!("/v1/health/state/{state}"),
                    Value::Array(Vec::new()),
                    false,
                )
            }
        },
    })
}

fn kind_name(kind: WatchKind) -> &'static str {
    match kind {
        WatchKind::Key => "key",
        WatchKind::Keyprefix => "keyprefix",
        WatchKind::Services => "services",
        WatchKind::Service => "service",
        WatchKind::Nodes => "nodes",
        WatchKind::Checks => "checks",
    }
}

/// The result a handler is given for an answer.
fn result_of(view: &View, answer: Indexed) -> Value {
    match answer.body {
        None => view.absent.clone(),
        Some(Value::Array(mut entries)) if view.single => {
            if entries.is_empty() {
                Value::Null
            } else {
                entries.swap_remove(0)
            }
        }
        Some(body) => body,
    }
}

/// What the watch does with a new result.
#[derive(Debug, Default)]
struct Follower {
    /// The index of the last answer (0 before the first).
    index: u64,
    /// The last result handed on.
    last: Option<Value>,
}

impl Follower {
    /// Takes an answer at `index`; answers the result to hand on, if it is new. As Consul's
    /// watch: an unchanged index is no change, an index that went back starts over, and an
    /// answer equal to the last one is not handed on again.
    fn take(&mut self, index: u64, result: Value) -> Option<Value> {
        if self.last.is_some() && index == self.index {
            return None;
        }
        self.index = index;
        if self.last.as_ref() == Some(&result) {
            return None;
        }
        self.last = Some(result.clone());
        Some(result)
    }

    /// The `index`/`wait` of the next query.
    fn query(&self, path: &str) -> String {
        let separator = if path.contains('?') { '&' } else { '?' };
        if self.last.is_none() {
            return path.to_string();
        }
        format!(
            "{path}{separator}index={}&wait={}s",
            self.index,
            BLOCK_WAIT.as_secs()
        )
    }
}

/// Runs `atoll watch`.
pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let view = view(&args)?;
    let handler = args.handler.join(" ");
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    let mut follower = Follower::default();
    let mut pause = Duration::from_millis(250);
    // The query may wait BLOCK_WAIT plus Consul's jitter of up to a sixteenth.
    let timeout = BLOCK_WAIT + BLOCK_WAIT / 16 + Duration::from_secs(10);
    loop {
        let path = follower.query(&view.path);
        let answer = tokio::select! {
            answer = get_indexed(&args.client, &path, timeout) => answer,
            () = &mut shutdown => return Ok(ExitCode::SUCCESS),
        };
        let answer = match answer {
            Ok(answer) => answer,
            // Without a first answer there is nothing to watch: say why and stop.
            Err(e) if follower.last.is_none() => return Err(e),
            Err(e) => {
                eprintln!(
                    "atoll watch: {e:#}; trying again in {}ms",
                    pause.as_millis()
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut shutdown => return Ok(ExitCode::SUCCESS),
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
                continue;
            }
        };
        pause = Duration::from_millis(250);
        let index = answer.index;
        if index < follower.index {
            follower.index = 0;
        }
        let Some(result) = follower.take(index, result_of(&view, answer)) else {
            continue;
        };
        let json = serde_json::to_vec_pretty(&result)?;
        if handler.is_empty() {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&json)?;
            stdout.write_all(b"\n")?;
            stdout.flush()?;
            continue;
        }
        tokio::select! {
            ran = run_handler(&handler, &json, index) => {
                if let Err(e) = ran {
                    eprintln!("atoll watch: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            () = &mut shutdown => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Runs the handler with `json` on its standard input; an error when it cannot start or
/// exits unsuccessfully (the watch then stops, as Consul's does). Dropping the future kills
/// the handler.
async fn run_handler(handler: &str, json: &[u8], index: u64) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(handler)
        .env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the handler {handler:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input closes the pipe early; that is its choice.
        let _ = stdin.write_all(json).await;
        let _ = stdin.write_all(b"\n").await;
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("waiting for the handler {handler:?}"))?;
    if !status.success() {
        bail!("the handler {handler:?} failed ({status}); stopping the watch");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, CommandLine};
    use clap::Parser;
    use serde_json::json;

    fn parsed(args: &[&str]) -> WatchArgs {
        let mut all = vec!["atoll", "watch"];
        all.extend(args);
        match Cli::try_parse_from(all).unwrap().command {
            CommandLine::Watch(args) => args,
            other => panic!("not a watch: {other:?}"),
        }
    }

    #[test]
    fn each_type_reads_its_endpoint() {
        assert_eq!(
            view(&parsed(&["--type", "key", "--key", "a b/c"]))
                .unwrap()
                .path,
            "/v1/kv/a%20b/c"
        );
        assert_eq!(
            view(&parsed(&["--type", "keyprefix", "--prefix", "app/"]))
                .unwrap()
                .path,
            "/v1/kv/app/?recurse"
        );
        assert_eq!(
            view(&parsed(&["--type", "service", "--service", "web"]))
                .unwrap()
                .path,
            "/v1/health/service/web"
        );
        assert_eq!(
            view(&parsed(&["--type", "checks"])).unwrap().path,
            "/v1/health/state/any"
        );
        assert_eq!(
            view(&parsed(&[
                "--type",
                "service",
                "--service",
                "web",
                "--tag",
                "v 1",
                "--passingonly"
            ]))
            .unwrap()
            .path,
            "/v1/health/service/web?tag=v%201&passing"
        );
        assert_eq!(
            view(&parsed(&["--type", "checks", "--state", "critical"]))
                .unwrap()
                .path,
            "/v1/health/state/critical"
        );
        assert!(view(&parsed(&["--type", "checks", "--state", "bad"])).is_err());
        assert!(view(&parsed(&["--type", "nodes", "--passingonly"])).is_err());
        let handler = parsed(&["--type", "nodes", "cat", "-n"]);
        assert_eq!(handler.handler, ["cat", "-n"]);
    }

    #[test]
    fn missing_and_misplaced_flags_are_named() {
        let error = view(&parsed(&["--type", "key"])).unwrap_err().to_string();
        assert!(error.contains("--key"), "{error}");
        let error = view(&parsed(&["--type", "nodes", "--prefix", "x"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--prefix"), "{error}");
    }

    #[test]
    fn a_result_is_handed_on_at_start_and_when_it_changes() {
        let mut follower = Follower::default();
        assert_eq!(follower.query("/v1/catalog/nodes"), "/v1/catalog/nodes");
        assert_eq!(follower.take(5, json!([1])), Some(json!([1])));
        assert_eq!(
            follower.query("/v1/kv/a?recurse"),
            "/v1/kv/a?recurse&index=5&wait=60s"
        );
        // Same index: the wait ended without a change.
        assert_eq!(follower.take(5, json!([1])), None);
        // The index moved but the answer is the same (another key changed).
        assert_eq!(follower.take(7, json!([1])), None);
        assert_eq!(follower.index, 7);
        assert_eq!(follower.take(8, json!([2])), Some(json!([2])));
    }

    #[test]
    fn a_missing_key_is_null_and_a_key_is_its_entry() {
        let key = View {
            path: "/v1/kv/a".into(),
            absent: Value::Null,
            single: true,
        };
        let none = Indexed {
            index: 3,
            body: None,
        };
        assert_eq!(result_of(&key, none), Value::Null);
        let one = Indexed {
            index: 3,
            body: Some(json!([{"Key": "a"}])),
        };
        assert_eq!(result_of(&key, one), json!({"Key": "a"}));
    }
}
