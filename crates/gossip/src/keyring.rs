//! Encryption of a pool's traffic: the keyring (a primary key and the other installed keys),
//! sealing with AES-GCM, and the keyring file.
//!
//! A sealed message is [`SEALED`] (the version of the format), a random 12-byte nonce, then
//! the ciphertext and its 16-byte tag. The additional data is the version byte and the
//! transport (`U` for a datagram, `T` for a TCP frame), so a datagram cannot be replayed as
//! a frame. The primary key seals; every installed key is tried to open, primary first (as
//! memberlist does), so a key can be rotated while members still seal with the old one.
//!
//! The keyring file is Consul's `remote.keyring`: a JSON list of the keys in base64, the
//! primary first.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The first byte of a sealed message: version 1 of the format. No plain datagram (type
/// bytes 0 to 3) nor plain exchange (a MessagePack array) starts with it.
pub const SEALED: u8 = 0xE1;

/// What a sealed message carries on top of its content: version, nonce, tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// The transport of a sealed message, part of what the tag authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Datagram,
    /// A TCP frame.
    Frame,
}

impl Transport {
    fn byte(self) -> u8 {
        match self {
            Transport::Datagram => b'U',
            Transport::Frame => b'T',
        }
    }
}

/// Why a key or a keyring change is refused; the texts are Consul's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// Not base64.
    #[error("Invalid key: {0}")]
    Base64(String),
    /// Not 16 or 32 bytes.
    #[error("key size must be 16 or 32 bytes (AES-128 or AES-256), not {0}")]
    Size(usize),
    /// `use` of a key that is not installed.
    #[error("Requested key is not in the keyring")]
    NotInstalled,
    /// `remove` of the primary key.
    #[error("Removing the primary key is not allowed")]
    RemovePrimary,
    /// The keyring file could not be read, parsed or written.
    #[error("keyring file {file}: {message}")]
    File {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
}

/// One key: its bytes and the cipher made of them.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    cipher: Arc<LessSafeKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "Key({} bytes)", self.bytes.len())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl Key {
    /// A key from its bytes (16 for AES-128-GCM, 32 for AES-256-GCM).
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, KeyringError> {
        let algorithm = match bytes.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            other => return Err(KeyringError::Size(other)),
        };
        let unbound =
            UnboundKey::new(algorithm, bytes).map_err(|_| KeyringError::Size(bytes.len()))?;
        Ok(Key {
            bytes: bytes.to_vec(),
            cipher: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// A key from its standard base64 form (as `atoll keygen` prints it).
    pub fn parse(text: &str) -> Result<Key, KeyringError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyringError::Base64(e.to_string()))?;
        Key::from_bytes(&bytes)
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The standard base64 form.
    pub fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    fn seal(&self, transport: Transport, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        if SystemRandom::new().fill(&mut nonce).is_err() {
            // The system's random source failing is not something to go on without.
            panic!("the system random source failed");
        }
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        let aad = [SEALED, transport.byte()];
        let sealed = self.cipher.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        );
        if sealed.is_err() {
            // Only a message over GCM's 64 GiB limit fails, which no frame reaches.
            panic!("AES-GCM refused to seal {} bytes", plain.len());
        }
        out.extend_from_slice(&body);
        out
    }

    fn open(&self, transport: Transport, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != SEALED || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let aad = [SEALED, transport.byte()];
        let plain_len = self
            .cipher
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// The keys a member seals with (the primary, first) and opens with (all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of one key, the primary.
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// A keyring of these keys, the first the primary (duplicates dropped); `None` when
    /// there is none.
    pub fn from_keys(keys: Vec<Key>) -> Option<Keyring> {
        let mut unique: Vec<Key> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        (!unique.is_empty()).then_some(Keyring { keys: unique })
    }

    /// The key that seals.
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// Every key, the primary first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Adds a key (installing one already there changes nothing).
    pub fn install(&mut self, key: Key) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Makes an installed key the primary.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        let at = self
            .keys
            .iter()
            .position(|k| k == key)
            .ok_or(KeyringError::NotInstalled)?;
        let key = self.keys.remove(at);
        self.keys.insert(0, key);
        Ok(())
    }

    /// Removes a key that is not the primary (removing one not installed changes nothing).
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        if self.primary() == key {
            return Err(KeyringError::RemovePrimary);
        }
        self.keys.retain(|k| k != key);
        Ok(())
    }

    /// Seals a message with the primary key.
    pub fn seal(&self, transport: Transport, plain: &[u8]) -> Vec<u8> {
        self.primary().seal(transport, plain)
    }

    /// Opens a sealed message with the first key that can (`None`: none can, or it is not
    /// sealed).
    pub fn open(&self, transport: Transport, sealed: &[u8]) -> Option<Vec<u8>> {
        self.keys.iter().find_map(|key| key.open(transport, sealed))
    }

    /// The keys in base64, the primary first.
    pub fn encoded(&self) -> Vec<String> {
        self.keys.iter().map(Key::encoded).collect()
    }

    /// Reads a keyring file (`Ok(None)`: there is none).
    pub fn load(path: &Path) -> Result<Option<Keyring>, KeyringError> {
        let file_error = |message: String| KeyringError::File {
            file: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(e.to_string())),
        };
        let encoded: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| file_error(format!("not a JSON list of keys: {e}")))?;
        let keys = encoded
            .iter()
            .map(|k| Key::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(e.to_string()))?;
        Keyring::from_keys(keys)
            .map(Some)
            .ok_or_else(|| file_error("it holds no key".into()))
    }

    /// Writes the keyring file: readable by its owner only, replaced atomically.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let file_error = |e: io::Error| KeyringError::File {
            file: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        let mut text = serde_json::to_string_pretty(&self.encoded())
            .map_err(|e| file_error(io::Error::other(e)))?;
        text.push('\n');
        let temporary = path.with_extension("keyring.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(file_error)?;
        file.write_all(text.as_bytes()).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(file_error)?;
        if let Some(dir) = path.parent() {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

/// How a pool encrypts its traffic.
#[derive(Debug, Clone)]
pub struct Encryption {
    /// The keys at start.
    pub keyring: Keyring,
    /// Whether plain traffic is refused (Consul's `encrypt_verify_incoming`; false only for
    /// a rolling enable).
    pub verify_incoming: bool,
    /// Whether traffic is sent sealed (Consul's `encrypt_verify_outgoing`; false only for
    /// a rolling enable).
    pub verify_outgoing: bool,
    /// Where the keyring is kept across restarts (rewritten on every change).
    pub file: Option<PathBuf>,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Sealed, but no installed key opens it (or this member has no key).
    NoKey,
    /// Plain, while plain traffic is refused.
    Plain,
}

impl Refusal {
    /// As a log line says it.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::NoKey => "no installed key opens it",
            Refusal::Plain => "it is not encrypted",
        }
    }
}

