//! The one error type of the drivers.

/// Why a driver could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The task spec cannot be run by this driver as given.
    #[error("invalid task {task_id}: {reason}")]
    InvalidSpec {
        /// The task that was asked for.
        task_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A task with this id is already running on this driver.
    #[error("task {task_id} is already running")]
    AlreadyRunning {
        /// The task that was asked for.
        task_id: String,
    },
    /// The task is not running on this driver.
    #[error("task {task_id} is not running here")]
    NotRunning {
        /// The task that was asked for.
        task_id: String,
    },
    /// The image is not on the node and pulling it failed.
    #[error("image {image} not found locally and could not be pulled: {reason}")]
    ImageUnavailable {
        /// The image reference as given in the spec.
        image: String,
        /// The pull's error, or a timeout.
        reason: String,
    },
    /// The task was prepared but did not start.
    #[error("task {task_id} failed to start: {reason}")]
    StartFailed {
        /// The task that was asked for.
        task_id: String,
        /// The runtime's own explanation.
        reason: String,
    },
    /// A call to the Docker Engine failed.
    #[error("docker engine: {context}: {source}")]
    Docker {
        /// What the driver was doing.
        context: String,
        /// The engine's or the connection's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the driver was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    pub(crate) fn docker(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        DriverError::Docker {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            context: context.into(),
            source,
        }
    }
}
