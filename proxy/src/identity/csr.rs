//! Key generation: a fresh P-256 key, kept in zeroizing buffers, and the CSR for it.

use keyward_identity::SpiffeId;
use zeroize::Zeroizing;

use super::IdentityError;

/// A fresh private key (PKCS#8, zeroized on drop) and the CSR for it.
pub struct KeyAndCsr {
    pub key_der: Zeroizing<Vec<u8>>,
    pub key_pem: Zeroizing<String>,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Generates a P-256 key and a CSR for `id`: exactly one URI SAN, empty subject.
pub fn key_and_csr(id: &SpiffeId) -> Result<KeyAndCsr, IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = id
        .as_str()
        .try_into()
        .map_err(|e: rcgen::Error| IdentityError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let der = Zeroizing::new(key.serialize_der());
    let pem = Zeroizing::new(key.serialize_pem());
    Ok(KeyAndCsr {
        key_der: der,
        key_pem: pem,
        csr_pem: csr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_has_one_uri_san_and_empty_subject() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").expect("id");
        let csr = key_and_csr(&id).expect("csr").csr_pem;
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parse");
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(matches!(
            &params.params.subject_alt_names[0],
            rcgen::SanType::URI(u) if u.as_str() == "spiffe://td/ns/a/sa/b"
        ));
        assert_eq!(params.params.distinguished_name.iter().count(), 0);
    }
}
