//! The HTTPS listener's certificate, key and CA: read from PEM files at start, with errors
//! naming the flag of the file at fault, and read again on demand (SIGHUP) without a
//! restart. A reload that fails keeps what was loaded before; a reload that works is used
//! by the next handshake, while open connections go on with the one they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::{mpsc, oneshot, watch};

/// The TLS files of the HTTPS listener, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert-file`).
    pub cert_file: PathBuf,
    /// Its private key (`--tls-key-file`).
    pub key_file: PathBuf,
    /// The CA client certificates must be signed by (`--tls-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by the CA (`--verify-incoming`).
    pub verify_incoming: bool,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file holds nothing of what it should.
    #[error("{flag} {}: {what}", path.display())]
    Content {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key is not the certificate's.
    #[error(
        "--tls-key-file {} is not the key of the certificate in --tls-cert-file {}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the settings.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The crypto provider of every TLS connection atoll makes or accepts: ring, which the
/// workspace already builds (aws-lc-rs, whose post-quantum key exchange is what ring lacks,
/// needs a C toolchain at build time).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads certificates from a PEM file.
pub fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(content(flag, path, "holds no PEM certificate".to_string()));
    }
    Ok(certificates)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn read_private_key(
    flag: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| content(flag, path, format!("holds no PEM private key: {e}")))
}

/// The trust anchors in a CA file.
pub fn read_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(flag, path)? {
        roots
            .add(certificate)
            .map_err(|e| content(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn content(flag: &'static str, path: &Path, what: String) -> TlsError {
    TlsError::Content {
        flag,
        path: path.to_path_buf(),
        what,
    }
}

/// The server settings the files make: HTTP/1.1 over TLS 1.2 or 1.3, with a client
/// certificate required when `verify_incoming`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certificates("--tls-cert-file", &files.cert_file)?;
    let key = read_private_key("--tls-key-file", &files.key_file)?;
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match (&files.ca_file, files.verify_incoming) {
        (Some(ca_file), true) => {
            let roots = read_roots("--tls-ca-file", ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| content("--tls-ca-file", ca_file, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err(TlsError::Setup(
            "--verify-incoming needs --tls-ca-file, the CA client certificates are checked against"
                .to_string(),
        )),
        (ca_file, false) => {
            // Read anyway, so that a bad CA file is found at start rather than when
            // --verify-incoming is turned on later.
            if let Some(ca_file) = ca_file {
                read_roots("--tls-ca-file", ca_file)?;
            }
            builder.with_no_client_auth()
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        },
        other => content("--tls-key-file", &files.key_file, other.to_string()),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The HTTPS listener's settings, replaced as a whole by a reload: the listener takes the
/// current ones for each new connection.
#[derive(Debug)]
pub struct TlsCertificates {
    files: TlsFiles,
    current: watch::Sender<Arc<ServerConfig>>,
}

impl TlsCertificates {
    /// Loads the files; an error names the flag of the file at fault.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsCertificates {
            files,
            current: watch::Sender::new(config),
        })
    }

    /// Reads the files again. On success the next handshake uses them; on failure nothing
    /// changes and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        self.current.send_replace(config);
        Ok(())
    }

    /// What the listener reads the current settings from.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.subscribe()
    }
}

/// A reload asked for through the API, answered with its outcome.
type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// Asks the owner of the HTTPS settings to read the files again (`PUT /v1/agent/reload`).
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
            .map_err(|_| "the HTTPS listener is not running".to_string())?;
        outcome
            .await
            .map_err(|_| "the HTTPS listener is not running".to_string())?
    }
}

#[cfg(test)]
mod tests;
