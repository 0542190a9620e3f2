//! `atoll app ...`: deploy and manage apps through the Marathon API, for people.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cli::{colour_on_stdout, print_table, request_with_body, text, HttpFailure};
use crate::config::{AppCommand, ClientArgs};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(300);

/// Runs an `atoll app` subcommand.
pub async fn run(command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::Deploy {
            file,
            force,
            timeout,
            client,
        } => deploy(&client.into_client(), &file, force, timeout).await,
        AppCommand::List { client } => list(&client.into_client()).await,
        AppCommand::Show { id, client } => show(&client.into_client(), &id).await,
        AppCommand::Scale {
            id,
            instances,
            timeout,
            client,
        } => {
            let client = client.into_client();
            let body = serde_json::to_vec(&json!({ "instances": instances }))?;
            let (_, answer) = request_with_body(
                &client,
                "PUT",
                &format!("/v2/apps{}", absolute(&id)),
                Some(body),
            )
            .await?;
            follow(&client, &absolute(&id), &answer, timeout, false).await
        }
        AppCommand::Restart {
            id,
            timeout,
            client,
        } => {
            let client = client.into_client();
            let (_, answer) = request_with_body(
                &client,
                "POST",
                &format!("/v2/apps{}/restart", absolute(&id)),
                None,
            )
            .await?;
            follow(&client, &absolute(&id), &answer, timeout, false).await
        }
        AppCommand::Destroy {
            id,
            timeout,
            client,
        } => {
            let client = client.into_client();
            let (_, answer) = request_with_body(
                &client,
                "DELETE",
                &format!("/v2/apps{}", absolute(&id)),
                None,
            )
            .await?;
            follow(&client, &absolute(&id), &answer, timeout, true).await
        }
    }
}

fn absolute(id: &str) -> String {
    format!("/{}", id.trim_matches('/'))
}

