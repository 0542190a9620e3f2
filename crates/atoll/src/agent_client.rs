//! How the command-line tools reach an agent: plain HTTP, or HTTPS when the address says
//! `https://`, trusting `--ca-file` (else the system's roots) and presenting
//! `--client-cert`/`--client-key` to an agent that verifies incoming connections.

use anyhow::{anyhow, bail};
use atoll_api::tls::{crypto_provider, read_certificates, read_private_key, read_roots};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;

use crate::config::ClientArgs;

/// The HTTP client of the command-line tools.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An agent's base URL (`http://HOST:PORT` or `https://HOST:PORT`) and a client for it.
#[derive(Clone)]
pub struct AgentClient {
    /// What paths are appended to.
    pub base: String,
    /// Speaks TLS when `base` is `https://`.
    pub client: HttpClient,
}

impl AgentClient {
    /// The client `--http-addr`, `--ca-file`, `--client-cert` and `--client-key` describe.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let address = args.http_addr.trim_end_matches('/');
        let (tls, host) = match address.split_once("://") {
            Some(("https", host)) => (true, host),
            Some(("http", host)) => (false, host),
            Some((scheme, _)) => {
                bail!("--http-addr {address:?}: unknown scheme {scheme:?} (use http or https)")
            }
            None => (false, address),
        };
        if host.is_empty() {
            bail!("--http-addr {address:?} names no host");
        }
        let identity = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => Some((
                read_certificates("--client-cert", cert)?,
                read_private_key("--client-key", key)?,
            )),
            (None, None) => None,
            _ => bail!("--client-cert and --client-key go together"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("cannot set up TLS: {e}"))?;
        let builder = match &args.ca_file {
            Some(ca_file) => builder.with_root_certificates(read_roots("--ca-file", ca_file)?),
            None if tls => builder
                .with_native_roots()
                .map_err(|e| anyhow!("cannot read the system's root certificates: {e}"))?,
            // Plain HTTP: the TLS settings are never used.
            None => builder.with_root_certificates(rustls::RootCertStore::empty()),
        };
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow!("--client-cert and --client-key cannot be used: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let connector = match &args.tls_server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| anyhow!("--tls-server-name {name:?}: {e}"))?;
                connector
                    .with_server_name_resolver(FixedServerNameResolver::new(name))
                    .enable_http1()
                    .build()
            }
            None => connector.enable_http1().build(),
        };
        Ok(AgentClient {
            base: format!("{}://{host}", if tls { "https" } else { "http" }),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
