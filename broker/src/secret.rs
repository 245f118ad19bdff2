//! Types that hold secret material: values sealed in memory under a per-process key, and
//! strings (tokens) that are zeroized on drop and never shown by `Debug`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// A string that must not leak: zeroized on drop, `Debug` prints `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// AES-256-GCM under a random key made at start; the key schedule is zeroized on drop.
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sealer {
    /// A sealer with a fresh random key.
    pub fn new() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key");
        Self { cipher }
    }

    /// Encrypts `plaintext` under a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer does not fail");
        Sealed { nonce, ciphertext }
    }

    /// Decrypts a value sealed by this sealer; the plaintext is zeroized when dropped.
    pub fn open(&self, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.cipher
            .decrypt(&Nonce::from(sealed.nonce), sealed.ciphertext.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| SealError)
    }
}

/// A sealed value could not be opened (memory corruption, or another process's key).
#[derive(Debug, thiserror::Error)]
#[error("sealed value failed authentication")]
pub struct SealError;

/// Ciphertext of a cached value.
#[derive(Clone)]
pub struct Sealed {
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.ciphertext.len())
    }
}

/// Overwrites every string in a JSON value (after it has been sealed), so the parsed plaintext
/// does not linger in freed memory.
pub fn scrub_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(m) => m.values_mut().for_each(scrub_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_ciphertext_hides_plaintext() {
        let s = Sealer::new();
        let sealed = s.seal(b"canary-7f3a");
        assert!(!sealed.ciphertext.windows(11).any(|w| w == b"canary-7f3a"));
        assert_eq!(s.open(&sealed).expect("open").as_slice(), b"canary-7f3a");
        // Another process's key cannot open it.
        assert!(Sealer::new().open(&sealed).is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = SecretString::new("hvs.canary".into());
        assert_eq!(format!("{t:?}"), "<redacted>");
        let s = Sealer::new();
        let sealed = s.seal(b"canary");
        assert!(!format!("{sealed:?} {s:?}").contains("canary"));
    }

    #[test]
    fn scrub_empties_strings() {
        let mut v = serde_json::json!({"a": "x", "b": ["y"], "c": {"d": "z"}, "n": 1});
        scrub_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": "", "b": [""], "c": {"d": ""}, "n": 1})
        );
    }
}
