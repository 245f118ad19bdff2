//! The workload's SPIFFE identity: an ECDSA P-256 key generated in process, a CSR with exactly
//! one URI SAN and an empty subject, signed by a [`CsrSigner`] (Vault PKI in production), and
//! rotated at about 2/3 of the certificate's lifetime.
//!
//! [`IdentityStore`] is the rustls certificate resolver of every listener and upstream. Rotation
//! swaps the `Arc` it hands out: handshakes already done keep their keys, new handshakes get the
//! new certificate, and no connection is touched.
//!
//! - `signer`: the seam to the CA ([`CsrSigner`], [`SignedCert`]);
//! - `csr`: the key and the CSR ([`key_and_csr`]);
//! - `issue`: one issuance, checked into an [`Svid`];
//! - `store`: the [`IdentityStore`] rustls resolves from;
//! - `rotation`: when to renew, and the [`Rotator`] task;
//! - `backoff`: retry delays after a failure ([`Backoff`]).

use std::time::{SystemTime, UNIX_EPOCH};

mod backoff;
mod csr;
mod issue;
mod rotation;
mod signer;
mod store;

pub use backoff::Backoff;
pub use csr::{key_and_csr, KeyAndCsr};
pub use issue::{issue, Svid};
pub use rotation::Rotator;
pub use signer::{CsrSigner, SignedCert};
pub use store::IdentityStore;

/// Why a certificate could not be obtained. `Sign` comes from the CA (Vault), the others from us
/// or from what the CA returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot generate key or CSR: {0}")]
    Csr(String),
    #[error("CA refused to sign the CSR: {0}")]
    Sign(String),
    #[error("CA returned an unusable certificate: {0}")]
    Invalid(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("audit log: {0}")]
    Audit(String),
}

/// The current time, Unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
