//! The mTLS proxy: SPIFFE identity from Vault PKI, inbound and outbound mTLS, identity allow lists.

pub mod admin;
mod authz;
pub mod config;
pub mod conn;
pub mod exposure;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod server;
pub mod svid;
pub mod tls;

// The test PKI is test support, kept out of the crate's API: the unit tests include the same file
// as the integration tests, which names this crate `keyward_proxy`.
#[cfg(test)]
extern crate self as keyward_proxy;
#[cfg(test)]
#[path = "../tests/support/testpki.rs"]
mod testpki;