async fn deploy(
    client: &ClientArgs,
    file: &std::path::Path,
    force: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let definition: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let id = definition
        .get("id")
        .and_then(Value::as_str)
        .map(absolute)
        .ok_or_else(|| anyhow!("{}: the app definition needs an \"id\"", file.display()))?;
    let body = serde_json::to_vec(&definition)?;
    let answer = match request_with_body(client, "POST", "/v2/apps", Some(body.clone())).await {
        Ok((_, created)) => {
            let deployment = created
                .get("deployments")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .and_then(|d| d.get("id"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({ "deploymentId": deployment, "version": created.get("version").cloned().unwrap_or(Value::Null) })
        }
        Err(e)
            if e.downcast_ref::<HttpFailure>()
                .is_some_and(|f| f.status == 409) =>
        {
            let force = if force { "?force=true" } else { "" };
            request_with_body(client, "PUT", &format!("/v2/apps{id}{force}"), Some(body))
                .await?
                .1
        }
        Err(e) => return Err(e),
    };
    follow(client, &id, &answer, timeout, false).await
}

/// Shows progress until the deployment in `answer` is done; fails with the reason when a
/// task of the new version fails or nothing can be placed.
async fn follow(
    client: &ClientArgs,
    id: &str,
    answer: &Value,
    timeout: u64,
    destroying: bool,
) -> anyhow::Result<()> {
    let deployment = answer
        .get("deploymentId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let version = answer
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if client.json {
        println!("{}", serde_json::to_string(answer)?);
    } else {
        println!("deployment {deployment} of {id} (version {version})");
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut progress = Progress::new(client.json);
    let mut unplaced_since: Option<Instant> = None;
    loop {
        let (_, deployments) = request_with_body(client, "GET", "/v2/deployments", None).await?;
        let active = deployments.as_array().is_some_and(|list| {
            list.iter()
                .any(|d| d.get("id").and_then(Value::as_str) == Some(deployment.as_str()))
        });
        let app = match request_with_body(client, "GET", &format!("/v2/apps{id}"), None).await {
            Ok((_, app)) => Some(app["app"].clone()),
            Err(e)
                if e.downcast_ref::<HttpFailure>()
                    .is_some_and(|f| f.status == 404) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        progress.show(&Summary::of(app.as_ref(), &version));
        if !active && (!destroying || app.is_none()) {
            progress.finish();
            if !client.json {
                println!("deployment finished");
            }
            return Ok(());
        }
        if let Some(failure) = app
            .as_ref()
            .and_then(|a| a.get("lastTaskFailure"))
            .filter(|f| !f.is_null())
        {
            if text(failure, "version") == version && !version.is_empty() {
                progress.finish();
                bail!(
                    "deployment failed: task {} {}: {}",
                    text(failure, "taskId"),
                    text(failure, "state"),
                    text(failure, "message")
                );
            }
        }
        let (_, queue) = request_with_body(client, "GET", "/v2/queue", None).await?;
        let waiting = queue["queue"].as_array().and_then(|items| {
            items
                .iter()
                .find(|item| item["app"]["id"].as_str() == Some(id))
                .cloned()
        });
        match waiting {
            Some(item) => {
                let since = *unplaced_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    progress.finish();
                    let reasons: Vec<String> = item["processedOffersSummary"]
                        ["rejectSummaryLastOffers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect();
                    bail!(
                        "deployment cannot progress: {} instance(s) cannot be placed: {}",
                        item["count"],
                        reasons.join("; ")
                    );
                }
            }
            None => unplaced_since = None,
        }
        if Instant::now() > deadline {
            progress.finish();
            bail!("deployment {deployment} still running after {timeout}s (see `atoll app show {id}`)");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The instances of one version of an app.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct VersionCount {
    version: String,
    /// Tasks running.
    running: usize,
    /// Running tasks whose health checks all pass.
    healthy: usize,
    /// Tasks not running yet (staging, starting).
    starting: usize,
}

/// Where a deployment stands: the app's instances by version.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Summary {
    /// Whether the app still exists.
    exists: bool,
    /// The instances wanted.
    wanted: u64,
    /// Whether the app has health checks (else a running instance counts as ready).
    checked: bool,
    /// The deployed version's instances.
    new: VersionCount,
    /// Every other version's, oldest version first.
    old: Vec<VersionCount>,
}

impl Summary {
    /// Counts the tasks of `app` (as `GET /v2/apps/ID` answers it; `None`: removed) against
    /// the version being deployed.
    fn of(app: Option<&Value>, version: &str) -> Summary {
        let Some(app) = app else {
            return Summary::default();
        };
        let mut new = VersionCount {
            version: version.to_string(),
            ..VersionCount::default()
        };
        let mut old: std::collections::BTreeMap<String, VersionCount> = Default::default();
        for task in app["tasks"].as_array().into_iter().flatten() {
            let task_version = text(task, "version");
            let count = if task_version == version {
                &mut new
            } else {
                old.entry(task_version.clone())
                    .or_insert_with(|| VersionCount {
                        version: task_version,
                        ..VersionCount::default()
                    })
            };
            if task["state"] == "TASK_RUNNING" {
                count.running += 1;
                let results = task["healthCheckResults"].as_array();
                if results.is_some_and(|r| !r.is_empty() && r.iter().all(|h| h["alive"] == true)) {
                    count.healthy += 1;
                }
            } else {
                count.starting += 1;
            }
        }
        Summary {
            exists: true,
            wanted: app["instances"].as_u64().unwrap_or(0),
            checked: app["healthChecks"]
                .as_array()
                .is_some_and(|c| !c.is_empty()),
            new,
            old: old.into_values().collect(),
        }
    }

    /// New instances ready: healthy, or running when the app has no health checks.
    fn ready(&self) -> u64 {
        let ready = if self.checked {
            self.new.healthy
        } else {
            self.new.running
        };
        ready as u64
    }

    /// One line per version.
    fn lines(&self) -> Vec<String> {
        if !self.exists {
            return vec!["  app removed".to_string()];
        }
        let line = |label: &str, count: &VersionCount| {
            let mut line = format!(
                "  {label} {}: {} running, {} healthy",
                count.version, count.running, count.healthy
            );
            if count.starting > 0 {
                line.push_str(&format!(", {} starting", count.starting));
            }
            line
        };
        let mut lines = vec![format!(
            "{} of {} wanted instances of the new version ready",
            self.ready(),
            self.wanted
        )];
        lines.push(line("new", &self.new));
        lines.extend(self.old.iter().map(|count| line("old", count)));
        lines
    }
}

/// How a deployment's progress is shown: a live display on a terminal, a line per change
/// elsewhere, nothing with `--json`.
enum Progress {
    Live(indicatif::ProgressBar, Summary),
    Lines(Vec<String>),
    Quiet,
}

impl Progress {
    fn new(json: bool) -> Progress {
        use std::io::IsTerminal;
        if json {
            return Progress::Quiet;
        }
        if !std::io::stdout().is_terminal() {
            return Progress::Lines(Vec::new());
        }
        let template = if colour_on_stdout() {
            "{spinner:.cyan} [{bar:30.green/white}] {pos}/{len} ready  {elapsed}\n{msg}"
        } else {
            "{spinner} [{bar:30}] {pos}/{len} ready  {elapsed}\n{msg}"
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stdout(),
        )
        .with_style(style);
        Progress::Live(bar, Summary::default())
    }

    fn show(&mut self, summary: &Summary) {
        match self {
            Progress::Live(bar, last) => {
                bar.set_length(summary.wanted);
                bar.set_position(summary.ready().min(summary.wanted));
                bar.set_message(summary.lines()[1..].join("\n"));
                // Ticking (drawing) starts once there is something to draw.
                if !last.exists && summary.exists {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                *last = summary.clone();
            }
            Progress::Lines(last) => {
                let lines = summary.lines();
                if lines != *last {
                    for line in &lines {
                        println!("{line}");
                    }
                    *last = lines;
                }
            }
            Progress::Quiet => {}
        }
    }

    /// Ends a live display, leaving where it stood as plain lines.
    fn finish(&mut self) {
        if let Progress::Live(bar, last) = self {
            bar.finish_and_clear();
            for line in last.lines() {
                println!("{line}");
            }
        }
        *self = Progress::Quiet;
    }
}

async fn list(client: &ClientArgs) -> anyhow::Result<()> {
    let (_, apps) = request_with_body(client, "GET", "/v2/apps", None).await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "ID".into(),
        "RUNNING".into(),
        "HEALTHY".into(),
        "CPUS".into(),
        "MEM".into(),
        "VERSION".into(),
    ]];
    for app in apps["apps"].as_array().into_iter().flatten() {
        rows.push(vec![
            text(app, "id"),
            format!("{}/{}", app["tasksRunning"], app["instances"]),
            text(app, "tasksHealthy"),
            text(app, "cpus"),
            text(app, "mem"),
            text(app, "version"),
        ]);
    }
    print_table(rows);
    Ok(())
}

async fn show(client: &ClientArgs, id: &str) -> anyhow::Result<()> {
    let (_, answer) =
        request_with_body(client, "GET", &format!("/v2/apps{}", absolute(id)), None).await?;
    let app = &answer["app"];
    if client.json {
        println!("{}", serde_json::to_string_pretty(app)?);
        return Ok(());
    }
    println!("id:        {}", text(app, "id"));
    println!("version:   {}", text(app, "version"));
    println!(
        "instances: {} ({} running, {} healthy)",
        app["instances"], app["tasksRunning"], app["tasksHealthy"]
    );
    if let Some(image) = app["container"]["docker"]["image"].as_str() {
        println!("image:     {image}");
    } else {
        println!("cmd:       {}", text(app, "cmd"));
    }
    if let Some(failure) = app.get("lastTaskFailure").filter(|f| !f.is_null()) {
        println!(
            "last failure: {} {} {}",
            text(failure, "taskId"),
            text(failure, "state"),
            text(failure, "message")
        );
    }
    let mut rows = vec![vec![
        "TASK".into(),
        "HOST".into(),
        "PORTS".into(),
        "STATE".into(),
        "STARTED".into(),
    ]];
    for task in app["tasks"].as_array().into_iter().flatten() {
        rows.push(vec![
            text(task, "id"),
            text(task, "host"),
            task["ports"].to_string(),
            text(task, "state"),
            text(task, "startedAt"),
        ]);
    }
    print_table(rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_counted_by_version() {
        let app = json!({
            "instances": 3,
            "healthChecks": [{"protocol": "HTTP"}],
            "tasks": [
                {"version": "v2", "state": "TASK_RUNNING",
                 "healthCheckResults": [{"alive": true}]},
                {"version": "v2", "state": "TASK_RUNNING",
                 "healthCheckResults": [{"alive": false}]},
                {"version": "v2", "state": "TASK_STAGING", "healthCheckResults": []},
                {"version": "v1", "state": "TASK_RUNNING",
                 "healthCheckResults": [{"alive": true}]},
            ]
        });
        let summary = Summary::of(Some(&app), "v2");
        assert_eq!(summary.ready(), 1);
        assert_eq!(
            summary.lines(),
            [
                "1 of 3 wanted instances of the new version ready",
                "  new v2: 2 running, 1 healthy, 1 starting",
                "  old v1: 1 running, 1 healthy",
            ]
        );
        let unchecked =
            json!({"instances": 1, "tasks": [{"version": "v2", "state": "TASK_RUNNING"}]});
        assert_eq!(Summary::of(Some(&unchecked), "v2").ready(), 1);
        assert_eq!(Summary::of(None, "v2").lines(), ["  app removed"]);
    }
}
