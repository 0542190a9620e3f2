//! The node's long-lived tasks, supervised in one place. A task that panics, or one that is
//! meant to run for the life of the process and returns, is reported here; the node then
//! stops with a non-zero status (a supervisor such as systemd or Docker restarts it, and the
//! restarted node adopts its tasks) instead of serving on without, say, its control loop.

use std::future::Future;

use tokio::sync::mpsc;

/// Spawns supervised tasks.
#[derive(Clone)]
pub struct Supervisor {
    failures: mpsc::UnboundedSender<String>,
}

/// What went wrong with a supervised task, one message per failure.
pub struct Failures(mpsc::UnboundedReceiver<String>);

impl Supervisor {
    /// A supervisor and the failures of the tasks it spawns.
    pub fn new() -> (Supervisor, Failures) {
        let (failures, receiver) = mpsc::unbounded_channel();
        (Supervisor { failures }, Failures(receiver))
    }

    /// Spawns a task that runs for the life of the process: its end is a failure.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, task, true);
    }

    /// Spawns a task that may end by itself (when what it serves goes away): only a panic is
    /// a failure.
    pub fn spawn_may_end<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, task, false);
    }

    fn watch<F>(&self, name: &'static str, task: F, ending_fails: bool)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let failures = self.failures.clone();
        tokio::spawn(async move {
            let failure = match handle.await {
                Ok(()) if ending_fails => format!("{name} ended"),
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    format!("{name} panicked: {}", panic_message(e.into_panic()))
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            let _ = failures.send(failure);
        });
    }
}

impl Failures {
    /// Waits for the next failure.
    pub async fn next(&mut self) -> String {
        match self.0.recv().await {
            Some(failure) => failure,
            // Every supervisor is gone, so nothing can fail any more.
            None => std::future::pending().await,
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panic_or_an_unexpected_end_is_reported_by_name() {
        let (supervisor, mut failures) = Supervisor::new();
        supervisor.spawn("control loop", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("boom");
        });
        assert_eq!(failures.next().await, "control loop panicked: boom");
        let id = 7;
        supervisor.spawn("node runner", async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("task {id} vanished");
        });
        assert_eq!(
            failures.next().await,
            "node runner panicked: task 7 vanished"
        );
        supervisor.spawn("rpc listener", async {});
        assert_eq!(failures.next().await, "rpc listener ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_may_end_fails_only_by_panicking() {
        let (supervisor, mut failures) = Supervisor::new();
        supervisor.spawn_may_end("registrator", async {});
        supervisor.spawn("forever", std::future::pending());
        let quiet = tokio::time::timeout(Duration::from_secs(3600), failures.next()).await;
        assert!(quiet.is_err(), "reported {quiet:?}");
        supervisor.spawn_may_end("registrator", async { panic!("lost") });
        assert_eq!(failures.next().await, "registrator panicked: lost");
    }
}
