//! Reading the PEM files, with errors naming the flag of the file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// A node's TLS files, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert-file`).
    pub cert_file: PathBuf,
    /// Its private key (`--tls-key-file`).
    pub key_file: PathBuf,
    /// The CA peers' certificates must be signed by (`--tls-ca-file`).
    pub ca_file: Option<PathBuf>,
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

pub(crate) fn content(flag: &'static str, path: &Path, what: String) -> TlsError {
    TlsError::Content {
        flag,
        path: path.to_path_buf(),
        what,
    }
}

/// The files read: the node's certificate chain and key, and the CA's roots when given.
pub(crate) struct Loaded {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) roots: Option<Arc<RootCertStore>>,
}

impl Loaded {
    pub(crate) fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Loaded {
            chain: read_certificates("--tls-cert-file", &files.cert_file)?,
            key: read_private_key("--tls-key-file", &files.key_file)?,
            roots: match &files.ca_file {
                Some(ca_file) => Some(Arc::new(read_roots("--tls-ca-file", ca_file)?)),
                None => None,
            },
        })
    }
}
