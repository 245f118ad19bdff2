//! The socket API's responses: JSON bodies, and each error's status and code in one place.
//!
//! Bodies that carry secret values are built in a zeroizing buffer and handed to hyper as
//! `Bytes` that own it, so the plaintext is wiped once the response is written.

use std::fmt::Write as _;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use zeroize::Zeroizing;

use super::MAX_BODY_BYTES;
use std::sync::Arc;

use crate::cache::{Cached, Entry};
use crate::secret::{Sealed, Sealer};
use crate::SvidPem;

/// An API error: its status, code and detail, mapped in one place.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    UnknownSecret(String),
    MethodNotAllowed,
    Denied(String),
    TooLarge,
    NotReady(String),
    AuditUnavailable(String),
}

impl ApiError {
    pub(crate) fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "bad_request", d.clone()),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d.clone()),
            ApiError::UnknownSecret(n) => (
                StatusCode::NOT_FOUND,
                "unknown_secret",
                format!("no secret named {n:?} is declared"),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "only GET is supported".into(),
            ),
            ApiError::Denied(d) => (StatusCode::FORBIDDEN, "denied", d.clone()),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {MAX_BODY_BYTES} bytes"),
            ),
            ApiError::NotReady(d) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", d.clone()),
            ApiError::AuditUnavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!("the access could not be audited, so it is refused: {d}"),
            ),
        }
    }

    pub(crate) fn response(&self) -> Response<Full<Bytes>> {
        let (status, code, detail) = self.parts();
        let body = serde_json::json!({"error": code, "detail": detail});
        json_response(status, body.to_string().into_bytes())
    }
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A response whose body holds secret plaintext: wiped when hyper drops it.
pub(crate) fn secret_response(
    content_type: &'static str,
    body: Zeroizing<Vec<u8>>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_owner(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// Adds the value's version header.
pub(crate) fn with_version(mut resp: Response<Full<Bytes>>, version: u64) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert("x-keyward-version", http::HeaderValue::from(version));
    resp
}

/// `{"name", "data": {...}, "version", "lease_expires_at", "renewable"}`, the values opened
/// straight into a wiped buffer.
pub(crate) fn secret_json_body(
    name: &str,
    value: &Cached,
    sealer: &Sealer,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let mut body = Zeroizing::new(Vec::with_capacity(256));
    body.extend_from_slice(b"{\"name\":");
    body.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
    body.extend_from_slice(b",\"data\":{");
    for (i, (k, sealed)) in value.fields.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
        body.push(b':');
        let plain = sealer
            .open(sealed)
            .map_err(|e| ApiError::NotReady(e.to_string()))?;
        body.extend_from_slice(&plain);
    }
    let mut tail = String::new();
    let _ = write!(
        tail,
        "}},\"version\":{},\"lease_expires_at\":{},\"renewable\":{}}}",
        value.version,
        value
            .lease
            .as_ref()
            .map(|l| format!("\"{}\"", rfc3339(l.expires_at)))
            .unwrap_or_else(|| "null".into()),
        value.lease.as_ref().is_some_and(|l| l.renewable)
    );
    body.extend_from_slice(tail.as_bytes());
    Ok(body)
}

/// One key's value: a JSON string as its text, any other value as JSON.
pub(crate) fn secret_raw_body(
    sealed: &Sealed,
    sealer: &Sealer,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let json = sealer
        .open(sealed)
        .map_err(|e| ApiError::NotReady(e.to_string()))?;
    Ok(if json.first() == Some(&b'"') {
        match serde_json::from_slice::<String>(&json) {
            Ok(s) => Zeroizing::new(s.into_bytes()),
            Err(_) => json,
        }
    } else {
        json
    })
}

/// `{"secrets": [...]}`: each secret's state, never its value.
pub(crate) fn list_body<'a>(entries: impl Iterator<Item = &'a Arc<Entry>>) -> String {
    let items: Vec<serde_json::Value> = entries
        .map(|e| {
            let v = e.value();
            serde_json::json!({
                "name": e.spec.name,
                "path": e.spec.path,
                "required": e.spec.required,
                "fetched": v.is_some(),
                "version": v.as_ref().map(|v| v.version),
                "lease_expires_at": v.as_ref().and_then(|v| v.lease.as_ref()).map(|l| rfc3339(l.expires_at)),
                "renewable": v.as_ref().and_then(|v| v.lease.as_ref()).is_some_and(|l| l.renewable),
                "error": e.last_error(),
            })
        })
        .collect();
    serde_json::json!({ "secrets": items }).to_string()
}

/// The SVID with its private key, in a wiped buffer (the JSON value it was built from is
/// wiped too).
pub(crate) fn identity_body(svid: &SvidPem) -> Zeroizing<Vec<u8>> {
    let mut body = serde_json::json!({
        "spiffe_id": svid.spiffe_id,
        "cert_chain_pem": svid.chain_pem,
        "private_key_pem": svid.key_pem.as_str(),
        "bundle_pem": svid.bundle_pem,
        "expires_at": svid.expires_at,
    });
    let bytes = Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default());
    crate::secret::scrub_json(&mut body);
    bytes
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(ApiError::TooLarge.parts().0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ApiError::UnknownSecret("x".into()).parts().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::Denied("x".into()).parts().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::NotReady("x".into()).parts().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::AuditUnavailable("x".into()).parts().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::BadRequest("x".into()).parts().0,
            StatusCode::BAD_REQUEST
        );
    }
}
