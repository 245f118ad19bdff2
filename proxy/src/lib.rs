//! The mTLS proxy: SPIFFE identity from Vault PKI, inbound and outbound mTLS, identity allow lists.

pub mod admin;
pub mod config;
pub mod conn;
pub mod exposure;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod server;
pub mod svid;
pub mod testpki;
pub mod tls;
