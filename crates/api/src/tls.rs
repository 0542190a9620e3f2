//! How the API asks for the node's TLS files to be read again (`PUT /v1/agent/reload`).
//! The files themselves are read by `atoll-tls`; the binary's reload task owns them.

use tokio::sync::{mpsc, oneshot};

/// A reload asked for through the API, answered with its outcome.
type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Asks the owner of the TLS settings to read the files again (`PUT /v1/agent/reload`).
#[derive(Debug, Clone)]
pub struct TlsReload(mpsc::Sender<ReloadRequest>);

impl TlsReload {
    /// A handle, and what its owner receives the requests on.
    pub fn channel() -> (Self, mpsc::Receiver<ReloadRequest>) {
        let (sender, receiver) = mpsc::channel(4);
        (TlsReload(sender), receiver)
    }

    /// Reloads; the error says why the files were not taken (the old ones stay).
    pub async fn reload(&self) -> Result<(), String> {
        let (answer, outcome) = oneshot::channel();
        self.0
            .send(answer)
            .await
            .map_err(|_| "the TLS settings are not held by anyone".to_string())?;
        outcome
            .await
            .map_err(|_| "the TLS settings are not held by anyone".to_string())?
    }
}

#[cfg(test)]
mod tests;
