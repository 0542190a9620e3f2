use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::GeneralName;

use super::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

fn names(kind: CertKind) -> CertNames {
    CertNames {
        kind,
        datacenter: "dc1".to_string(),
        domain: "consul".to_string(),
        node: None,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    }
}

/// The DNS names and IP addresses of a certificate, as written.
fn sans(pem: &str) -> (Vec<String>, Vec<IpAddr>) {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("a certificate");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let extension = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN extension");
    for name in &extension.value.general_names {
        match name {
            GeneralName::DNSName(name) => dns.push(name.to_string()),
            GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")),
                _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")),
            }),
            other => panic!("unexpected name {other:?}"),
        }
    }
    (dns, ips)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The provider the HTTPS listener uses.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Pair) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.cert_pem)).expect("a CA certificate");
    Arc::new(roots)
}

/// Whether a client trusting `ca` accepts `leaf` for `name`, as an HTTPS client would.
fn server_cert_verifies(ca: &Pair, leaf: &Pair, name: &str) -> bool {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .expect("a verifier");
    verifier
        .verify_server_cert(
            &der(&leaf.cert_pem),
            &[],
            &ServerName::try_from(name.to_string()).expect("a name"),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Whether a server trusting `ca` accepts `leaf` as a client certificate.
fn client_cert_verifies(ca: &Pair, leaf: &Pair) -> bool {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .expect("a verifier");
    verifier
        .verify_client_cert(&der(&leaf.cert_pem), &[], UnixTime::now())
        .is_ok()
}

#[test]
fn a_server_certificate_verifies_against_its_ca_for_its_names() {
    let ca = make_ca(30).expect("a CA");
    let server = make_cert(&ca.cert_pem, &ca.key_pem, &names(CertKind::Server), 30).expect("cert");
    assert!(server_cert_verifies(&ca, &server, "server.dc1.consul"));
    assert!(server_cert_verifies(&ca, &server, "localhost"));
    assert!(server_cert_verifies(&ca, &server, "127.0.0.1"));
    assert!(!server_cert_verifies(&ca, &server, "client.dc1.consul"));
    // One pair serves both ways, as Consul's.
    assert!(client_cert_verifies(&ca, &server));
}

#[test]
fn a_certificate_of_another_ca_is_refused() {
    let ca = make_ca(30).expect("a CA");
    let other = make_ca(30).expect("another CA");
    let stranger = make_cert(
        &other.cert_pem,
        &other.key_pem,
        &names(CertKind::Client),
        30,
    )
    .expect("cert");
    assert!(!client_cert_verifies(&ca, &stranger));
    assert!(!server_cert_verifies(&ca, &stranger, "localhost"));
}

#[test]
fn each_kind_carries_consuls_names() {
    let ca = make_ca(30).expect("a CA");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server = make_cert(&ca.cert_pem, &ca.key_pem, &names(CertKind::Server), 30).expect("cert");
    assert_eq!(
        sans(&server.cert_pem),
        (
            vec!["server.dc1.consul".to_string(), "localhost".to_string()],
            vec![localhost]
        )
    );
    let client = make_cert(&ca.cert_pem, &ca.key_pem, &names(CertKind::Client), 30).expect("cert");
    assert_eq!(
        sans(&client.cert_pem),
        (
            vec!["client.dc1.consul".to_string(), "localhost".to_string()],
            vec![localhost]
        )
    );
    let cli = make_cert(&ca.cert_pem, &ca.key_pem, &names(CertKind::Cli), 30).expect("cert");
    assert_eq!(
        sans(&cli.cert_pem),
        (
            vec!["cli.dc1.consul".to_string(), "localhost".to_string()],
            vec![]
        )
    );
}

#[test]
fn additional_names_and_the_node_are_added() {
    let ca = make_ca(30).expect("a CA");
    let mut wanted = names(CertKind::Server);
    wanted.node = Some("alpha".to_string());
    wanted.dns_names = vec!["api.example.internal".to_string()];
    wanted.ip_addresses = vec!["10.1.2.3".parse().expect("ip")];
    let server = make_cert(&ca.cert_pem, &ca.key_pem, &wanted, 30).expect("cert");
    let (dns, ips) = sans(&server.cert_pem);
    assert_eq!(
        dns,
        [
            "alpha.server.dc1.consul",
            "server.dc1.consul",
            "localhost",
            "api.example.internal"
        ]
    );
    assert_eq!(
        ips,
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "10.1.2.3".parse::<IpAddr>().expect("ip")
        ]
    );
}

#[test]
fn a_key_that_is_not_the_cas_is_refused() {
    let ca = make_ca(30).expect("a CA");
    let other = make_ca(30).expect("another CA");
    let error = make_cert(&ca.cert_pem, &other.key_pem, &names(CertKind::Server), 30)
        .expect_err("a mismatched key");
    assert!(error.to_string().contains("does not belong"), "{error}");
}

#[test]
fn serials_are_random_and_sixteen_bytes() {
    let first = make_ca(30).expect("a CA");
    let second = make_ca(30).expect("a CA");
    let serial = |pair: &Pair| {
        let der = der(&pair.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("a certificate");
        cert.raw_serial().to_vec()
    };
    assert_eq!(serial(&first).len(), 16);
    assert_ne!(serial(&first), serial(&second));
}

fn ca_args(dir: &Path) -> CaCreateArgs {
    CaCreateArgs {
        domain: "consul".to_string(),
        days: 30,
        out_dir: dir.to_path_buf(),
    }
}

fn server_args(dir: &Path) -> CertCreateArgs {
    CertCreateArgs {
        server: true,
        client: false,
        cli: false,
        dc: "dc1".to_string(),
        domain: "consul".to_string(),
        days: 30,
        node: None,
        additional_dnsnames: Vec::new(),
        additional_ipaddresses: Vec::new(),
        ca: None,
        key: None,
        out_dir: dir.to_path_buf(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("a file")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_have_consuls_names_and_keys_are_private() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    create_ca_files(&ca_args(dir.path())).expect("a CA");
    let ca = dir.path().join("consul-agent-ca.pem");
    let ca_key = dir.path().join("consul-agent-ca-key.pem");
    assert_eq!(mode(&ca_key), 0o600);
    assert_eq!(mode(&ca), 0o644);
    create_cert_files(&server_args(dir.path())).expect("a first certificate");
    create_cert_files(&server_args(dir.path())).expect("a second certificate");
    for n in 0..2 {
        let cert = dir.path().join(format!("dc1-server-consul-{n}.pem"));
        let key = dir.path().join(format!("dc1-server-consul-{n}-key.pem"));
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        let pair = Pair {
            cert_pem: std::fs::read_to_string(&cert).expect("the certificate"),
            key_pem: std::fs::read_to_string(&key).expect("the key"),
        };
        let ca = Pair {
            cert_pem: std::fs::read_to_string(&ca).expect("the CA"),
            key_pem: String::new(),
        };
        assert!(server_cert_verifies(&ca, &pair, "server.dc1.consul"));
    }
}

#[test]
fn an_existing_ca_is_not_overwritten() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    create_ca_files(&ca_args(dir.path())).expect("a CA");
    let before = std::fs::read(dir.path().join("consul-agent-ca-key.pem")).expect("the key");
    let error = create_ca_files(&ca_args(dir.path())).expect_err("an existing CA");
    assert!(error.to_string().contains("already exists"), "{error}");
    let after = std::fs::read(dir.path().join("consul-agent-ca-key.pem")).expect("the key");
    assert_eq!(before, after);
}

#[test]
fn a_certificate_without_a_ca_names_the_flag() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let error = create_cert_files(&server_args(dir.path())).expect_err("no CA");
    assert!(format!("{error:#}").contains("--ca"), "{error:#}");
}

#[test]
fn keygen_prints_32_random_bytes() {
    let key = keygen();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .expect("base64");
    assert_eq!(bytes.len(), 32);
    assert_ne!(key, keygen());
}
