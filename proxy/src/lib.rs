//! The mTLS proxy: SPIFFE identity from Vault PKI, inbound and outbound mTLS, identity allow lists.
//!
//! - `server`: the listeners ([`Proxy`], [`Limits`]); `conn` splices their bytes.
//! - `authz` (private): every allow/deny decision and its typed reason; `tls` asks it from the
//!   certificate verifiers, `server` after the handshake and on every policy change.
//! - `svid`: X.509-SVID verification and the [`TrustBundle`]; `tls`: the rustls configs.
//! - `identity`: the workload certificate ([`IdentityStore`], [`Rotator`], the [`CsrSigner`] seam).
//! - `policy`: the inbound allow lists ([`Policy`]), reloaded from `proxy.policy_file`.
//! - `config`, `metrics`, `admin`, `exposure`, `proxy_protocol`: settings, `/metrics` and
//!   `/ready`, the exposed-app-port check, the PROXY v2 header for apps.
//!
//! The modules other crates use stay public under their names; the types most callers need are
//! re-exported here.

pub mod admin;
mod authz;
pub mod config;
mod conn;
pub mod exposure;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod server;
pub mod svid;
pub mod tls;

pub use config::{IdentityConfig, InboundConfig, OutboundConfig, ProxyConfig};
pub use identity::{CsrSigner, IdentityError, IdentityStore, Rotator, SignedCert};
pub use metrics::Metrics;
pub use policy::Policy;
pub use server::{Limits, Proxy};
pub use svid::TrustBundle;
