//! An in-memory secret source for tests: the test sets and changes the value, chooses the
//! lease each fetch grants, and reads back what the broker asked (fetches, renewals,
//! revocations). It lives with the tests, outside the library, so no product code can
//! construct it; it plugs in through the public `SecretSource` trait like any new source.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyward_broker::source::{
    Fetched, Lease, Renewal, Revocation, SecretSource, SourceError, SourceFuture, SourceKind,
};
use keyward_broker::SecretString;
use tokio::sync::watch;

/// What the memory source calls its audit actions.
pub const MEMORY: SourceKind = SourceKind {
    name: "memory",
    fetch_action: "memory.fetch",
    renew_action: "memory.lease_renew",
    revoke_action: "memory.revoke",
};

/// One renewal the broker asked for.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub lease_id: String,
    pub asked: Duration,
    pub granted: Duration,
    pub at: SystemTime,
}

/// What the source holds and what it was asked.
#[derive(Debug, Default)]
pub struct State {
    pub data: serde_json::Map<String, serde_json::Value>,
    pub version: u64,
    /// Each fetch grants a new lease of this TTL (renewable or not); `None`: no lease (KV-like).
    pub lease: Option<(Duration, bool)>,
    /// Renewals grant at most this (a max TTL).
    pub max_grant: Option<Duration>,
    pub fetches: u64,
    pub issued: Vec<String>,
    pub renewals: Vec<Renewed>,
    pub revoked: Vec<String>,
}

/// A handle: clones share the state, so the test keeps one and gives one to the broker.
#[derive(Clone)]
pub struct MemorySource {
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

impl MemorySource {
    /// A source holding `data` (a JSON object) at version 1, without a lease.
    pub fn new(data: serde_json::Value) -> Self {
        let state = State {
            data: data.as_object().cloned().expect("data is a JSON object"),
            version: 1,
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Every fetch grants a new lease of `ttl`.
    pub fn with_lease(self, ttl: Duration, renewable: bool) -> Self {
        self.update(|s| s.lease = Some((ttl, renewable)));
        self
    }

    /// As the broker gets it.
    pub fn dyn_source(&self) -> Arc<dyn SecretSource> {
        Arc::new(self.clone())
    }

    /// Replaces the value: the next fetch sees a new version.
    pub fn set(&self, data: serde_json::Value) {
        self.update(|s| {
            s.data = data.as_object().cloned().expect("data is a JSON object");
            s.version += 1;
        });
    }

    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("memory source state"))
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock().expect("memory source state"));
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// Waits (at most `deadline`) until `cond` holds of the state; panics naming `what`.
    pub async fn wait_until(&self, what: &str, deadline: Duration, cond: impl Fn(&State) -> bool) {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if self.read(&cond) {
                    return;
                }
                rx.changed().await.expect("the source is alive");
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out after {deadline:?} waiting for {what}"));
    }
}

impl SecretSource for MemorySource {
    fn kind(&self) -> SourceKind {
        MEMORY
    }

    fn fetch(&self) -> SourceFuture<'_, Result<Fetched, SourceError>> {
        let fetched = self.update(|s| {
            s.fetches += 1;
            let mut f = Fetched::new(s.data.clone())
                .with_version(s.version)
                .with_request_id(format!("memory-{}", s.fetches));
            if let Some((ttl, renewable)) = s.lease {
                let id = format!("memory/lease/{}", s.issued.len() + 1);
                s.issued.push(id.clone());
                f = f.with_lease(Lease {
                    id: SecretString::new(id),
                    renewable,
                    ttl,
                });
            }
            f
        });
        Box::pin(std::future::ready(Ok(fetched)))
    }

    fn renew<'a>(
        &'a self,
        lease_id: &'a SecretString,
        increment: Duration,
    ) -> SourceFuture<'a, Result<Renewal, SourceError>> {
        let result = self.update(|s| {
            let id = lease_id.expose().to_owned();
            if !s.issued.contains(&id) || s.revoked.contains(&id) {
                return Err(SourceError::LeaseGone(format!("lease {id} not found")));
            }
            let granted = s.max_grant.map_or(increment, |m| m.min(increment));
            s.renewals.push(Renewed {
                lease_id: id,
                asked: increment,
                granted,
                at: SystemTime::now(),
            });
            Ok(Renewal {
                ttl: granted,
                request_id: format!("memory-renew-{}", s.renewals.len()),
            })
        });
        Box::pin(std::future::ready(result))
    }

    fn revoke<'a>(
        &'a self,
        lease_id: &'a SecretString,
    ) -> SourceFuture<'a, Result<Revocation, SourceError>> {
        self.update(|s| s.revoked.push(lease_id.expose().to_owned()));
        Box::pin(std::future::ready(Ok(Revocation::default())))
    }
}
