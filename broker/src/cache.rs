//! The secret cache: per declared secret, the latest value sealed under the process key, its
//! version and lease, and a watch channel that long-polls wait on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::SecretSpec;
use crate::lifecycle::{self, HeldLease};
use crate::secret::{Sealed, Sealer, SecretString, ZeroBuf};
use crate::source::SecretSource;
use tokio::sync::watch;

/// A lease the broker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: SecretString,
    pub renewable: bool,
    /// When the lease (as last renewed) ends.
    pub expires_at: SystemTime,
    /// The duration asked for at each renewal.
    pub duration: Duration,
}

impl HeldLease for Lease {
    fn renewable(&self) -> bool {
        self.renewable
    }

    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

/// A fetched value.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Each key's value as JSON, sealed.
    pub fields: BTreeMap<String, Sealed>,
    /// KV v2 version, or a counter of fetches for other secrets.
    pub version: u64,
    pub lease: Option<Lease>,
}

impl Cached {
    /// The value is unusable after its lease ended.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| !lifecycle::still_running(l.expires_at, now))
    }
}

#[derive(Debug, Default)]
struct State {
    value: Option<Cached>,
    last_error: Option<String>,
    /// Leases replaced by a re-fetch that have not ended; revoked at shutdown.
    old_leases: Vec<Lease>,
}

/// One declared secret and the source it comes from.
pub struct Entry {
    pub spec: SecretSpec,
    pub source: Arc<dyn SecretSource>,
    state: RwLock<State>,
    version: watch::Sender<u64>,
    /// The files rendered from this secret (`crate::deliver`): per file, the last version of
    /// this secret it was rendered from (or failed to render).
    files: watch::Sender<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("spec", &self.spec)
            .field("source", &self.source.kind().name)
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub fn new(spec: SecretSpec, source: Arc<dyn SecretSource>) -> Self {
        Self {
            spec,
            source,
            state: RwLock::new(State::default()),
            version: watch::channel(0).0,
            files: watch::channel(BTreeMap::new()).0,
        }
    }

    /// The current value, if any (possibly expired).
    pub fn value(&self) -> Option<Cached> {
        self.state.read().ok().and_then(|s| s.value.clone())
    }

    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.state.read().ok().and_then(|s| s.last_error.clone())
    }

    /// Stores a new value and wakes long-polls if its version moved.
    pub fn store(&self, value: Cached) {
        let version = value.version;
        if let Ok(mut s) = self.state.write() {
            if let Some(old) = s.value.take() {
                if let Some(lease) = old.lease {
                    if value.lease.as_ref().map(|l| l.id.expose()) != Some(lease.id.expose()) {
                        s.old_leases.push(lease);
                    }
                }
            }
            let now = SystemTime::now();
            s.old_leases
                .retain(|l| lifecycle::still_running(l.expires_at, now));
            s.value = Some(value);
            s.last_error = None;
        }
        self.version.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
    }

    /// Extends the current lease after a renewal, and wakes the channel's receivers (the
    /// version stays: a long-poll waiting for a newer one keeps waiting; a rendered file that
    /// shows the lease's expiry is rendered again).
    pub fn renewed(&self, lease_id: &SecretString, expires_at: SystemTime) {
        let mut extended = false;
        if let Ok(mut s) = self.state.write() {
            if let Some(l) = s.value.as_mut().and_then(|v| v.lease.as_mut()) {
                if l.id.expose() == lease_id.expose() {
                    l.expires_at = expires_at;
                    extended = true;
                }
            }
        }
        if extended {
            self.version.send_modify(|_| {});
        }
    }

    pub fn set_error(&self, error: String) {
        if let Ok(mut s) = self.state.write() {
            s.last_error = Some(error);
        }
    }

    /// Every lease held for this secret (current and replaced), ended or not.
    pub fn leases(&self) -> Vec<Lease> {
        self.state
            .read()
            .map(|s| {
                s.value
                    .iter()
                    .filter_map(|v| v.lease.clone())
                    .chain(s.old_leases.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets every lease (after revocation).
    pub fn clear_leases(&self) {
        if let Ok(mut s) = self.state.write() {
            s.old_leases.clear();
            if let Some(v) = s.value.as_mut() {
                if let Some(l) = v.lease.as_mut() {
                    l.expires_at = SystemTime::UNIX_EPOCH;
                }
            }
        }
    }

    /// Declares a file rendered from this secret, so [`Entry::files_settled`] waits for it.
    pub fn file_reads(&self, file: &str) {
        self.files.send_modify(|f| {
            f.entry(file.to_owned()).or_insert(0);
        });
    }

    /// The file was rendered (or failed to render) from `version` of this secret.
    pub fn file_rendered(&self, file: &str, version: u64) {
        self.files.send_modify(|f| {
            f.insert(file.to_owned(), version);
        });
    }

    /// Resolves once every file rendered from this secret has been rendered from `version` or
    /// a newer one: a long-poll answers a new version only then, so an app told of it (or
    /// signalled by `keyward exec`) finds its files already replaced.
    pub async fn files_settled(&self, version: u64) {
        let mut rx = self.files.subscribe();
        let _ = rx.wait_for(|f| f.values().all(|v| *v >= version)).await;
    }

    /// A receiver of version changes, for long-polls.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// Builds a cached value from a secret's data object: selects `key` if set, seals each field.
/// Returns the error text to record when the data is not what the spec expects.
pub fn seal_fields(
    sealer: &Sealer,
    spec: &SecretSpec,
    data: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, Sealed>, String> {
    let mut out = BTreeMap::new();
    // Serialized into a buffer that wipes every allocation it used (a growing `Vec` would
    // leave its earlier ones, holding the value, in freed memory).
    let seal = |v: &serde_json::Value| sealer.seal(ZeroBuf::json(v).as_slice());
    match &spec.key {
        Some(k) => match data.get(k) {
            Some(v) => {
                out.insert(k.clone(), seal(v));
            }
            None => {
                return Err(format!(
                    "key {k:?} not found in {} (keys: {})",
                    spec.path,
                    data.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        },
        None => {
            for (k, v) in data {
                out.insert(k.clone(), seal(v));
            }
        }
    }
    Ok(out)
}
