//! The seam to the CA: a CSR goes out, a signed certificate comes back.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::IdentityError;

/// What the CA returned.
#[derive(Clone)]
pub struct SignedCert {
    /// The leaf first, then any intermediates, PEM.
    pub chain_pem: String,
    /// The issuing CA chain (intermediates and root), PEM.
    pub ca_chain_pem: String,
    /// The CA's request id, for the audit log.
    pub request_id: Option<String>,
}

/// Signs a CSR for the requested lifetime.
pub trait CsrSigner: Send + Sync {
    /// Signs `csr_pem`; the error names where it failed.
    fn sign<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<SignedCert, IdentityError>> + Send + 'a>>;

    /// The path named in audit records, e.g. `pki_int/sign/spiffe`.
    fn audit_path(&self) -> String {
        String::new()
    }
}
