//! The built-in certificate authority (`atoll tls ca create`, `atoll tls cert create`) and
//! `atoll keygen`, with Consul's file names and the names Consul puts in its certificates,
//! so that a cluster's TLS files can be made without any other tool.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// `atoll tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The certificate authority.
    Ca {
        /// CA subcommand.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates signed by the CA.
    Cert {
        /// Certificate subcommand.
        #[command(subcommand)]
        command: CertCommand,
    },
}

/// `atoll tls ca ...`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA: DOMAIN-agent-ca.pem and DOMAIN-agent-ca-key.pem.
    Create(CaCreateArgs),
}

/// `atoll tls cert ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a certificate and its key, signed by the CA: DC-KIND-DOMAIN-N.pem and
    /// DC-KIND-DOMAIN-N-key.pem, N the first number not taken.
    Create(CertCreateArgs),
}

/// `atoll tls ca create`.
#[derive(Debug, Args)]
pub struct CaCreateArgs {
    /// The DNS domain the cluster serves (also the files' prefix).
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Days the CA stays valid.
    #[arg(long, default_value_t = 1825)]
    pub days: u32,
    /// Where the files are written (default: the current directory).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
}

/// `atoll tls cert create`.
#[derive(Debug, Args)]
pub struct CertCreateArgs {
    /// A server's certificate (server.DC.DOMAIN, localhost, 127.0.0.1).
    #[arg(long, group = "kind")]
    pub server: bool,
    /// A client node's certificate (client.DC.DOMAIN, localhost, 127.0.0.1).
    #[arg(long, group = "kind")]
    pub client: bool,
    /// A command-line tool's certificate (cli.DC.DOMAIN, localhost).
    #[arg(long, group = "kind")]
    pub cli: bool,
    /// The datacenter the certificate is for.
    #[arg(long, default_value = "dc1")]
    pub dc: String,
    /// The DNS domain the cluster serves.
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Days the certificate stays valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// A server's node name, added as NODE.server.DC.DOMAIN.
    #[arg(long)]
    pub node: Option<String>,
    /// Another DNS name the certificate is valid for (repeatable).
    #[arg(long = "additional-dnsname")]
    pub additional_dnsnames: Vec<String>,
    /// Another IP address the certificate is valid for (repeatable).
    #[arg(long = "additional-ipaddress")]
    pub additional_ipaddresses: Vec<IpAddr>,
    /// The CA's certificate (default: DOMAIN-agent-ca.pem in --out-dir).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The CA's key (default: DOMAIN-agent-ca-key.pem in --out-dir).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Where the files are written (default: the current directory).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
}

/// What a certificate is for, which decides its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// A server: `server.DC.DOMAIN`.
    Server,
    /// A client node: `client.DC.DOMAIN`.
    Client,
    /// A command-line tool: `cli.DC.DOMAIN`.
    Cli,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Client => "client",
            CertKind::Cli => "cli",
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// Runs `atoll tls ...`.
pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Ca {
            command: CaCommand::Create(args),
        } => create_ca_files(&args),
        TlsCommand::Cert {
            command: CertCommand::Create(args),
        } => create_cert_files(&args),
    }
}

/// `atoll keygen`: 32 random bytes, base64, as `consul keygen` prints a gossip key.
pub fn keygen() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn create_ca_files(args: &CaCreateArgs) -> anyhow::Result<()> {
    check_domain(&args.domain)?;
    let cert_path = args.out_dir.join(format!("{}-agent-ca.pem", args.domain));
    let key_path = args
        .out_dir
        .join(format!("{}-agent-ca-key.pem", args.domain));
    refuse_existing(&[&cert_path, &key_path])?;
    let pair = make_ca(args.days)?;
    write_new(&cert_path, &pair.cert_pem, 0o644)?;
    write_new(&key_path, &pair.key_pem, 0o600)?;
    println!("==> Saved {}", cert_path.display());
    println!("==> Saved {}", key_path.display());
    Ok(())
}

fn create_cert_files(args: &CertCreateArgs) -> anyhow::Result<()> {
    let kind = match (args.server, args.client, args.cli) {
        (true, _, _) => CertKind::Server,
        (_, true, _) => CertKind::Client,
        (_, _, true) => CertKind::Cli,
        _ => bail!("say what the certificate is for: --server, --client or --cli"),
    };
    check_domain(&args.domain)?;
    check_label("--dc", &args.dc)?;
    if let Some(node) = &args.node {
        if kind != CertKind::Server {
            bail!("--node only applies to --server certificates");
        }
        check_label("--node", node)?;
    }
    for name in &args.additional_dnsnames {
        check_dns_name(name)?;
    }
    let ca_path = args
        .ca
        .clone()
        .unwrap_or_else(|| args.out_dir.join(format!("{}-agent-ca.pem", args.domain)));
    let ca_key_path = args.key.clone().unwrap_or_else(|| {
        args.out_dir
            .join(format!("{}-agent-ca-key.pem", args.domain))
    });
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "cannot read the CA certificate (--ca) {}",
            ca_path.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("cannot read the CA key (--key) {}", ca_key_path.display()))?;
    let names = CertNames {
        kind,
        datacenter: args.dc.clone(),
        domain: args.domain.clone(),
        node: args.node.clone(),
        dns_names: args.additional_dnsnames.clone(),
        ip_addresses: args.additional_ipaddresses.clone(),
    };
    let pair = make_cert(&ca_pem, &ca_key_pem, &names, args.days)?;
    let prefix = format!("{}-{}-{}", args.dc, kind.label(), args.domain);
    let (cert_path, key_path) = next_free(&args.out_dir, &prefix);
    refuse_existing(&[&cert_path, &key_path])?;
    write_new(&cert_path, &pair.cert_pem, 0o644)?;
    write_new(&key_path, &pair.key_pem, 0o600)?;
    println!(
        "==> Using {} and {}",
        ca_path.display(),
        ca_key_path.display()
    );
    println!("==> Saved {}", cert_path.display());
    println!("==> Saved {}", key_path.display());
    Ok(())
}

