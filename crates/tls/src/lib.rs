//! atoll's TLS: the PEM files a node is given (`--tls-cert-file`, `--tls-key-file`,
//! `--tls-ca-file`), read into the rustls settings of each of its TLS endpoints (the HTTPS
//! listener, the RPC listener, RPC clients), the names certificates are checked for
//! (`server.DC.DOMAIN`), and the reload that replaces them all at once without a restart.
//!
//! One certificate serves both ends, as Consul's: `atoll tls cert create` gives it
//! `serverAuth` and `clientAuth`.
#![forbid(unsafe_code)]

mod configs;
mod files;
mod names;
mod reload;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use configs::{https_server_config, TlsConfigs, TlsSettings};
pub use files::{
    crypto_provider, read_certificates, read_private_key, read_roots, TlsError, TlsFiles,
};
pub use names::{role_name, valid_for, Role};
pub use reload::TlsCertificates;
