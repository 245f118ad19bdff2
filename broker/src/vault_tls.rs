//! The TLS client settings of the Vault connection, from `vault.*` of the config alone: a
//! pinned CA set (`ca_file`: those CAs and no others), the name Vault's certificate is checked
//! against (`tls_server_name`), and a client certificate (`client_cert_file`/
//! `client_key_file`). Without any of them reqwest's own rustls setup (the built-in public
//! roots, the address's host) is used unchanged.

use std::path::Path;
use std::sync::Arc;

use keyward_config::VaultConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::vault::VaultError;

fn setup(msg: String) -> VaultError {
    VaultError::Setup(msg)
}

/// The rustls client config for these settings, or `None` when none of them is set.
pub(crate) fn client_config(v: &VaultConfig) -> Result<Option<rustls::ClientConfig>, VaultError> {
    if v.ca_file.is_none() && v.tls_server_name.is_none() && v.client_cert_file.is_none() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = trust_anchors(v)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| setup(format!("vault.ca_file: {e}")))?;
    let name = match &v.tls_server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|e| setup(format!("vault.tls_server_name {n:?}: {e}")))?,
        ),
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS to Vault: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedVerifier {
            inner: webpki,
            name,
        }));
    let config = match (&v.client_cert_file, &v.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "vault.client_cert_file")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                setup(format!(
                    "vault.client_key_file {}: no usable PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                setup(format!(
                    "vault.client_cert_file {} and vault.client_key_file {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        // The config's validation names the missing half; never connect without it.
        (Some(_), None) => return Err(setup("vault.client_key_file is missing".into())),
        (None, Some(_)) => return Err(setup("vault.client_cert_file is missing".into())),
    };
    Ok(Some(config))
}

/// The CAs Vault's certificate may chain to: exactly those of `vault.ca_file` when it is set
/// (a pinned set: the built-in roots are not added), else the built-in public roots.
fn trust_anchors(v: &VaultConfig) -> Result<RootCertStore, VaultError> {
    let mut roots = RootCertStore::empty();
    match &v.ca_file {
        Some(path) => {
            let certs = read_certs(path, "vault.ca_file")?;
            for (i, c) in certs.into_iter().enumerate() {
                roots.add(c).map_err(|e| {
                    setup(format!(
                        "vault.ca_file {}: certificate {} is not a usable CA: {e}",
                        path.display(),
                        i + 1
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let pem =
        std::fs::read(path).map_err(|e| setup(format!("{setting} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("{setting} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(setup(format!(
            "{setting} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The settings a TLS failure depends on, named: appended to the reason of a failed handshake.
pub(crate) fn hint(v: &VaultConfig) -> String {
    let roots = match &v.ca_file {
        Some(p) => format!("verified against vault.ca_file {} only", p.display()),
        None => "verified against the built-in public roots (vault.ca_file unset)".to_owned(),
    };
    let name = match &v.tls_server_name {
        Some(n) => format!("for the name {n:?} of vault.tls_server_name"),
        None => "for the host of vault.addr (vault.tls_server_name unset)".to_owned(),
    };
    let client = match &v.client_cert_file {
        Some(p) => format!("client certificate vault.client_cert_file {}", p.display()),
        None => "no client certificate (vault.client_cert_file unset)".to_owned(),
    };
    format!("Vault's certificate is {roots}, {name}; {client}")
}

/// Whether a request's failure reason is a TLS handshake failure.
pub(crate) fn is_tls_failure(reason: &str) -> bool {
    [
        "certificate",
        "received fatal alert",
        "tls handshake",
        "HandshakeFailure",
    ]
    .iter()
    .any(|k| reason.contains(k))
}

/// The WebPKI verifier, checking the certificate for `name` instead of the address's host when
/// `vault.tls_server_name` is set. Everything else (chain, validity, signatures) is WebPKI's.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (its key thrown away): any well-formed CA will do.
    fn ca_pem() -> String {
        // `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 36500`.
        include_str!("testdata/vault-ca.pem").to_owned()
    }

    #[test]
    fn a_pinned_ca_file_is_the_whole_trust_set_and_the_built_in_roots_are_left_out() {
        let dir = std::env::temp_dir().join(format!("kw-pinned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("ca.pem");
        std::fs::write(&file, ca_pem()).expect("write");
        let mut v = VaultConfig::new("https://vault:8200");
        let public = trust_anchors(&v).expect("built-in roots");
        assert!(public.len() > 50, "the built-in roots: {}", public.len());
        v.ca_file = Some(file.clone());
        let pinned = trust_anchors(&v).expect("pinned");
        assert_eq!(pinned.len(), 1, "only the CA of vault.ca_file");
        std::fs::write(&file, format!("{}{}", ca_pem(), ca_pem())).expect("write");
        assert_eq!(
            trust_anchors(&v).expect("pinned").len(),
            2,
            "every CA of the bundle"
        );
        std::fs::write(&file, "no PEM here").expect("write");
        let e = trust_anchors(&v).expect_err("no certificate");
        assert!(e.to_string().contains("vault.ca_file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
