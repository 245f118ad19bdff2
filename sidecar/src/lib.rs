//! `keyward sidecar`: the composition of the broker (Vault, secrets, socket, audit) and the mTLS
//! proxy (SVID, listeners, policy) in one process. The broker and the proxy are siblings that
//! know nothing of each other; this crate wires the proxy's identity store into the broker's
//! socket (`/v1/identity`), the broker's Vault token into the proxy's CSR signer, and both into
//! one admin endpoint, one runtime and one shutdown.

pub mod cli;
mod metrics_listener;
mod run;
pub mod sizing;

pub use run::{prepare, run, validate, Prepared, SidecarError, VaultSigner};
