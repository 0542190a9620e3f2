//! What an exec task leaves in its sandbox so that a later agent can adopt it: the record
//! of the process (`task.json`) and, once the task's shell has ended, its exit status
//! (`exit_status`, written by the wrapper shell).

use super::process::ProcessIdentity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The record of a running task, in its sandbox.
pub(crate) const RECORD_FILE: &str = "task.json";
/// The exit status of the task's shell, a decimal number, in its sandbox.
pub(crate) const EXIT_STATUS_FILE: &str = "exit_status";
/// The record format this agent writes and reads.
const FORMAT: u32 = 1;

/// Everything needed to adopt a task: who it is and how to recognise its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRecord {
    /// Format marker; a record of another format is left alone.
    pub format: u32,
    /// The task's id (the sandbox name is only its sanitized form).
    pub task_id: String,
    /// The app it belongs to.
    pub app_id: String,
    /// The app version it runs.
    pub app_version: String,
    /// The wrapper shell's pid, which is also the task's process group id.
    pub process_group: i32,
    /// The wrapper shell's start time, in clock ticks after boot.
    pub start_time: u64,
    /// The boot the task started in.
    pub boot_id: String,
    /// The environment the task was given (commands run in the task get it too).
    pub env: BTreeMap<String, String>,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The record's path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("{path} is not a task record: {source}")]
    Invalid {
        /// The record's path.
        path: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The record is in a format this agent does not know (written by a newer one).
    #[error("{path} has record format {format}; this agent reads format {FORMAT}")]
    UnknownFormat {
        /// The record's path.
        path: String,
        /// The format it carries.
        format: u32,
    },
}

impl TaskRecord {
    /// A record in the current format.
    pub fn new(
        task_id: &str,
        app_id: &str,
        app_version: &str,
        identity: &ProcessIdentity,
        env: BTreeMap<String, String>,
    ) -> TaskRecord {
        TaskRecord {
            format: FORMAT,
            task_id: task_id.to_string(),
            app_id: app_id.to_string(),
            app_version: app_version.to_string(),
            process_group: identity.process_group,
            start_time: identity.start_time,
            boot_id: identity.boot_id.clone(),
            env,
        }
    }

    /// The process this record names.
    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            process_group: self.process_group,
            start_time: self.start_time,
            boot_id: self.boot_id.clone(),
        }
    }

    /// Writes the record into `sandbox`, readable by the agent's user only (the environment
    /// may hold secrets). Written aside and renamed, so a crash never leaves half a record.
    pub fn write(&self, sandbox: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let temporary = sandbox.join(format!("{RECORD_FILE}.new"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, sandbox.join(RECORD_FILE))
    }

    /// Reads the record of `sandbox`; `None` when it has none.
    pub fn read(sandbox: &Path) -> Result<Option<TaskRecord>, RecordError> {
        let path = sandbox.join(RECORD_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        #[derive(Deserialize)]
        struct Marker {
            format: u32,
        }
        let invalid = |source| RecordError::Invalid {
            path: path.display().to_string(),
            source,
        };
        let marker: Marker = serde_json::from_slice(&text).map_err(invalid)?;
        if marker.format != FORMAT {
            return Err(RecordError::UnknownFormat {
                path: path.display().to_string(),
                format: marker.format,
            });
        }
        serde_json::from_slice(&text).map(Some).map_err(invalid)
    }

    /// Removes the record of `sandbox`, so no later agent adopts a task that has ended.
    pub fn remove(sandbox: &Path) {
        match std::fs::remove_file(sandbox.join(RECORD_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(sandbox = %sandbox.display(), %error, "cannot remove a task record")
            }
        }
    }
}

/// The exit status the wrapper shell recorded in `sandbox`, if it did.
pub(crate) fn read_exit_status(sandbox: &Path) -> Option<i32> {
    std::fs::read_to_string(sandbox.join(EXIT_STATUS_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TaskRecord {
        TaskRecord::new(
            "prod_web.instance-1",
            "/prod/web",
            "v1",
            &ProcessIdentity {
                process_group: 4242,
                start_time: 987654,
                boot_id: "boot".into(),
            },
            BTreeMap::from([("PORT0".to_string(), "31000".to_string())]),
        )
    }

    #[test]
    fn records_round_trip_and_are_private() {
        let sandbox = tempfile::tempdir().expect("temp dir");
        assert!(TaskRecord::read(sandbox.path()).expect("read").is_none());
        record().write(sandbox.path()).expect("write");
        assert_eq!(
            TaskRecord::read(sandbox.path()).expect("read"),
            Some(record())
        );
        let mode = std::fs::metadata(sandbox.path().join(RECORD_FILE))
            .expect("metadata")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        TaskRecord::remove(sandbox.path());
        assert!(TaskRecord::read(sandbox.path()).expect("read").is_none());
        // Removing twice is fine.
        TaskRecord::remove(sandbox.path());
    }

    #[test]
    fn other_formats_and_garbage_are_refused() {
        let sandbox = tempfile::tempdir().expect("temp dir");
        let path = sandbox.path().join(RECORD_FILE);
        std::fs::write(&path, r#"{"format": 2, "whatever": true}"#).expect("write");
        assert!(matches!(
            TaskRecord::read(sandbox.path()),
            Err(RecordError::UnknownFormat { format: 2, .. })
        ));
        std::fs::write(&path, "4242").expect("write");
        assert!(matches!(
            TaskRecord::read(sandbox.path()),
            Err(RecordError::Invalid { .. })
        ));
    }

    #[test]
    fn exit_status_is_read_when_recorded() {
        let sandbox = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_exit_status(sandbox.path()), None);
        std::fs::write(sandbox.path().join(EXIT_STATUS_FILE), "143\n").expect("write");
        assert_eq!(read_exit_status(sandbox.path()), Some(143));
    }
}
