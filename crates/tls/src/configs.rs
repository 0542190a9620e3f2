//! The rustls settings of each TLS endpoint of a node, all made from the same files.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::crypto_provider;
use crate::files::{content, Loaded, TlsError, TlsFiles};

/// The TLS files and what each endpoint asks of its peers (Consul's `verify_*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The files.
    pub files: TlsFiles,
    /// The HTTPS listener requires a client certificate signed by the CA.
    pub verify_incoming_https: bool,
    /// The RPC listener requires TLS and a client certificate signed by the CA.
    pub verify_incoming_rpc: bool,
    /// RPC clients use TLS and check the peer's certificate against the CA.
    pub verify_outgoing: bool,
    /// A server's certificate must be valid for `server.DC.DOMAIN`: RPC clients check it
    /// when dialing a server, and the RPC listener asks it of a peer claiming to be one.
    pub verify_server_hostname: bool,
}

/// The rustls settings made from the files, replaced together by a reload.
#[derive(Debug)]
pub struct TlsConfigs {
    /// The HTTPS listener: ALPN `http/1.1`, a client certificate required with
    /// `verify_incoming_https`, none asked for otherwise.
    pub https: Arc<ServerConfig>,
    /// The RPC listener: ALPN `h2`; a client certificate of the CA required with
    /// `verify_incoming_rpc`, otherwise checked when one is offered (so that a server can
    /// still prove what it is).
    pub rpc_server: Arc<ServerConfig>,
    /// RPC clients dialing a server: they present the node's certificate and check the
    /// server's against the CA, and its name when `verify_server_hostname`. `None` without
    /// a CA file.
    pub rpc_to_server: Option<Arc<ClientConfig>>,
    /// RPC clients dialing another node (a compute node the leader replicates to): the
    /// peer's certificate is checked against the CA, whatever its name.
    pub rpc_to_node: Option<Arc<ClientConfig>>,
}

/// Whether and how a listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// It does not ask.
    None,
    /// It asks; one offered must be signed by the CA.
    Offered,
    /// One signed by the CA is required.
    Required,
}

impl TlsConfigs {
    /// Reads the files and makes every endpoint's settings; an error names the flag of the
    /// file at fault.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let loaded = Loaded::read(&settings.files)?;
        let https_auth = if settings.verify_incoming_https {
            ClientAuth::Required
        } else {
            ClientAuth::None
        };
        let rpc_auth = if settings.verify_incoming_rpc {
            ClientAuth::Required
        } else {
            ClientAuth::Offered
        };
        let (rpc_to_server, rpc_to_node) = match &loaded.roots {
            Some(roots) => (
                Some(client_config(
                    &settings.files,
                    &loaded,
                    roots,
                    settings.verify_server_hostname,
                )?),
                Some(client_config(&settings.files, &loaded, roots, false)?),
            ),
            None => (None, None),
        };
        Ok(TlsConfigs {
            https: server_config(&settings.files, &loaded, https_auth, b"http/1.1")?,
            rpc_server: server_config(&settings.files, &loaded, rpc_auth, b"h2")?,
            rpc_to_server,
            rpc_to_node,
        })
    }
}

/// The HTTPS listener's settings alone (HTTP/1.1 over TLS 1.2 or 1.3), with a client
/// certificate required when `verify_incoming`.
pub fn https_server_config(
    files: &TlsFiles,
    verify_incoming: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let auth = if verify_incoming {
        ClientAuth::Required
    } else {
        ClientAuth::None
    };
    server_config(files, &Loaded::read(files)?, auth, b"http/1.1")
}

fn server_config(
    files: &TlsFiles,
    loaded: &Loaded,
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match (&loaded.roots, &files.ca_file, auth) {
        (Some(roots), Some(ca_file), ClientAuth::Required | ClientAuth::Offered) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider);
            let verifier = if auth == ClientAuth::Offered {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| content("--tls-ca-file", ca_file, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, _, ClientAuth::Required) => {
            return Err(TlsError::Setup(
                "--verify-incoming needs --tls-ca-file, the CA client certificates are checked \
                 against"
                    .to_string(),
            ))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(loaded.chain.clone(), loaded.key.clone_key())
        .map_err(|e| key_error(files, e))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

fn client_config(
    files: &TlsFiles,
    loaded: &Loaded,
    roots: &Arc<RootCertStore>,
    check_names: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider.clone())
        .build()
        .map_err(|e| match &files.ca_file {
            Some(ca_file) => content("--tls-ca-file", ca_file, e.to_string()),
            None => TlsError::Setup(e.to_string()),
        })?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier { inner, check_names }))
        .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())
        .map_err(|e| key_error(files, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn key_error(files: &TlsFiles, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        },
        other => content("--tls-key-file", &files.key_file, other.to_string()),
    }
}

/// Checks a peer's certificate against the CA (chain, validity, `serverAuth`), and its
/// name only when `check_names`: a node's RPC peers are addressed by IP, and only the role
/// name `server.DC.DOMAIN` (given as the server name) says anything about them.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    check_names: bool,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
