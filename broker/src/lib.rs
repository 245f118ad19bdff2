//! The secrets broker: logs in to Vault/OpenBao with the pod's bound service-account token,
//! keeps secrets fresh, and serves them over a local Unix socket, auditing every access.

pub mod cli;