/// A self-signed CA valid `days` from now: ECDSA P-256, a random 128-bit serial, the
/// common name Consul gives its CA.
pub fn make_ca(days: u32) -> anyhow::Result<Pair> {
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let serial = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Consul Agent CA {}", serial_text(&serial)),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "atoll");
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity(days)?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the CA certificate")?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The names a certificate carries.
#[derive(Debug, Clone)]
pub struct CertNames {
    /// Server, client or command-line tool.
    pub kind: CertKind,
    /// The datacenter.
    pub datacenter: String,
    /// The DNS domain, without the trailing dot.
    pub domain: String,
    /// A server's node name.
    pub node: Option<String>,
    /// More DNS names.
    pub dns_names: Vec<String>,
    /// More IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

impl CertNames {
    /// `KIND.DC.DOMAIN`, the common name.
    fn common_name(&self) -> String {
        format!("{}.{}.{}", self.kind.label(), self.datacenter, self.domain)
    }

    /// The DNS names and IP addresses, in Consul's order.
    fn subject_alt_names(&self) -> anyhow::Result<Vec<SanType>> {
        let mut dns = Vec::new();
        if let Some(node) = &self.node {
            dns.push(format!("{node}.server.{}.{}", self.datacenter, self.domain));
        }
        dns.push(self.common_name());
        dns.push("localhost".to_string());
        dns.extend(self.dns_names.iter().cloned());
        let mut ips = Vec::new();
        if self.kind != CertKind::Cli {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        ips.extend(self.ip_addresses.iter().copied());
        let mut sans = Vec::new();
        for name in dns {
            let name = name
                .clone()
                .try_into()
                .map_err(|_| anyhow!("{name:?} is not a valid DNS name"))?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.into_iter().map(SanType::IpAddress));
        Ok(sans)
    }
}

/// A certificate for `names`, valid `days` from now, signed by the CA given as PEM: a new
/// ECDSA P-256 key, usable by servers and clients alike (Consul uses one pair both ways).
pub fn make_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &CertNames,
    days: u32,
) -> anyhow::Result<Pair> {
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| anyhow!("the CA key (--key) is not a PEM private key: {e}"))?;
    check_ca_matches_key(ca_pem, &ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)
        .map_err(|e| anyhow!("the CA certificate (--ca) cannot be read: {e}"))?;
    let key = KeyPair::generate().context("cannot generate the key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.common_name());
    params.subject_alt_names = names.subject_alt_names()?;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(days)?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A key that is not the CA's would sign certificates nobody trusting the CA accepts.
fn check_ca_matches_key(ca_pem: &str, ca_key: &KeyPair) -> anyhow::Result<()> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| anyhow!("the CA certificate (--ca) is not PEM: {e}"))?;
    let ca = pem
        .parse_x509()
        .map_err(|e| anyhow!("the CA certificate (--ca) cannot be read: {e}"))?;
    if !ca.is_ca() {
        bail!("the certificate given as --ca is not a CA certificate");
    }
    if ca.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
        bail!("the key given as --key does not belong to the CA certificate given as --ca");
    }
    Ok(())
}

/// From a minute ago (clocks differ a little) to `days` from now.
fn validity(days: u32) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .ok_or_else(|| anyhow!("--days {days} is too far in the future"))?;
    Ok((now - Duration::minutes(1), not_after))
}

/// 128 random bits, the first byte kept in 0x40..=0x7f so that the DER integer is positive
/// and always 16 bytes long.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The serial in decimal, as Consul writes it in its CA's name.
fn serial_text(serial: &SerialNumber) -> String {
    serial
        .to_bytes()
        .iter()
        .fold(0u128, |n, b| (n << 8) | u128::from(*b))
        .to_string()
}

/// `DIR/PREFIX-N.pem` and `DIR/PREFIX-N-key.pem` for the first N where neither exists.
fn next_free(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
    let mut n = 0u32;
    loop {
        let cert = dir.join(format!("{prefix}-{n}.pem"));
        let key = dir.join(format!("{prefix}-{n}-key.pem"));
        if !cert.exists() && !key.exists() {
            return (cert, key);
        }
        n += 1;
    }
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!(
                "{} already exists: remove it or write elsewhere (--out-dir); nothing was written",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a file that must not exist yet, with `mode` from its creation on (a key is never
/// readable by others, not even for a moment).
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn check_label(flag: &str, text: &str) -> anyhow::Result<()> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        bail!("{flag} {text:?} is not a valid name: use letters, digits, '-' or '_'");
    }
    Ok(())
}

fn check_domain(domain: &str) -> anyhow::Result<()> {
    let valid = !domain.is_empty()
        && domain
            .split('.')
            .all(|label| check_label("", label).is_ok());
    if !valid {
        bail!("--domain {domain:?} is not a valid domain (without the trailing dot)");
    }
    Ok(())
}

fn check_dns_name(name: &str) -> anyhow::Result<()> {
    let labels = name.strip_prefix("*.").unwrap_or(name);
    if labels.is_empty()
        || !labels
            .split('.')
            .all(|label| check_label("", label).is_ok())
    {
        bail!("--additional-dnsname {name:?} is not a valid DNS name");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
