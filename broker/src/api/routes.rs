//! The socket API's routes: which request goes to which handler, and the query of a
//! long-poll. Each handler asks `crate::access` for the decision (audited there) and
//! `responses` for the body.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use keyward_audit::Caller;
use tokio_util::sync::CancellationToken;

use super::responses::{self, json_response, secret_response, ApiError};
use super::MAX_BODY_BYTES;
use crate::access;
use crate::config::valid_name;
use crate::Inner;

/// The audit action of a secret read.
const READ: &str = "secret.read";

/// Routes one request.
pub async fn handle(
    req: Request<Incoming>,
    inner: &Inner,
    caller: &Caller,
    shutdown: &CancellationToken,
) -> Response<Full<Bytes>> {
    let answer = if req.method() == Method::POST && req.uri().path() == "/v1/events" {
        event(req, inner, caller).await
    } else {
        route(&req, inner, caller, shutdown).await
    };
    match answer {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

/// The events `POST /v1/events` records (what `keyward exec` did to its app on a new version).
const EVENTS: [&str; 2] = ["exec.signal", "exec.restart"];
/// Longest `detail` of an event.
const MAX_EVENT_DETAIL: usize = 256;

/// The body of `POST /v1/events`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    event: String,
    secret: String,
    version: u64,
    #[serde(default)]
    detail: String,
}

/// `POST /v1/events`: audits an action the caller reports having taken for a secret it may
/// read (the exec wrapper's signal or restart), attributed to the caller's peer credentials.
/// Unknown secrets and uid denials are audited like reads; nothing is served.
async fn event(
    req: Request<Incoming>,
    inner: &Inner,
    caller: &Caller,
) -> Result<Response<Full<Bytes>>, ApiError> {
    use http_body_util::BodyExt;
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES as usize)
        .collect()
        .await
        .map_err(|_| ApiError::TooLarge)?
        .to_bytes();
    let ev: EventBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "event: expected JSON {{\"event\", \"secret\", \"version\", \"detail\"}} \
             ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let Some(action) = EVENTS.into_iter().find(|a| *a == ev.event) else {
        return Err(ApiError::BadRequest(format!(
            "event: expected one of {}",
            EVENTS.join(", ")
        )));
    };
    if ev.detail.len() > MAX_EVENT_DETAIL
        || !ev.detail.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(ApiError::BadRequest(format!(
            "detail: at most {MAX_EVENT_DETAIL} printable ASCII characters"
        )));
    }
    check_name(&ev.secret)?;
    let entry = access::authorize(inner, caller, action, &ev.secret)?;
    let mut rec = keyward_audit::Record::new(action, keyward_audit::Decision::Ok);
    rec.caller = Some(caller.clone());
    rec.secret = Some(ev.secret);
    rec.path = Some(entry.spec.path.clone());
    rec.version = Some(ev.version);
    if !ev.detail.is_empty() {
        rec.reason = Some(ev.detail);
    }
    access::audit(inner, &rec)?;
    Ok(json_response(
        StatusCode::OK,
        br#"{"recorded":true}"#.to_vec(),
    ))
}

async fn route(
    req: &Request<Incoming>,
    inner: &Inner,
    caller: &Caller,
    shutdown: &CancellationToken,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(ApiError::TooLarge);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path
        .strip_prefix("/v1/")
        .ok_or_else(|| ApiError::NotFound(format!("no route {path:?}; the API is under /v1/")))?
        .split('/')
        .collect();
    match segments.as_slice() {
        ["health", "ready"] => match inner.readiness() {
            Ok(()) => Ok(json_response(StatusCode::OK, br#"{"ready":true}"#.to_vec())),
            Err(reason) => Err(ApiError::NotReady(reason)),
        },
        ["secrets"] | ["secrets", ""] => list(inner, caller),
        ["secrets", name] => {
            let query = Query::parse(req.uri().query(), inner.config.socket.max_wait)?;
            secret_json(inner, caller, name, query, shutdown).await
        }
        ["secrets", name, key] => secret_raw(inner, caller, name, key),
        ["identity"] => identity(inner, caller),
        _ => Err(ApiError::NotFound(format!("no route {path:?}"))),
    }
}

/// `?index=N&wait=30s` of a long-poll.
#[derive(Debug, Default, PartialEq)]
struct Query {
    index: Option<u64>,
    wait: Option<Duration>,
}

impl Query {
    fn parse(q: Option<&str>, max_wait: Duration) -> Result<Self, ApiError> {
        let mut out = Query::default();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "index" => {
                    out.index = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("index: expected a version number, got {v:?}"))
                    })?)
                }
                "wait" => {
                    let d = humantime::parse_duration(v).map_err(|_| {
                        ApiError::BadRequest(format!(
                            "wait: expected a duration like 30s, got {v:?}"
                        ))
                    })?;
                    out.wait = Some(d.min(max_wait));
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}; expected index and wait",
                        other.chars().take(64).collect::<String>()
                    )))
                }
            }
        }
        if out.wait.is_some() && out.index.is_none() {
            return Err(ApiError::BadRequest("wait needs index".into()));
        }
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "invalid secret name: expected 1-128 characters of [A-Za-z0-9_.-]".into(),
        ))
    }
}

