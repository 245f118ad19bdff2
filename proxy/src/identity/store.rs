//! The identity every listener and upstream presents, and the trust bundle peers are checked
//! against.

use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::issue::Svid;
use crate::svid::{BundleCell, TrustBundle};

/// The current SVID, shared by every TLS config. Resolves our certificate for rustls and holds
/// the trust bundle peers are verified against.
#[derive(Debug)]
pub struct IdentityStore {
    trust_domain: String,
    current: RwLock<Option<Arc<Svid>>>,
    bundle: BundleCell,
    generation: watch::Sender<u64>,
}

impl IdentityStore {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            current: RwLock::new(None),
            bundle: BundleCell::default(),
            generation: watch::channel(0).0,
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current SVID, if one was issued.
    pub fn current(&self) -> Option<Arc<Svid>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// The trust bundle peers are verified against.
    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.get()
    }

    /// Installs a new SVID (and its bundle) for new handshakes.
    pub fn install(&self, svid: Svid) {
        self.bundle.set((**svid.bundle()).clone());
        if let Ok(mut g) = self.current.write() {
            *g = Some(Arc::new(svid));
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes every time a new SVID is installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

impl rustls::server::ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|s| s.certified().clone())
    }
}

impl rustls::client::ResolvesClientCert for IdentityStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current().map(|s| s.certified().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
