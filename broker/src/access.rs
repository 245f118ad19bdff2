//! Who may read what: the uid allow lists of the secrets and of the workload identity
//! (`identity.allow_uids`), and the audit record of each access decision. A decision that
//! cannot be audited is not acted on: the request is refused.

use std::sync::Arc;
use std::time::SystemTime;

use keyward_audit::{Caller, Decision, Record};
use tracing::warn;

use crate::api::ApiError;
use crate::cache::{Cached, Entry};
use crate::config::SecretSpec;
use crate::metrics::RequestLabel;
use crate::{IdentityAccess, Inner, SvidPem};

/// Counts the decision and writes its record; refuses when the record cannot be written.
pub(crate) fn audit(inner: &Inner, rec: &Record) -> Result<(), ApiError> {
    inner
        .metrics
        .requests
        .get_or_create(&RequestLabel {
            decision: rec.decision.as_str().into(),
        })
        .inc();
    inner.audit.record(rec).map_err(|e| {
        inner.metrics.audit_failures.inc();
        warn!(error = %e, "Audit write failed; refusing the request");
        ApiError::AuditUnavailable(e.to_string())
    })
}

/// A record of `caller`'s access to the secret `name`.
fn access_record(
    inner: &Inner,
    caller: &Caller,
    action: &'static str,
    name: &str,
    decision: Decision,
) -> Record {
    let mut rec = Record::new(action, decision);
    rec.caller = Some(caller.clone());
    rec.secret = Some(name.to_owned());
    if let Some(e) = inner.entries.get(name) {
        rec.path = Some(e.spec.path.clone());
    }
    rec
}

/// Looks the secret up and applies its uid allow list; denials are audited.
pub(crate) fn authorize<'a>(
    inner: &'a Inner,
    caller: &Caller,
    action: &'static str,
    name: &str,
) -> Result<&'a Arc<Entry>, ApiError> {
    let Some(entry) = inner.entries.get(name) else {
        let rec =
            access_record(inner, caller, action, name, Decision::Deny).reason("unknown secret");
        audit(inner, &rec)?;
        return Err(ApiError::UnknownSecret(name.to_owned()));
    };
    if let Some(reason) = refusal(&entry.spec, caller) {
        let rec = access_record(inner, caller, action, name, Decision::Deny).reason(reason.clone());
        audit(inner, &rec)?;
        warn!(
            secret = name,
            uid = caller.uid,
            pid = caller.pid,
            container = %caller.container,
            "Secret access denied"
        );
        return Err(ApiError::Denied(reason));
    }
    Ok(entry)
}

