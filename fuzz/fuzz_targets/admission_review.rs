//! AdmissionReview → patch: `review` never panics on any body; every answer is a v1
//! AdmissionReview for the same uid; an injection's patch applies to the pod it came with, and
//! reviewing the patched pod again changes nothing.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use keyward_injector::config::{InjectorConfig, SidecarMode};
use keyward_injector::review::{review, ReviewOutcome};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check(body: &[u8], cfg: &InjectorConfig) {
    let Ok(answer) = review(body, cfg) else {
        return;
    };
    let request: Value = serde_json::from_slice(body).expect("accepted body is JSON");
    let response: Value = serde_json::from_slice(&answer.body).expect("answer is JSON");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    let resp = &response["response"];
    assert_eq!(resp["uid"], request["request"]["uid"]);
    let allowed = resp["allowed"].as_bool().expect("allowed");
    match answer.outcome {
        ReviewOutcome::Denied => {
            assert!(!allowed);
            assert!(resp.get("patch").is_none());
        }
        ReviewOutcome::Skipped | ReviewOutcome::Ignored => {
            assert!(allowed);
            assert!(resp.get("patch").is_none());
        }
        ReviewOutcome::Injected => {
            assert!(allowed);
            assert_eq!(resp["patchType"], "JSONPatch");
            let patch = BASE64
                .decode(resp["patch"].as_str().expect("patch is a string"))
                .expect("patch is base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&patch).expect("patch is a JSON Patch");
            let mut object = request["request"]["object"].clone();
            // The typed Pod fills in a missing `metadata` as empty, and the patch then adds
            // below a parent that is not there. The API server always sends metadata. (A pod
            // without containers is denied, so it never reaches this arm.)
            if !object.get("metadata").is_some_and(Value::is_object) {
                return;
            }
            json_patch::patch(&mut object, &patch)
                .unwrap_or_else(|e| panic!("the patch does not apply to the pod: {e}"));
            let mut again = request.clone();
            again["request"]["object"] = object;
            let second = review(&serde_json::to_vec(&again).expect("json"), cfg)
                .expect("the patched review is answered");
            assert_eq!(
                second.outcome,
                ReviewOutcome::Skipped,
                "second pass: {}",
                second.detail
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let native = InjectorConfig::default();
    check(data, &native);
    let legacy = InjectorConfig {
        mode: SidecarMode::Legacy,
        ..InjectorConfig::default()
    };
    check(data, &legacy);
});
