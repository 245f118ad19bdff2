//! Files of the workload's SVID (`files[].identity`, issue 13 §4): the certificate chain, the
//! private key or the trust bundle, for apps that terminate their own mTLS. Rendered when the
//! identity source (the proxy's store) has an SVID and again each time it is replaced, written
//! like every rendered file (atomic, the file's mode, the pod's group) and recorded with one
//! `file.render` record per render naming the SPIFFE ID and the SVID's expiry.
//!
//! Who may read the key: the same rule as `GET /v1/identity` (`identity.allow_uids`). The
//! sidecar cannot see the uid of the process that opens a file, so the rule is applied at
//! admission: the injector puts an SVID file only into a container whose `runAsUser` is in
//! `keyward.io/identity-uids`, in that container's own volume; the config refuses such a file
//! when `identity.allow_uids` is empty.

use std::sync::Arc;

use keyward_audit::{Decision, Record};
use keyward_config::{FileSpec, IdentityPart};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::write;
use crate::Inner;

/// Renders the `part` of the SVID into `spec` whenever the SVID changes, until `shutdown`.
pub(super) async fn identity_loop(
    inner: Arc<Inner>,
    spec: FileSpec,
    part: IdentityPart,
    shutdown: CancellationToken,
) {
    let Some(access) = inner.identity_access() else {
        warn!(file = %spec.name, "No workload identity in this process (keyward broker without the proxy): the SVID file is not written");
        shutdown.cancelled().await;
        return;
    };
    let mut changes = access.source.changes();
    let mut written: Option<String> = None;
    let mut renders = 0u64;
    loop {
        if let Some(rx) = changes.as_mut() {
            rx.borrow_and_update();
        }
        if let Some(svid) = access.source.current() {
            let content: &[u8] = match part {
                IdentityPart::Certificate => svid.chain_pem.as_bytes(),
                IdentityPart::PrivateKey => svid.key_pem.as_bytes(),
                IdentityPart::Bundle => svid.bundle_pem.as_bytes(),
            };
            let digest = super::content_digest(&inner, content);
            // An empty bundle is not there yet (the proxy fetches it with the first SVID).
            if !content.is_empty() && written.as_ref() != Some(&digest) {
                renders += 1;
                let outcome = write::write_atomic(
                    &spec.dir,
                    &spec.path,
                    content,
                    spec.mode_bits(),
                    inner.config.socket.group,
                );
                let mut rec = Record::new(
                    "file.render",
                    if outcome.is_ok() {
                        Decision::Ok
                    } else {
                        Decision::Error
                    },
                );
                rec.secret = Some("identity".into());
                rec.path = Some(spec.dir.join(&spec.path).display().to_string());
                rec.version = Some(renders);
                let what = format!(
                    "file {} for container {}: SVID {} ({}) expires {}",
                    spec.name,
                    spec.container,
                    svid.spiffe_id,
                    match part {
                        IdentityPart::Certificate => "certificate",
                        IdentityPart::PrivateKey => "private key",
                        IdentityPart::Bundle => "trust bundle",
                    },
                    svid.expires_at
                );
                match outcome {
                    Ok(_) => {
                        info!(file = %spec.name, container = %spec.container, spiffe_id = %svid.spiffe_id, "Rendered SVID file");
                        rec.reason = Some(what);
                        written = Some(digest);
                    }
                    Err(e) => {
                        warn!(file = %spec.name, container = %spec.container, error = %e, "Cannot write SVID file; the previous one stays");
                        rec.reason = Some(format!("{what}: cannot write {}: {e}", spec.path));
                    }
                }
                let _ = inner.audit.record(&rec);
            }
        }
        match changes.as_mut() {
            Some(rx) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ok = rx.changed() => if ok.is_err() { shutdown.cancelled().await; return },
                }
            }
            None => {
                shutdown.cancelled().await;
                return;
            }
        }
    }
}