/// The cached value if servable, else the audited refusal.
pub(crate) fn servable(
    inner: &Inner,
    caller: &Caller,
    action: &'static str,
    entry: &Entry,
) -> Result<Cached, ApiError> {
    let name = &entry.spec.name;
    let refuse = |reason: String| {
        let rec = access_record(inner, caller, action, name, Decision::Deny).reason(reason.clone());
        audit(inner, &rec)?;
        Err(ApiError::NotReady(reason))
    };
    match entry.value() {
        None => refuse(format!(
            "secret {name} not fetched yet{}",
            entry
                .last_error()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        Some(v) if v.expired(SystemTime::now()) => refuse(format!(
            "cached value of {name} expired and could not be refreshed: {}",
            entry
                .last_error()
                .unwrap_or_else(|| "refresh pending".into())
        )),
        Some(v) => Ok(v),
    }
}

/// Whether `uid` is in the secret's allow list (no list: anyone who can open the socket).
pub(crate) fn may_read(spec: &SecretSpec, uid: u32) -> bool {
    spec.allow_uids
        .as_ref()
        .is_none_or(|uids| uids.contains(&uid))
}

/// Whether a request on `container`'s socket may read the secret: `allow_containers` (a
/// certificate's container) names it; no list: every socket. The pod's shared socket (an
/// empty name) is none of the listed containers.
pub(crate) fn may_read_on(spec: &SecretSpec, container: &str) -> bool {
    spec.allow_containers
        .as_ref()
        .is_none_or(|names| !container.is_empty() && names.iter().any(|n| n == container))
}

/// Whether `caller` may read the secret ([`may_read`] and [`may_read_on`]).
pub(crate) fn may_access(spec: &SecretSpec, caller: &Caller) -> bool {
    refusal(spec, caller).is_none()
}

/// Why `caller` may not read the secret, or `None` when it may.
fn refusal(spec: &SecretSpec, caller: &Caller) -> Option<String> {
    if !may_read(spec, caller.uid) {
        return Some(format!(
            "uid {} is not in the secret's allow list",
            caller.uid
        ));
    }
    if !may_read_on(spec, &caller.container) {
        return Some(if caller.container.is_empty() {
            "the secret is read only on its containers' sockets, not the pod's shared socket"
                .to_owned()
        } else {
            format!(
                "container {} is not in the secret's allow_containers",
                caller.container
            )
        });
    }
    None
}

/// Records an allowed read of `value` (of one `key`, or all of it) before it is served.
pub(crate) fn allow_read(
    inner: &Inner,
    caller: &Caller,
    name: &str,
    value: &Cached,
    key: Option<&str>,
) -> Result<(), ApiError> {
    let mut rec = access_record(inner, caller, "secret.read", name, Decision::Allow);
    rec.version = Some(value.version);
    rec.lease_hmac = value
        .lease
        .as_ref()
        .map(|l| inner.audit.hmac(l.id.expose()));
    rec.reason = key.map(|k| format!("key {k}"));
    audit(inner, &rec)
}

/// Records a refused read of a key the secret does not have.
pub(crate) fn deny_unknown_key(inner: &Inner, caller: &Caller, name: &str) -> Result<(), ApiError> {
    let rec =
        access_record(inner, caller, "secret.read", name, Decision::Deny).reason("unknown key");
    audit(inner, &rec)
}

/// Records a listing (each caller sees only the secrets [`may_read`] allows it).
pub(crate) fn allow_list(inner: &Inner, caller: &Caller) -> Result<(), ApiError> {
    let mut rec = Record::new("secret.list", Decision::Allow);
    rec.caller = Some(caller.clone());
    audit(inner, &rec)
}

/// The workload identity for `caller` if its uid is in `identity.allow_uids` and a
/// certificate is issued; each outcome is audited.
pub(crate) fn read_identity(inner: &Inner, caller: &Caller) -> Result<SvidPem, ApiError> {
    let Some(IdentityAccess { source, allow_uids }) = inner.identity_access() else {
        return Err(ApiError::NotFound(
            "no workload identity: this pod declares no mesh ports, so no certificate is issued"
                .into(),
        ));
    };
    let mut rec = Record::new("identity.read", Decision::Allow);
    rec.caller = Some(caller.clone());
    if !allow_uids.contains(&caller.uid) {
        let reason = format!(
            "uid {} is not in identity.allow_uids (keyward.io/identity-uids)",
            caller.uid
        );
        rec.decision = Decision::Deny;
        rec.reason = Some(reason.clone());
        audit(inner, &rec)?;
        warn!(
            uid = caller.uid,
            pid = caller.pid,
            "Workload identity access denied"
        );
        return Err(ApiError::Denied(reason));
    }
    let Some(svid) = source.current() else {
        rec.decision = Decision::Deny;
        rec.reason = Some("certificate not issued yet".into());
        audit(inner, &rec)?;
        return Err(ApiError::NotReady(
            "workload certificate not issued yet".into(),
        ));
    };
    rec.reason = Some(svid.spiffe_id.clone());
    audit(inner, &rec)?;
    Ok(svid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(allow_uids: Option<Vec<u32>>) -> SecretSpec {
        spec_on(allow_uids, None)
    }

    fn spec_on(allow_uids: Option<Vec<u32>>, allow_containers: Option<Vec<String>>) -> SecretSpec {
        SecretSpec {
            name: "db".into(),
            path: "secret/data/db".into(),
            key: None,
            required: true,
            allow_uids,
            allow_containers,
            issue: None,
        }
    }

    #[test]
    fn a_secret_without_an_allow_list_is_readable_by_any_uid_else_only_by_those_listed() {
        assert!(may_read(&spec(None), 0) && may_read(&spec(None), 4242));
        assert!(may_read(&spec(Some(vec![1000, 1001])), 1001));
        assert!(!may_read(&spec(Some(vec![1000])), 1001));
        assert!(
            !may_read(&spec(Some(vec![])), 1000),
            "an empty list allows nobody"
        );
    }

    #[test]
    fn a_secret_with_allowed_containers_is_read_only_on_their_sockets() {
        let caller = |uid, container: &str| Caller::from_peer(1, uid, uid, "app".into(), container);
        let cert = spec_on(None, Some(vec!["web".into()]));
        assert!(may_access(&cert, &caller(1000, "web")));
        for other in ["app", "", "web2"] {
            assert!(!may_access(&cert, &caller(1000, other)), "{other:?}");
        }
        assert!(!may_access(
            &spec_on(None, Some(vec![])),
            &caller(1000, "web")
        ));
        assert!(may_access(&spec(None), &caller(1000, "")));
        let both = spec_on(Some(vec![1000]), Some(vec!["web".into()]));
        assert!(may_access(&both, &caller(1000, "web")));
        assert!(!may_access(&both, &caller(1001, "web")));
        assert!(refusal(&cert, &caller(1000, "app")).is_some_and(|r| r.contains("container app")));
    }
}