/// A pool's encryption as its tasks share it: nothing, or the keyring behind a lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Crypto(Option<Arc<Shared>>);

#[derive(Debug)]
struct Shared {
    keyring: RwLock<Keyring>,
    verify_incoming: bool,
    verify_outgoing: bool,
    file: Option<PathBuf>,
}

impl Crypto {
    pub(crate) fn new(encryption: Option<Encryption>) -> Crypto {
        Crypto(encryption.map(|e| {
            Arc::new(Shared {
                keyring: RwLock::new(e.keyring),
                verify_incoming: e.verify_incoming,
                verify_outgoing: e.verify_outgoing,
                file: e.file,
            })
        }))
    }

    fn keyring(shared: &Shared) -> std::sync::RwLockReadGuard<'_, Keyring> {
        shared
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What goes on the wire for `plain`: sealed with the primary key, or as it is without
    /// encryption (or with `verify_outgoing` off).
    pub(crate) fn seal(&self, transport: Transport, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(shared) if shared.verify_outgoing => {
                Crypto::keyring(shared).seal(transport, &plain)
            }
            _ => plain,
        }
    }

    /// [`Crypto::seal`], but sealed whenever there is a keyring, `verify_outgoing` or not
    /// (keyring operations are never sent plain).
    pub(crate) fn seal_always(&self, transport: Transport, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(shared) => Crypto::keyring(shared).seal(transport, &plain),
            None => plain,
        }
    }

    /// The content of what came off the wire, or why it is refused (counted).
    pub(crate) fn open(&self, transport: Transport, data: Vec<u8>) -> Result<Vec<u8>, Refusal> {
        let sealed = data.first() == Some(&SEALED);
        let opened = match (&self.0, sealed) {
            (None, false) => Ok(data),
            (None, true) => Err(Refusal::NoKey),
            (Some(shared), true) => Crypto::keyring(shared)
                .open(transport, &data)
                .ok_or(Refusal::NoKey),
            (Some(shared), false) if !shared.verify_incoming => Ok(data),
            (Some(_), false) => Err(Refusal::Plain),
        };
        if opened.is_err() {
            atoll_metrics::node().gossip.refused.inc();
        }
        opened
    }

    /// Whether traffic is encrypted.
    pub(crate) fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The keys, primary first (`None`: no encryption).
    pub(crate) fn keys(&self) -> Option<Vec<String>> {
        self.0.as_ref().map(|s| Crypto::keyring(s).encoded())
    }

    /// Applies a keyring change and stores the result; answers the keys after it.
    pub(crate) fn change(
        &self,
        change: impl FnOnce(&mut Keyring) -> Result<(), KeyringError>,
    ) -> Result<Vec<String>, String> {
        let Some(shared) = &self.0 else {
            return Err(NOT_ENABLED.to_string());
        };
        let mut keyring = shared
            .keyring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = keyring.clone();
        change(&mut changed).map_err(|e| e.to_string())?;
        if changed != *keyring {
            if let Some(file) = &shared.file {
                changed.save(file).map_err(|e| e.to_string())?;
            }
            *keyring = changed;
        }
        Ok(keyring.encoded())
    }
}

