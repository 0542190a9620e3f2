use std::net::SocketAddr;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::serve::{serve_tls, HttpLimits};

struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("a CA");
    Ca {
        cert_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for localhost signed by `ca`: its PEM and its key's PEM.
fn leaf(ca: &Ca) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca.issuer).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}

struct Dir {
    dir: tempfile::TempDir,
    files: TlsFiles,
}

/// A directory with a CA, a server certificate and its key.
fn files(ca: &Ca, verify_incoming: bool) -> Dir {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let files = TlsFiles {
        cert_file: dir.path().join("server.pem"),
        key_file: dir.path().join("server-key.pem"),
        ca_file: Some(dir.path().join("ca.pem")),
        verify_incoming,
    };
    let (cert, key) = leaf(ca);
    std::fs::write(&files.cert_file, cert).expect("write");
    std::fs::write(&files.key_file, key).expect("write");
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
    Dir { dir, files }
}

#[test]
fn good_files_load() {
    let ca = ca();
    let dir = files(&ca, true);
    assert!(TlsCertificates::load(dir.files.clone()).is_ok());
}

#[test]
fn a_missing_file_names_its_flag() {
    let ca = ca();
    let dir = files(&ca, false);
    std::fs::remove_file(&dir.files.key_file).expect("remove");
    let error = server_config(&dir.files).expect_err("no key");
    assert!(error.to_string().starts_with("--tls-key-file "), "{error}");
}

#[test]
fn a_file_without_pem_names_its_flag() {
    let ca = ca();
    let dir = files(&ca, false);
    std::fs::write(&dir.files.cert_file, "not a certificate").expect("write");
    let error = server_config(&dir.files).expect_err("no certificate");
    assert!(error.to_string().starts_with("--tls-cert-file "), "{error}");
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let ca = ca();
    let dir = files(&ca, false);
    let (_, other_key) = leaf(&ca);
    std::fs::write(&dir.files.key_file, other_key).expect("write");
    let error = server_config(&dir.files).expect_err("a mismatch");
    assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
}

#[test]
fn verify_incoming_needs_a_ca() {
    let ca = ca();
    let mut dir = files(&ca, true);
    dir.files.ca_file = None;
    let error = server_config(&dir.files).expect_err("no CA");
    assert!(error.to_string().contains("--tls-ca-file"), "{error}");
}

#[test]
fn a_failed_reload_keeps_the_loaded_settings() {
    let ca = ca();
    let dir = files(&ca, false);
    let certificates = TlsCertificates::load(dir.files.clone()).expect("load");
    let current = certificates.subscribe();
    let before = current.borrow().clone();
    std::fs::write(&dir.files.cert_file, "garbage").expect("write");
    assert!(certificates.reload().is_err());
    assert!(Arc::ptr_eq(&before, &current.borrow()));
    let (cert, key) = leaf(&ca);
    std::fs::write(&dir.files.cert_file, cert).expect("write");
    std::fs::write(&dir.files.key_file, key).expect("write");
    certificates.reload().expect("reload");
    assert!(!Arc::ptr_eq(&before, &current.borrow()));
}

/// Starts an HTTPS listener answering 200 on every path.
async fn listener(certificates: &TlsCertificates) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = socket.local_addr().expect("address");
    let router = axum::Router::new().fallback(|| async { "up" });
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let tls = certificates.subscribe();
    tokio::spawn(async move {
        let _keep = _stop_tx;
        serve_tls(socket, router, HttpLimits::default(), tls, stop).await
    });
    address
}

/// A client trusting `ca`, with a client certificate when given.
fn client(ca: &Ca, identity: Option<(String, String)>) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("pem"))
        .expect("a root");
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("pem"),
            )
            .expect("a client certificate"),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends one request; answers the server's certificate and the answer, or the error.
async fn get(
    connector: &tokio_rustls::TlsConnector,
    address: SocketAddr,
) -> std::io::Result<(Vec<u8>, String)> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").expect("a name");
    let mut stream = connector.connect(name, tcp).await?;
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    stream
        .write_all(
            b"GET /v1/status/leader HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok((presented, answer))
}

fn der_of(path: &Path) -> Vec<u8> {
    read_certificates("test", path).expect("a certificate")[0].to_vec()
}

#[tokio::test]
async fn a_reload_changes_the_certificate_of_new_connections() {
    let ca = ca();
    let dir = files(&ca, false);
    let certificates = TlsCertificates::load(dir.files.clone()).expect("load");
    let address = listener(&certificates).await;
    let connector = client(&ca, None);
    let (first, answer) = get(&connector, address).await.expect("a first request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(first, der_of(&dir.files.cert_file));
    let (cert, key) = leaf(&ca);
    std::fs::write(dir.dir.path().join("server.pem"), cert).expect("write");
    std::fs::write(dir.dir.path().join("server-key.pem"), key).expect("write");
    certificates.reload().expect("reload");
    let (second, answer) = get(&connector, address).await.expect("a second request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(second, der_of(&dir.files.cert_file));
    assert_ne!(first, second);
}

#[tokio::test]
async fn verify_incoming_refuses_clients_without_a_certificate_of_the_ca() {
    let ca = ca();
    let dir = files(&ca, true);
    let certificates = TlsCertificates::load(dir.files.clone()).expect("load");
    let address = listener(&certificates).await;
    let (_, answer) = get(&client(&ca, Some(leaf(&ca))), address)
        .await
        .expect("a client of the CA");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Under TLS 1.3 the client may finish its side of the handshake before the server
    // refuses its certificate: the refusal is then what the first read gets.
    let refused = |result: std::io::Result<(Vec<u8>, String)>| match result {
        Ok((_, answer)) => !answer.starts_with("HTTP/1.1"),
        Err(_) => true,
    };
    assert!(refused(get(&client(&ca, None), address).await));
    let of_another_ca = leaf(&self::ca());
    assert!(refused(
        get(&client(&ca, Some(of_another_ca)), address).await
    ));
}
