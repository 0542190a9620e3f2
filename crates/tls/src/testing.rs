//! Certificates made on the fly for tests: a CA, leaves it signs, and the files of a node.

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::TlsFiles;

/// A CA.
pub struct Ca {
    /// Its certificate (PEM).
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate a CA signed, for both server and client authentication.
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("a CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for the DNS names `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let names = names.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The CA's certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("pem")
    }
}

impl Leaf {
    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("pem")
    }
}

/// A temporary directory holding a node's certificate, its key and the CA.
pub struct TestFiles {
    /// The directory, removed when dropped.
    pub dir: tempfile::TempDir,
    /// The files in it.
    pub files: TlsFiles,
}

impl TestFiles {
    /// The files of a node holding `leaf`, signed by `ca`.
    pub fn new(ca: &Ca, leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().expect("a temporary dir");
        let files = TlsFiles {
            cert_file: dir.path().join("node.pem"),
            key_file: dir.path().join("node-key.pem"),
            ca_file: Some(dir.path().join("ca.pem")),
        };
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).expect("write");
        let files = TestFiles { dir, files };
        files.write_leaf(leaf);
        files
    }

    /// Replaces the certificate and its key.
    pub fn write_leaf(&self, leaf: &Leaf) {
        std::fs::write(&self.files.cert_file, &leaf.cert_pem).expect("write");
        std::fs::write(&self.files.key_file, &leaf.key_pem).expect("write");
    }
}
