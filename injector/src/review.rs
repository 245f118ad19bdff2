//! One AdmissionReview in, one AdmissionReview out: no I/O, so it is tested without a socket.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use serde_json::Value;

use crate::config::InjectorConfig;
use crate::mutate::{self, MutateError, Outcome, PodView};

/// The only AdmissionReview version this webhook speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A request body that is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("request body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "unsupported AdmissionReview apiVersion '{0}': this webhook speaks admission.k8s.io/v1 \
         (set admissionReviewVersions: [v1])"
    )]
    ApiVersion(String),
    #[error("expected kind AdmissionReview, got '{0}'")]
    Kind(String),
    #[error("AdmissionReview is malformed: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// How a review was answered, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReviewOutcome {
    /// The pod was patched.
    Injected,
    /// The pod was allowed unchanged (opt-out, system namespace, already injected).
    Skipped,
    /// The pod was refused (invalid annotations, conflicts).
    Denied,
    /// Not a Pod CREATE: allowed unchanged.
    Ignored,
}

impl ReviewOutcome {
    /// Label value in `keyward_injector_reviews_total{outcome=...}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Ignored => "ignored",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The response AdmissionReview, JSON.
    pub body: Vec<u8>,
    /// How it was answered.
    pub outcome: ReviewOutcome,
    /// Why, in a few words (denial message or skip reason).
    pub detail: String,
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], cfg: &InjectorConfig) -> Result<Reviewed, ReviewError> {
    let mut value: Value = serde_json::from_slice(body).map_err(ReviewError::Json)?;
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api_version != API_VERSION {
        return Err(ReviewError::ApiVersion(api_version.to_owned()));
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(kind.to_owned()));
    }
    // The object is read as a typed Pod below; keep it out of the generic parse.
    let object = value
        .get_mut("request")
        .and_then(|r| r.get_mut("object"))
        .map(Value::take);
    let parsed: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(ReviewError::Shape)?;
    let req: AdmissionRequest<DynamicObject> =
        parsed.try_into().map_err(|_| ReviewError::NoRequest)?;
    let resp = AdmissionResponse::from(&req);

    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod" && req.sub_resource.is_none();
    if !is_pod || req.operation != Operation::Create {
        return finish(resp, ReviewOutcome::Ignored, "not a Pod CREATE".to_owned());
    }
    let pod: Pod = match object.map(serde_json::from_value::<Pod>) {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => return deny(resp, format!("cannot read the Pod: {e}")),
        None => return deny(resp, "the AdmissionReview carries no Pod object".to_owned()),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return deny(resp, "the Pod has no spec".to_owned());
    };
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref());
    let view = PodView {
        namespace,
        metadata: &pod.metadata,
        spec,
    };
    match mutate::mutate(view, cfg) {
        Ok(Outcome::Skipped(reason)) => {
            finish(resp, ReviewOutcome::Skipped, reason.as_str().to_owned())
        }
        Ok(Outcome::Patch(ops)) => {
            // kube's `with_patch` serializes the patch bytes as a JSON array of numbers; the API
            // server accepts that, but a base64 string is what its Go types define and is a
            // quarter of the size, so the patch is set here.
            let patch = serde_json::to_vec(&ops).map_err(ReviewError::Shape)?;
            let mut review =
                serde_json::to_value(resp.into_review()).map_err(ReviewError::Shape)?;
            if let Some(Value::Object(r)) = review.get_mut("response") {
                r.insert("patchType".to_owned(), Value::from("JSONPatch"));
                r.insert("patch".to_owned(), Value::from(BASE64.encode(patch)));
            }
            let body = serde_json::to_vec(&review).map_err(ReviewError::Shape)?;
            Ok(Reviewed {
                body,
                outcome: ReviewOutcome::Injected,
                detail: String::new(),
            })
        }
        Err(e @ (MutateError::Annotation(_) | MutateError::Conflict(_))) => {
            deny(resp, e.to_string())
        }
    }
}

fn deny(mut resp: AdmissionResponse, message: String) -> Result<Reviewed, ReviewError> {
    resp.allowed = false;
    resp.result = Status::failure(&format!("keyward: {message}"), "Invalid").with_code(400);
    finish(resp, ReviewOutcome::Denied, message)
}

fn finish(
    resp: AdmissionResponse,
    outcome: ReviewOutcome,
    detail: String,
) -> Result<Reviewed, ReviewError> {
    let body = serde_json::to_vec(&resp.into_review()).map_err(ReviewError::Shape)?;
    Ok(Reviewed {
        body,
        outcome,
        detail,
    })
}
