//! The node's current TLS settings, replaced as a whole by a reload.

use std::sync::Arc;

use tokio::sync::watch;

use crate::configs::{TlsConfigs, TlsSettings};
use crate::files::TlsError;

/// The current settings of every TLS endpoint of the node. Each endpoint takes the current
/// ones for each new connection (a listener for each accepted one, an RPC client for each
/// one it opens); connections already open go on with what they were handshaken with.
#[derive(Debug)]
pub struct TlsCertificates {
    settings: TlsSettings,
    current: watch::Sender<Arc<TlsConfigs>>,
}

impl TlsCertificates {
    /// Loads the files; an error names the flag of the file at fault.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let configs = TlsConfigs::load(&settings)?;
        Ok(TlsCertificates {
            settings,
            current: watch::Sender::new(Arc::new(configs)),
        })
    }

    /// Reads the files again. On success the next handshake of every endpoint uses them; on
    /// failure nothing changes and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = TlsConfigs::load(&self.settings)?;
        self.current.send_replace(Arc::new(configs));
        Ok(())
    }

    /// What an endpoint reads the current settings from.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TlsConfigs>> {
        self.current.subscribe()
    }

    /// What the files and flags were.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::testing::{Ca, TestFiles};
    use crate::{https_server_config, TlsCertificates, TlsError, TlsSettings};

    fn settings(files: &TestFiles, verify: bool) -> TlsSettings {
        TlsSettings {
            files: files.files.clone(),
            verify_incoming_https: verify,
            verify_incoming_rpc: verify,
            verify_outgoing: verify,
            verify_server_hostname: verify,
        }
    }

    #[test]
    fn good_files_load() {
        let ca = Ca::new();
        let files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        let certificates = TlsCertificates::load(settings(&files, true)).expect("load");
        let configs = certificates.subscribe().borrow().clone();
        assert_eq!(configs.https.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(configs.rpc_server.alpn_protocols, vec![b"h2".to_vec()]);
        let client = configs.rpc_to_server.as_ref().expect("a client with a CA");
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(client.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn a_missing_file_names_its_flag() {
        let ca = Ca::new();
        let files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        std::fs::remove_file(&files.files.key_file).expect("remove");
        let error = https_server_config(&files.files, false).expect_err("no key");
        assert!(error.to_string().starts_with("--tls-key-file "), "{error}");
    }

    #[test]
    fn a_file_without_pem_names_its_flag() {
        let ca = Ca::new();
        let files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        std::fs::write(&files.files.cert_file, "not a certificate").expect("write");
        let error = https_server_config(&files.files, false).expect_err("no certificate");
        assert!(error.to_string().starts_with("--tls-cert-file "), "{error}");
        std::fs::write(files.files.ca_file.as_ref().expect("a CA"), "garbage").expect("write");
        let error = TlsCertificates::load(settings(&files, false)).expect_err("no CA");
        assert!(error.to_string().contains("--tls-"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let ca = Ca::new();
        let files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        std::fs::write(&files.files.key_file, ca.leaf(&["localhost"]).key_pem).expect("write");
        let error = https_server_config(&files.files, false).expect_err("a mismatch");
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        let error = TlsCertificates::load(settings(&files, true)).expect_err("a mismatch");
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
    }

    #[test]
    fn verify_incoming_needs_a_ca() {
        let ca = Ca::new();
        let mut files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        files.files.ca_file = None;
        let error = https_server_config(&files.files, true).expect_err("no CA");
        assert!(error.to_string().contains("--tls-ca-file"), "{error}");
        // Without a CA, TLS is still offered but no peer can be checked.
        let configs = TlsCertificates::load(settings(&files, false)).expect("load");
        assert!(configs.subscribe().borrow().rpc_to_server.is_none());
    }

    #[test]
    fn a_failed_reload_keeps_the_loaded_settings() {
        let ca = Ca::new();
        let files = TestFiles::new(&ca, &ca.leaf(&["localhost"]));
        let certificates = TlsCertificates::load(settings(&files, true)).expect("load");
        let current = certificates.subscribe();
        let before = current.borrow().clone();
        std::fs::write(&files.files.cert_file, "garbage").expect("write");
        assert!(certificates.reload().is_err());
        assert!(Arc::ptr_eq(&before, &current.borrow()));
        files.write_leaf(&ca.leaf(&["localhost"]));
        certificates.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &current.borrow()));
    }
}
