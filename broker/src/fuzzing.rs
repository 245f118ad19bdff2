//! Vault's answers through the code the broker runs on them, without the network: the seam of
//! the `vault_response` fuzz target (`fuzz/fuzz_targets/vault_response.rs`) and of the tests
//! that keep what it found. Not an API (hidden from the docs; may change with the fuzz target).
//!
//! Each function takes what `Vault::send` hands on (the HTTP status and the body, read into a
//! buffer bounded by `vault.max_response_bytes`) and runs the product's own decoding of it:
//! `vault::answer` and `source::from_vault_answer` for a secret read (KV v2 or a leased
//! logical read, picked by the path as `source::for_spec` picks the source),
//! `vault::login_answer` for a login, `vault::answer` for renewals and revocations
//! (`auth/token/renew-self`, `sys/leases/renew`, `sys/leases/revoke`). The broker makes no
//! other call to Vault whose answer it reads (no `lookup`).

use crate::secret::ZeroBuf;
use crate::source::{Fetched, SourceError};
use crate::vault::{TokenState, VaultError, VaultResponse};

pub use crate::vault::MAX_LEASE_DURATION;

/// The body as `Vault::send` reads it: into a wiped buffer of at most `limit` bytes.
fn body(
    status: u16,
    bytes: &[u8],
    limit: usize,
) -> Result<(reqwest::StatusCode, ZeroBuf), VaultError> {
    // hyper refuses a status line outside 100..=999 before the broker sees the answer.
    let status = reqwest::StatusCode::from_u16(status)
        .map_err(|_| VaultError::Unreachable(format!("invalid HTTP status {status}")))?;
    let mut buf = ZeroBuf::new(8 << 10, limit);
    buf.extend(bytes).map_err(|_| VaultError::TooLarge {
        what: "body".into(),
        limit,
    })?;
    Ok((status, buf))
}

/// A secret read of `path` answered with `status` and `bytes`: what its source's fetch returns.
pub fn read_answer(
    path: &str,
    status: u16,
    bytes: &[u8],
    limit: usize,
) -> Result<Fetched, SourceError> {
    let (status, buf) = body(status, bytes, limit)?;
    let mut resp = crate::vault::answer(status, buf)?;
    crate::source::from_vault_answer(&mut resp, path)
}

/// A login (`POST auth/kubernetes/login`) answered with `status` and `bytes`: the token the
/// broker would hold and its accessor.
pub fn login_answer(
    status: u16,
    bytes: &[u8],
    limit: usize,
) -> Result<(TokenState, String), VaultError> {
    let (status, buf) = body(status, bytes, limit)?;
    crate::vault::login_answer("auth/kubernetes/login", status, buf)
}

/// A renewal or revocation answered with `status` and `bytes`: the response whose
/// `lease_duration` the broker takes as the TTL granted.
pub fn renewal_answer(
    status: u16,
    bytes: &[u8],
    limit: usize,
) -> Result<VaultResponse, VaultError> {
    let (status, buf) = body(status, bytes, limit)?;
    crate::vault::answer(status, buf)
}

/// The token's `X-Vault-Token` value, for an oracle comparing it with the answer's
/// `client_token`.
pub fn token_bytes(token: &TokenState) -> &[u8] {
    token.header_bytes()
}
