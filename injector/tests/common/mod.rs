//! Set-up shared by the injector's integration tests (`vault_settings.rs`, `metrics_port.rs`,
//! `contract_version.rs`): a pod as the webhook gets it, run through `mutate`.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use keyward_injector::config::InjectorConfig;
use keyward_injector::mutate::{mutate, to_json_patch, MutateError, Outcome, PatchOp, PodView};
use serde_json::{json, Value};

/// The pod `p` with `annotations` and `containers`.
pub fn pod(annotations: Value, containers: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {"containers": containers},
    }))
    .expect("pod")
}

/// The pod `p` with `annotations` and one container, `app` (image `app:1`).
pub fn one_container_pod(annotations: Value) -> Pod {
    pod(annotations, json!([{"name": "app", "image": "app:1"}]))
}

/// The operations `mutate` adds to `pod` (in namespace `shop`) under `cfg`, or its refusal;
/// a pod it skips fails the test.
pub fn mutate_pod(pod: &Pod, cfg: &InjectorConfig) -> Result<Vec<PatchOp>, MutateError> {
    let spec = pod.spec.clone().expect("spec");
    let view = PodView {
        namespace: Some("shop"),
        metadata: &pod.metadata,
        spec: &spec,
    };
    match mutate(view, cfg)? {
        Outcome::Patch(ops) => Ok(ops),
        Outcome::Skipped(r) => panic!("skipped: {r:?}"),
    }
}

/// The operations as JSON values.
pub fn op_values(ops: &[PatchOp]) -> Vec<Value> {
    ops.iter()
        .map(|op| serde_json::to_value(op).expect("json"))
        .collect()
}

/// `pod` as JSON with the operations applied.
pub fn apply(pod: &Pod, ops: &[PatchOp]) -> Value {
    let mut doc = serde_json::to_value(pod).expect("json");
    json_patch::patch(&mut doc, &to_json_patch(ops).expect("patch")).expect("applies");
    doc
}
