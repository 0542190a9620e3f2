//! The names that say what a node is: Consul's `server.DC.DOMAIN` and `client.DC.DOMAIN`,
//! which `atoll tls cert create --server` and `--client` put in a certificate.

use rustls::pki_types::{CertificateDer, ServerName};

/// What a certificate can name a node as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server (a Raft voter).
    Server,
    /// A client (compute) node.
    Client,
}

/// The name of `role` in datacenter `datacenter` under the DNS domain `domain` (with or
/// without its final dot): `server.dc1.consul`.
pub fn role_name(role: Role, datacenter: &str, domain: &str) -> String {
    let kind = match role {
        Role::Server => "server",
        Role::Client => "client",
    };
    format!("{kind}.{datacenter}.{}", domain.trim_end_matches('.'))
}

/// Whether `certificate` (whose chain was verified) is valid for the DNS name `name`.
pub fn valid_for(certificate: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

#[cfg(test)]
mod tests {
    use super::{role_name, valid_for, Role};
    use crate::testing::Ca;

    #[test]
    fn role_names_are_consuls() {
        assert_eq!(
            role_name(Role::Server, "dc1", "consul."),
            "server.dc1.consul"
        );
        assert_eq!(
            role_name(Role::Client, "eu", "example.org"),
            "client.eu.example.org"
        );
    }

    #[test]
    fn a_certificate_is_valid_for_its_names_only() {
        let ca = Ca::new();
        let server = ca.leaf(&["server.dc1.consul", "localhost"]);
        let client = ca.leaf(&["client.dc1.consul", "localhost"]);
        let server = server.der();
        let client = client.der();
        assert!(valid_for(&server, "server.dc1.consul"));
        assert!(valid_for(&server, "localhost"));
        assert!(!valid_for(&server, "server.dc2.consul"));
        assert!(!valid_for(&server, "client.dc1.consul"));
        assert!(!valid_for(&client, "server.dc1.consul"));
        assert!(valid_for(&client, "client.dc1.consul"));
        // A name that is no DNS name matches nothing; neither do bytes that are no certificate.
        assert!(!valid_for(&server, "not a name"));
        assert!(!valid_for(
            &rustls::pki_types::CertificateDer::from(vec![1, 2, 3]),
            "localhost"
        ));
    }
}