/// Longest a long-poll answer waits for the files rendered from the new version.
const FILES_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

async fn secret_json(
    inner: &Inner,
    caller: &Caller,
    name: &str,
    query: Query,
    shutdown: &CancellationToken,
) -> Result<Response<Full<Bytes>>, ApiError> {
    check_name(name)?;
    let entry = access::authorize(inner, caller, READ, name)?;
    if let Some(index) = query.index {
        let wait = query.wait.unwrap_or(inner.config.socket.max_wait);
        let mut rx = entry.subscribe();
        let moved = rx.wait_for(|v| *v > index);
        tokio::select! {
            _ = moved => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
        // A new version is answered once the files rendered from it are replaced (bounded: a
        // file that cannot be written does not hold the answer).
        if let Some(v) = entry.value().map(|v| v.version).filter(|v| *v > index) {
            let _ = tokio::time::timeout(FILES_SETTLE, entry.files_settled(v)).await;
        }
    }
    let value = access::servable(inner, caller, READ, entry)?;
    access::allow_read(inner, caller, name, &value, None)?;
    let body = responses::secret_json_body(name, &value, &inner.sealer)?;
    Ok(responses::with_version(
        secret_response("application/json", body),
        value.version,
    ))
}

fn secret_raw(
    inner: &Inner,
    caller: &Caller,
    name: &str,
    key: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    check_name(name)?;
    let entry = access::authorize(inner, caller, READ, name)?;
    let value = access::servable(inner, caller, READ, entry)?;
    let Some(sealed) = value.fields.get(key) else {
        access::deny_unknown_key(inner, caller, name)?;
        return Err(ApiError::NotFound(format!(
            "secret {name} has no key {:?}",
            key.chars().take(128).collect::<String>()
        )));
    };
    access::allow_read(inner, caller, name, &value, Some(key))?;
    let body = responses::secret_raw_body(sealed, &inner.sealer)?;
    Ok(responses::with_version(
        secret_response("text/plain; charset=utf-8", body),
        value.version,
    ))
}

fn list(inner: &Inner, caller: &Caller) -> Result<Response<Full<Bytes>>, ApiError> {
    access::allow_list(inner, caller)?;
    // A caller sees only the secrets its uid may read: the names, paths and Vault errors of
    // the others are not its business.
    let visible = inner
        .entries
        .values()
        .filter(|e| access::may_access(&e.spec, caller));
    Ok(json_response(
        StatusCode::OK,
        responses::list_body(visible).into_bytes(),
    ))
}

fn identity(inner: &Inner, caller: &Caller) -> Result<Response<Full<Bytes>>, ApiError> {
    let svid = access::read_identity(inner, caller)?;
    Ok(secret_response(
        "application/json",
        responses::identity_body(&svid),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let max = Duration::from_secs(60);
        assert_eq!(Query::parse(None, max).expect("empty"), Query::default());
        let q = Query::parse(Some("index=3&wait=30s"), max).expect("valid");
        assert_eq!(q.index, Some(3));
        assert_eq!(q.wait, Some(Duration::from_secs(30)));
        let q = Query::parse(Some("index=3&wait=1h"), max).expect("capped");
        assert_eq!(q.wait, Some(max));
        for bad in ["index=x", "wait=5s", "index=1&wait=soon", "foo=1"] {
            assert!(Query::parse(Some(bad), max).is_err(), "{bad}");
        }
    }
}
