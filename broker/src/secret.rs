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

/// A byte buffer that leaves no copy of its contents behind: it grows by moving into a fresh
/// allocation and wiping the old one (a `Vec` would leave the old one in freed memory), wipes
/// its whole capacity when dropped, and refuses to grow past `limit`. Vault responses are read
/// into it, and the JSON the broker seals or sends is written into it.
pub struct ZeroBuf {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
}

/// A [`ZeroBuf`] would have grown past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

impl ZeroBuf {
    /// An empty buffer that allocates `capacity` (at most `limit`) up front.
    pub fn new(capacity: usize, limit: usize) -> Self {
        Self {
            buf: Zeroizing::new(Vec::with_capacity(capacity.min(limit))),
            limit,
        }
    }

    /// Appends `data`, or leaves the buffer as it was if that would pass the limit.
    pub fn extend(&mut self, data: &[u8]) -> Result<(), TooLarge> {
        let needed = self
            .buf
            .len()
            .checked_add(data.len())
            .filter(|n| *n <= self.limit)
            .ok_or(TooLarge { limit: self.limit })?;
        if needed > self.buf.capacity() {
            let cap = needed
                .max(self.buf.capacity().saturating_mul(2))
                .max(256)
                .min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(cap));
            grown.extend_from_slice(&self.buf);
            // The old allocation is wiped (whole capacity) as it is dropped here.
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Serializes `value` as JSON into a new buffer (no limit).
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        let mut out = Self::new(256, usize::MAX);
        // Writing to memory fails only past the limit, and there is none.
        let _ = serde_json::to_writer(&mut out, value);
        out
    }
}

impl AsRef<[u8]> for ZeroBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::io::Write for ZeroBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.extend(data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::OutOfMemory, e))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for ZeroBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZeroBuf({} bytes)", self.buf.len())
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
    fn zero_buf_grows_to_its_limit_and_no_further() {
        let mut b = ZeroBuf::new(4, 1000);
        for _ in 0..100 {
            b.extend(b"0123456789").expect("within the limit");
        }
        assert_eq!(b.len(), 1000);
        assert_eq!(b.extend(b"x"), Err(TooLarge { limit: 1000 }));
        assert_eq!(b.len(), 1000, "a refused write leaves the buffer as it was");
        assert!(b.as_slice().chunks(10).all(|c| c == b"0123456789"));
        let j = ZeroBuf::json(&serde_json::json!({"k": "v".repeat(1000)}));
        assert_eq!(j.len(), 1000 + 8);
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
