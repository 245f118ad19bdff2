//! Authorization policy: which SPIFFE IDs may connect to each inbound port. Default deny.
//!
//! The policy comes from the inline `allow` lists, or from `proxy.policy_file`, which is polled
//! every 250 ms. A new valid file replaces the policy at once and every open connection
//! re-checks its peer against it (closing within the second when no longer allowed); an invalid
//! file keeps the previous policy, is logged with its reason, and counted in
//! `keyward_proxy_policy_errors_total`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyward_identity::{IdPattern, SpiffeId};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{pattern_in_domain, ProxyConfig};
use crate::metrics::Metrics;

/// How often the policy file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// One entry per inbound listen port; ports not listed deny everyone.
    pub inbound: Vec<PortPolicy>,
}

/// The allow list of one inbound port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPolicy {
    /// The inbound listener's port (the port of its `listen` address).
    pub port: u16,
    /// SPIFFE IDs (`spiffe://td/ns/a/sa/b`) or patterns whose last segment is `*`
    /// (`spiffe://td/ns/a/sa/*`, `spiffe://td/ns/a/*`) allowed to connect.
    #[serde(default)]
    pub allow: Vec<IdPattern>,
}

/// Allow lists by inbound port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    ports: HashMap<u16, Vec<IdPattern>>,
}

impl Policy {
    /// The inline `allow` lists of the config.
    pub fn from_config(cfg: &ProxyConfig) -> Self {
        Self {
            ports: cfg
                .inbound
                .iter()
                .map(|l| (l.listen.port(), l.allow.clone()))
                .collect(),
        }
    }

    /// A policy from explicit allow lists.
    pub fn from_ports(ports: impl IntoIterator<Item = (u16, Vec<IdPattern>)>) -> Self {
        Self {
            ports: ports.into_iter().collect(),
        }
    }

    /// Parses a policy file's text; patterns must be in `trust_domain`.
    pub fn parse(text: &str, trust_domain: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err(
                "file is empty (write it atomically: write a new file, then rename)".into(),
            );
        }
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut ports = HashMap::new();
        for (i, p) in file.inbound.into_iter().enumerate() {
            for a in &p.allow {
                if !pattern_in_domain(a, trust_domain) {
                    return Err(format!(
                        "inbound[{i}].allow: {a} is not in trust domain {trust_domain}"
                    ));
                }
            }
            if ports.insert(p.port, p.allow).is_some() {
                return Err(format!("inbound[{i}].port: port {} listed twice", p.port));
            }
        }
        Ok(Self { ports })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, PolicyError> {
        Self::load_bytes(path, trust_domain).map(|(p, _)| p)
    }

    /// Reads and parses a policy file; also returns the bytes read, for [`watch_file`].
    pub fn load_bytes(path: &Path, trust_domain: &str) -> Result<(Self, Vec<u8>), PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let p = Self::parse(&String::from_utf8_lossy(&bytes), trust_domain).map_err(|reason| {
            PolicyError::Invalid {
                path: path.to_owned(),
                reason,
            }
        })?;
        Ok((p, bytes))
    }

    /// The pattern that allows `id` on `port`, if any.
    pub fn allows(&self, port: u16, id: &SpiffeId) -> Option<&IdPattern> {
        self.ports.get(&port)?.iter().find(|p| p.matches(id))
    }
}

