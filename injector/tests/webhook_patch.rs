//! Golden tests: AdmissionReview fixtures under `tests/golden/`, the returned patch applied with
//! the json-patch crate, and the resulting pod compared with `NAME.pod.json`. Run with
//! `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change (then review the diff).

use std::path::{Path, PathBuf};

use base64::Engine;
use keyward_injector::config::{InjectorConfig, SidecarMode};
use keyward_injector::review::{review, ReviewOutcome};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config_for(name: &str) -> InjectorConfig {
    let mut cfg = InjectorConfig::default();
    if name.starts_with("legacy") {
        cfg.mode = SidecarMode::Legacy;
    }
    cfg
}

/// Reviews `body` and returns (response, pod after applying the patch, outcome).
fn review_and_apply(body: &[u8], cfg: &InjectorConfig) -> (Value, Value, ReviewOutcome) {
    let reviewed = review(body, cfg).expect("review");
    let response: Value = serde_json::from_slice(&reviewed.body).expect("response JSON");
    let request: Value = serde_json::from_slice(body).expect("request JSON");
    let mut pod = request["request"]["object"].clone();
    if let Some(patch) = response["response"]["patch"].as_str() {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch JSON");
        json_patch::patch(&mut pod, &patch).expect("patch applies");
    }
    (response, pod, reviewed.outcome)
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

const FIXTURES: &[&str] = &[
    "minimal",
    "full",
    "securitycontext",
    "generatename",
    "mesh",
    "legacy",
];

#[test]
fn fixtures_match_golden_pods() {
    for name in FIXTURES {
        let cfg = config_for(name);
        let body =
            std::fs::read(golden_dir().join(format!("{name}.review.json"))).expect("fixture");
        let (response, pod, outcome) = review_and_apply(&body, &cfg);
        assert_eq!(outcome, ReviewOutcome::Injected, "{name}");
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(response["response"]["allowed"], true, "{name}");
        assert_eq!(response["response"]["uid"], format!("uid-{name}"));
        let text = serde_json::to_string_pretty(&pod).expect("json") + "\n";
        check_golden(&golden_dir().join(format!("{name}.pod.json")), &text);
    }
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    for name in FIXTURES {
        let cfg = config_for(name);
        let path = golden_dir().join(format!("{name}.review.json"));
        let body = std::fs::read(&path).expect("fixture");
        let (_, pod, _) = review_and_apply(&body, &cfg);
        let mut again: Value = serde_json::from_slice(&body).expect("json");
        again["request"]["object"] = pod.clone();
        let again = serde_json::to_vec(&again).expect("json");
        let (response, pod2, outcome) = review_and_apply(&again, &cfg);
        assert_eq!(outcome, ReviewOutcome::Skipped, "{name}");
        assert_eq!(response["response"]["allowed"], true);
        assert!(
            response["response"].get("patch").is_none(),
            "{name}: {response}"
        );
        assert_eq!(pod, pod2, "{name}");
    }
}

#[test]
fn golden_pods_have_the_sidecar_first_and_the_socket_in_app_containers() {
    let pod = read_json(&golden_dir().join("full.pod.json"));
    let init = pod["spec"]["initContainers"]
        .as_array()
        .expect("initContainers");
    assert_eq!(init[0]["name"], "keyward");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert_eq!(
        init[0]["startupProbe"]["exec"]["command"],
        serde_json::json!(["keyward", "probe"])
    );
    // keyward.io/containers: app,migrate — the metrics container gets nothing.
    let mounts = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .map(|m| m.iter().any(|m| m["name"] == "keyward-socket"))
            .unwrap_or(false)
    };
    assert!(mounts(&init[1]), "migrate init container");
    assert!(mounts(&pod["spec"]["containers"][0]), "app");
    assert!(!mounts(&pod["spec"]["containers"][1]), "metrics");
    // Only the sidecar mounts the token.
    let token_mounts: Vec<&Value> = init
        .iter()
        .chain(pod["spec"]["containers"].as_array().expect("containers"))
        .filter(|c| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["name"] == "keyward-token"))
        })
        .collect();
    assert_eq!(token_mounts.len(), 1);
    assert_eq!(token_mounts[0]["name"], "keyward");
    // The pod's own fsGroup is kept and handed to the broker as the socket group.
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 2000);
    let config = init[0]["env"][0]["value"].as_str().expect("KEYWARD_CONFIG");
    assert!(config.contains("group: 2000"), "{config}");
    assert_eq!(
        pod["metadata"]["annotations"]["keyward.io/status"],
        "injected"
    );

    let legacy = read_json(&golden_dir().join("legacy.pod.json"));
    assert_eq!(legacy["spec"]["containers"][0]["name"], "keyward");
    assert!(legacy["spec"]["containers"][0]
        .get("restartPolicy")
        .is_none());
    assert_eq!(legacy["spec"]["initContainers"][0]["name"], "setup");
    assert!(legacy["spec"]["initContainers"][0]
        .get("volumeMounts")
        .is_none());
}

#[test]
fn patch_escapes_annotation_keys_and_creates_missing_parents() {
    let cfg = InjectorConfig::default();
    let body = std::fs::read(golden_dir().join("minimal.review.json")).expect("fixture");
    let reviewed = review(&body, &cfg).expect("review");
    let response: Value = serde_json::from_slice(&reviewed.body).expect("json");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().expect("patch"))
        .expect("base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("ops");
    let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
    for parent in [
        "/metadata/annotations",
        "/spec/initContainers",
        "/spec/volumes",
        "/spec/containers/0/env",
        "/spec/containers/0/volumeMounts",
        "/spec/securityContext",
    ] {
        assert!(paths.contains(&parent), "{parent} not created: {paths:?}");
    }
    // With annotations present, the status key is added with `/` escaped as `~1`.
    let body = std::fs::read(golden_dir().join("full.review.json")).expect("fixture");
    let reviewed = review(&body, &cfg).expect("review");
    let response: Value = serde_json::from_slice(&reviewed.body).expect("json");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().expect("patch"))
        .expect("base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("ops");
    assert!(
        ops.iter()
            .any(|o| o["path"] == "/metadata/annotations/keyward.io~1status"),
        "{ops:?}"
    );
    assert!(ops.iter().any(|o| o["path"] == "/spec/initContainers/0"));
    assert!(ops.iter().any(|o| o["path"] == "/spec/volumes/-"));
    assert_eq!(keyward_injector::mutate::escape("a~b/c"), "a~0b~1c");
}

#[test]
fn job_and_cronjob_templates_via_inject_match_golden() {
    let input = std::fs::read_to_string(golden_dir().join("job.input.yaml")).expect("fixture");
    let out = keyward_injector::offline::inject_stream(&input, &InjectorConfig::default())
        .expect("inject");
    check_golden(&golden_dir().join("job.golden.yaml"), &out);
    // Idempotent offline too.
    let again =
        keyward_injector::offline::inject_stream(&out, &InjectorConfig::default()).expect("inject");
    assert_eq!(out, again);
    let docs = keyward_injector::offline::parse_stream(&out).expect("parse");
    assert_eq!(docs.len(), 3);
    assert_eq!(
        docs[0]["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "keyward"
    );
    assert_eq!(
        docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "keyward"
    );
    assert_eq!(
        docs[1]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]
            ["keyward.io/status"],
        "injected"
    );
    assert_eq!(docs[2]["data"]["key"], "value");
    assert!(docs[2].get("spec").is_none());
}
