//! How the command-line tools reach an agent: plain HTTP, or HTTPS when the address says
//! `https://`, trusting `--ca-file` (else the system's roots) and presenting
//! `--client-cert`/`--client-key` to an agent that verifies incoming connections.

use anyhow::{anyhow, bail};
use atoll_tls::{crypto_provider, read_certificates, read_private_key, read_roots};
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
    /// The ACL token every request carries (`--token`), if any.
    pub token: Option<String>,
}

impl AgentClient {
    /// The client `--http-addr`, `--ca-file`, `--client-cert` and `--client-key` describe.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        // `--http-addr` is already in its normal form (`config::agent_address`): HOST:PORT
        // for plain HTTP, https://HOST:PORT for HTTPS.
        let tls = args.http_addr.starts_with("https://");
        let base = if tls {
            args.http_addr.clone()
        } else {
            format!("http://{}", args.http_addr)
        };
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
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
            token: Some(args.token.trim().to_string()).filter(|t| !t.is_empty()),
        })
    }

    /// A request to `url` carrying the token (`X-Consul-Token`) when there is one.
    pub fn request(&self, method: &str, url: &str) -> hyper::http::request::Builder {
        let builder = hyper::Request::builder().method(method).uri(url);
        match &self.token {
            Some(token) => builder.header("x-consul-token", token),
            None => builder,
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags with `http_addr` as the command line's parser leaves it.
    fn args(http_addr: &str) -> ClientArgs {
        ClientArgs {
            http_addr: crate::config::agent_address(http_addr).unwrap(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            token: String::new(),
            json: false,
            dc: None,
        }
    }

    fn error(args: &ClientArgs) -> String {
        match AgentClient::new(args) {
            Ok(client) => panic!("accepted, base {}", client.base),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn the_scheme_of_the_address_picks_http_or_https() {
        assert_eq!(
            AgentClient::new(&args("127.0.0.1:8500")).unwrap().base,
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            AgentClient::new(&args("http://127.0.0.1:8500/"))
                .unwrap()
                .url("/v1/status/leader"),
            "http://127.0.0.1:8500/v1/status/leader"
        );
        let mut https = args("https://localhost:8501");
        https.ca_file = Some(std::path::PathBuf::from("/nonexistent/ca.pem"));
        let message = error(&https);
        assert!(
            message.starts_with("--ca-file /nonexistent/ca.pem"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn half_identities_are_refused_by_name() {
        let mut half = args("https://127.0.0.1:8501");
        half.client_cert = Some("cert.pem".into());
        assert!(error(&half).contains("--client-cert and --client-key go together"));
    }
}