/// Polls `path` and publishes each new valid policy on `tx` until cancelled. `loaded` is the
/// content the current policy was parsed from ([`Policy::load_bytes`]).
pub async fn watch_file(
    path: PathBuf,
    trust_domain: String,
    loaded: Vec<u8>,
    tx: watch::Sender<Arc<Policy>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut last = Some(loaded);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::fs::read(&path).await;
        let bytes = match now {
            Ok(b) => Some(b),
            Err(e) => {
                if last.is_some() {
                    metrics.policy_errors.inc();
                    warn!(path = %path.display(), error = %e, "Cannot read policy file, keeping the previous policy");
                }
                last = None;
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        last = bytes;
        let text = String::from_utf8_lossy(last.as_deref().unwrap_or_default());
        match Policy::parse(&text, &trust_domain) {
            Ok(p) => {
                if **tx.borrow() != p {
                    info!(path = %path.display(), "Policy reloaded");
                    metrics.policy_reloads.inc();
                    tx.send_replace(Arc::new(p));
                }
            }
            Err(reason) => {
                metrics.policy_errors.inc();
                warn!(path = %path.display(), %reason, "Invalid policy file, keeping the previous policy");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    const GOOD: &str = r#"
inbound:
  - port: 15443
    allow: ["spiffe://td/ns/shop/sa/frontend", "spiffe://td/ns/ops/*"]
  - port: 15444
    allow: []
"#;

    #[test]
    fn parses_and_matches() {
        let p = Policy::parse(GOOD, "td").expect("valid");
        assert_eq!(
            p.allows(15443, &id("spiffe://td/ns/shop/sa/frontend"))
                .map(|p| p.as_str()),
            Some("spiffe://td/ns/shop/sa/frontend")
        );
        assert!(p.allows(15443, &id("spiffe://td/ns/ops/sa/x")).is_some());
        assert!(p
            .allows(15443, &id("spiffe://td/ns/shop/sa/other"))
            .is_none());
        assert!(p
            .allows(15444, &id("spiffe://td/ns/shop/sa/frontend"))
            .is_none());
        assert!(p
            .allows(1, &id("spiffe://td/ns/shop/sa/frontend"))
            .is_none());
    }

    #[test]
    fn rejects_bad_files() {
        for (text, needle) in [
            ("", "empty"),
            (
                "inbound: [{port: 1, allow: ['spiffe://other/x']}]",
                "trust domain",
            ),
            ("inbound: [{port: 1}, {port: 1}]", "listed twice"),
            ("inbound: [{port: 1, allow: ['spiffe://td/*/x']}]", "'*'"),
            ("inbound: [{port: 1, alow: []}]", "unknown field"),
            ("inbound: [{port: 70000}]", "port"),
            ("{", "did not find"),
        ] {
            let err = Policy::parse(text, "td").expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn reload_keeps_old_policy_on_invalid_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let (first, bytes) = Policy::load_bytes(&path, "td").expect("valid");
        let (tx, mut rx) = watch::channel(Arc::new(first.clone()));
        let metrics = Metrics::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch_file(
            path.clone(),
            "td".into(),
            bytes,
            tx,
            metrics.clone(),
            cancel.clone(),
        ));

        // An invalid file is counted and changes nothing.
        std::fs::write(&path, "inbound: [{port: 1, bogus: 2}]").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.policy_errors.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "error not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(**rx.borrow_and_update(), first);

        // A valid one takes effect.
        std::fs::write(&path, "inbound: [{port: 15443, allow: []}]").expect("write");
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .expect("reload within 2s")
            .expect("sender alive");
        assert!(rx
            .borrow()
            .allows(15443, &id("spiffe://td/ns/shop/sa/frontend"))
            .is_none());
        assert_eq!(metrics.policy_reloads.get(), 1);

        // A deleted file is counted too, and keeps the policy in force.
        let in_force = rx.borrow_and_update().clone();
        let errors = metrics.policy_errors.get();
        std::fs::remove_file(&path).expect("remove");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.policy_errors.get() == errors {
            assert!(
                tokio::time::Instant::now() < deadline,
                "deletion not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*rx.borrow(), in_force);
        // Garbage bytes likewise.
        std::fs::write(&path, [0xff, 0x00, 0x7b, 0x5b]).expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.policy_errors.get() == errors + 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "garbage not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*rx.borrow(), in_force);
        cancel.cancel();
        task.await.expect("join");
    }
}
