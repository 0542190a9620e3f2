use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use atoll_tls::testing::{Ca, Leaf, TestFiles};
use atoll_tls::{crypto_provider, read_certificates, TlsCertificates, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::serve::{serve_tls, HttpLimits};

fn leaf(ca: &Ca) -> Leaf {
    ca.leaf(&["localhost"])
}

/// The HTTPS listener's files, requiring client certificates when `verify_incoming`.
fn load(files: &TestFiles, verify_incoming: bool) -> TlsCertificates {
    TlsCertificates::load(TlsSettings {
        files: files.files.clone(),
        verify_incoming_https: verify_incoming,
        verify_incoming_rpc: false,
        verify_outgoing: false,
        verify_server_hostname: false,
    })
    .expect("load")
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
fn client(ca: &Ca, identity: Option<Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).expect("a root");
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("pem"),
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
    let ca = Ca::new();
    let dir = TestFiles::new(&ca, &leaf(&ca));
    let certificates = load(&dir, false);
    let address = listener(&certificates).await;
    let connector = client(&ca, None);
    let (first, answer) = get(&connector, address).await.expect("a first request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(first, der_of(&dir.files.cert_file));
    dir.write_leaf(&leaf(&ca));
    certificates.reload().expect("reload");
    let (second, answer) = get(&connector, address).await.expect("a second request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(second, der_of(&dir.files.cert_file));
    assert_ne!(first, second);
}

#[tokio::test]
async fn verify_incoming_refuses_clients_without_a_certificate_of_the_ca() {
    let ca = Ca::new();
    let dir = TestFiles::new(&ca, &leaf(&ca));
    let certificates = load(&dir, true);
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
    let of_another_ca = leaf(&Ca::new());
    assert!(refused(
        get(&client(&ca, Some(of_another_ca)), address).await
    ));
}