/// The answer of a member without encryption to a keyring operation.
pub const NOT_ENABLED: &str = "Gossip encryption is not enabled";

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes(&[byte; 32]).expect("a 32-byte key")
    }

    #[test]
    fn sealed_messages_open_with_any_installed_key_only() {
        let old = Keyring::new(key(1));
        let sealed = old.seal(Transport::Datagram, b"hello");
        assert_eq!(sealed[0], SEALED);
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            old.open(Transport::Datagram, &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        // A keyring that also holds the key (not as primary) opens it.
        let mut rotating = Keyring::new(key(2));
        rotating.install(key(1));
        assert_eq!(
            rotating.open(Transport::Datagram, &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        // Another key, another transport, a flipped bit, a cut message: dropped.
        assert_eq!(
            Keyring::new(key(3)).open(Transport::Datagram, &sealed),
            None
        );
        assert_eq!(old.open(Transport::Frame, &sealed), None);
        let mut flipped = sealed.clone();
        flipped[OVERHEAD] ^= 1;
        assert_eq!(old.open(Transport::Datagram, &flipped), None);
        assert_eq!(old.open(Transport::Datagram, &sealed[..10]), None);
        assert_eq!(old.open(Transport::Datagram, b"\x00plain"), None);
        // Two seals of one message differ (random nonces).
        assert_ne!(sealed, old.seal(Transport::Datagram, b"hello"));
    }

    #[test]
    fn sixteen_byte_keys_work_and_other_sizes_are_refused() {
        let short = Key::from_bytes(&[7; 16]).expect("a 16-byte key");
        let ring = Keyring::new(short);
        let sealed = ring.seal(Transport::Frame, b"x");
        assert_eq!(
            ring.open(Transport::Frame, &sealed).as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(Key::from_bytes(&[0; 24]), Err(KeyringError::Size(24)));
        assert_eq!(Key::from_bytes(&[]), Err(KeyringError::Size(0)));
        assert!(matches!(
            Key::parse("not base64!"),
            Err(KeyringError::Base64(_))
        ));
        let encoded = key(9).encoded();
        assert_eq!(Key::parse(&encoded), Ok(key(9)));
    }

    #[test]
    fn rotation_follows_consul_rules() {
        let mut ring = Keyring::new(key(1));
        ring.install(key(2));
        ring.install(key(2));
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.use_key(&key(3)), Err(KeyringError::NotInstalled));
        assert_eq!(ring.remove(&key(1)), Err(KeyringError::RemovePrimary));
        ring.use_key(&key(2)).expect("installed");
        assert_eq!(ring.primary(), &key(2));
        ring.remove(&key(1)).expect("not the primary");
        assert_eq!(ring.encoded(), vec![key(2).encoded()]);
        assert_eq!(
            KeyringError::RemovePrimary.to_string(),
            "Removing the primary key is not allowed"
        );
    }

    #[test]
    fn the_keyring_file_round_trips_privately() {
        let dir = tempfile::tempdir().expect("temporary dir");
        let path = dir.path().join("serf").join("remote.keyring");
        assert_eq!(Keyring::load(&path), Ok(None));
        let mut ring = Keyring::new(key(1));
        ring.install(key(2));
        ring.save(&path).expect("saved");
        assert_eq!(Keyring::load(&path), Ok(Some(ring.clone())));
        let text = std::fs::read_to_string(&path).expect("written");
        let listed: Vec<String> = serde_json::from_str(&text).expect("a JSON list");
        assert_eq!(listed, [key(1).encoded(), key(2).encoded()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Consul's own file (written by its agent) loads as well.
        std::fs::write(&path, format!("[\"{}\"]", key(5).encoded())).expect("written");
        assert_eq!(Keyring::load(&path), Ok(Some(Keyring::new(key(5)))));
        for bad in ["[]", "{}", "[\"AAAA\"]", "nonsense"] {
            std::fs::write(&path, bad).expect("written");
            assert!(Keyring::load(&path).is_err(), "{bad}");
        }
    }
}
