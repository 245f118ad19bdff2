//! Admission rules as `accepts`/`rejects` cases: every bad input gets a denial whose message
//! names the annotation and what is wrong; skipped pods are allowed unchanged; malformed
//! reviews are errors (HTTP 400 in the server).

use keyward_injector::config::InjectorConfig;
use keyward_injector::review::{review, ReviewError, ReviewOutcome};
use serde_json::{json, Value};

fn pod_review(namespace: &str, annotations: Value, spec: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b7e1c7e-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "annotations": annotations},
                "spec": spec,
            },
        },
    }))
    .expect("json")
}

fn app_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]})
}

fn run(namespace: &str, annotations: Value, spec: Value) -> (ReviewOutcome, Value) {
    let body = pod_review(namespace, annotations, spec);
    let reviewed = review(&body, &InjectorConfig::default()).expect("review");
    let v: Value = serde_json::from_slice(&reviewed.body).expect("json");
    (reviewed.outcome, v["response"].clone())
}

/// The pod is admitted with a patch.
#[track_caller]
fn accepts(annotations: Value) {
    let (outcome, resp) = run("shop", annotations.clone(), app_spec());
    assert_eq!(outcome, ReviewOutcome::Injected, "{annotations}: {resp}");
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_string());
}

/// The pod is admitted unchanged.
#[track_caller]
fn skips(namespace: &str, annotations: Value) {
    let (outcome, resp) = run(namespace, annotations.clone(), app_spec());
    assert_eq!(outcome, ReviewOutcome::Skipped, "{annotations}: {resp}");
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

/// The pod is denied with exactly this message (after the `keyward: ` prefix).
#[track_caller]
fn rejects_with_spec(annotations: Value, spec: Value, message: &str) {
    let (outcome, resp) = run("shop", annotations.clone(), spec);
    assert_eq!(outcome, ReviewOutcome::Denied, "{annotations}: {resp}");
    assert_eq!(resp["allowed"], false);
    assert!(resp.get("patch").is_none());
    assert_eq!(resp["status"]["code"], 400);
    assert_eq!(resp["status"]["status"], "Failure");
    assert_eq!(
        resp["status"]["message"],
        format!("keyward: {message}"),
        "{annotations}"
    );
}

#[track_caller]
fn rejects(annotations: Value, message: &str) {
    rejects_with_spec(annotations, app_spec(), message)
}

#[test]
fn valid_annotations_are_accepted() {
    accepts(json!(null));
    accepts(json!({}));
    accepts(json!({"keyward.io/inject": "true", "other.io/x": "y"}));
    accepts(json!({"keyward.io/role": "shop-orders"}));
    accepts(json!({"keyward.io/secret-db": "secret/data/db"}));
    accepts(
        json!({"keyward.io/secret-db": "database/creds/app#password", "keyward.io/secret-db-uids": "1000, 1001", "keyward.io/secret-db-optional": "false"}),
    );
    accepts(
        json!({"keyward.io/inbound": "15443:8080,15444:9090", "keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/shop/sa/frontend", "keyward.io/inbound-allow-15444": "spiffe://cluster.local/ns/x/*"}),
    );
    accepts(
        json!({"keyward.io/outbound-orders": "15001=orders.shop.svc:15443", "keyward.io/outbound-orders-id": "spiffe://cluster.local/ns/shop/sa/orders"}),
    );
    accepts(
        json!({"keyward.io/outbound-v6": "15002=[fd00::1]:15443", "keyward.io/outbound-v6-id": "spiffe://cluster.local/ns/shop/sa/a, spiffe://cluster.local/ns/shop/sa/b"}),
    );
    accepts(
        json!({"keyward.io/cpu-request": "5m", "keyward.io/memory-request": "16Mi", "keyward.io/cpu-limit": "0.5", "keyward.io/memory-limit": "128Mi"}),
    );
    accepts(json!({"keyward.io/log-level": "trace", "keyward.io/containers": "app"}));
    accepts(json!({"keyward.io/kv-refresh": "5s"}));
    accepts(json!({"keyward.io/kv-refresh": "1h 30m"}));
}

#[test]
fn skipped_pods_are_left_unchanged() {
    skips("kube-system", json!({"keyward.io/secret-db": ""}));
    skips("kube-public", json!(null));
    skips(
        "shop",
        json!({"keyward.io/inject": "false", "keyward.io/secret-db": "bad"}),
    );
    skips("shop", json!({"keyward.io/status": "injected"}));
}

#[test]
fn invalid_annotations_are_denied_with_the_annotation_named() {
    rejects(json!({"keyward.io/secret-db": ""}), "annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got ''");
    rejects(json!({"keyward.io/secret-db": "/secret/data/db"}), "annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got '/secret/data/db'");
    rejects(json!({"keyward.io/secret-db": "secret/data/db#"}), "annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got 'secret/data/db#'");
    rejects(json!({"keyward.io/secret-db": "secret/../sys"}), "annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got 'secret/../sys'");
    rejects(json!({"keyward.io/secret-DB": "secret/data/db"}), "annotation keyward.io/secret-DB: secret name 'DB' must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit");
    rejects(json!({"keyward.io/secret-db": "secret/data/db", "keyward.io/secret-db-uids": "root"}), "annotation keyward.io/secret-db-uids: expected a comma-separated list of numeric uids such as 1000,1001, got 'root'");
    rejects(json!({"keyward.io/secret-db-uids": "1000"}), "annotation keyward.io/secret-db-uids: there is no keyward.io/secret-db annotation for it to apply to");
    rejects(
        json!({"keyward.io/secret-db": "secret/data/db", "keyward.io/secret-db-optional": "yes"}),
        "annotation keyward.io/secret-db-optional: expected \"true\" or \"false\", got 'yes'",
    );
    rejects(
        json!({"keyward.io/inject": "ture"}),
        "annotation keyward.io/inject: expected \"true\" or \"false\", got 'ture'",
    );
    rejects(json!({"keyward.io/status": "pending"}), "annotation keyward.io/status: is set by the injector and may only be 'injected', got 'pending'");
    rejects(json!({"keyward.io/role": "a role"}), "annotation keyward.io/role: expected a Vault role name (letters, digits, '-', '_', '.'), got 'a role'");
    rejects(json!({"keyward.io/log-level": "verbose"}), "annotation keyward.io/log-level: expected one of trace, debug, info, warn, error, got 'verbose'");
    rejects(json!({"keyward.io/cpu-request": "lots"}), "annotation keyward.io/cpu-request: expected a Kubernetes quantity such as 10m, 0.5, 64Mi, got 'lots'");
    rejects(json!({"keyward.io/memory-limit": "-1Mi"}), "annotation keyward.io/memory-limit: expected a Kubernetes quantity such as 10m, 0.5, 64Mi, got '-1Mi'");
    rejects(json!({"keyward.io/memory-request": "128Mi", "keyward.io/memory-limit": "64Mi"}), "annotation keyward.io/memory-request: request 128Mi is above the limit 64Mi (keyward.io/memory-limit)");
    rejects(json!({"keyward.io/secrets-db": "secret/data/db"}), "annotation keyward.io/secrets-db: unknown keyward.io annotation; known: inject, status, role, inbound, log-level, kv-refresh, containers, cpu-request, memory-request, cpu-limit, memory-limit, secret-NAME, secret-NAME-uids, secret-NAME-optional, inbound-allow-PORT, outbound-NAME, outbound-NAME-id");
    rejects(json!({"keyward.io/containers": "app,worker"}), "annotation keyward.io/containers: the pod has no container named 'worker' (containers: app)");
    rejects(json!({"keyward.io/containers": ""}), "annotation keyward.io/containers: expected a comma-separated list of container names such as app,worker, got ''");
}

#[test]
fn invalid_mesh_annotations_are_denied() {
    rejects(json!({"keyward.io/inbound": "15443"}), "annotation keyward.io/inbound: expected a comma-separated list of TLS_PORT:APP_PORT such as 15443:8080, got '15443'");
    rejects(json!({"keyward.io/inbound": "70000:8080"}), "annotation keyward.io/inbound: expected a comma-separated list of TLS_PORT:APP_PORT such as 15443:8080, got '70000:8080'");
    rejects(json!({"keyward.io/inbound": "15443:8080"}), "annotation keyward.io/inbound: TLS port 15443 needs keyward.io/inbound-allow-15443 listing the SPIFFE IDs or patterns allowed to connect");
    rejects(json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/*/sa/web"}), "annotation keyward.io/inbound-allow-15443: 'spiffe://cluster.local/ns/*/sa/web' is not a SPIFFE ID or pattern: '*' is allowed only as the whole last segment of a pattern");
    rejects(json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": ""}), "annotation keyward.io/inbound-allow-15443: expected a comma-separated list of SPIFFE IDs or patterns such as spiffe://cluster.local/ns/shop/sa/frontend, got ''");
    rejects(json!({"keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/a/sa/b"}), "annotation keyward.io/inbound-allow-15443: its port is not a TLS port of keyward.io/inbound");
    rejects(json!({"keyward.io/inbound-allow-https": "spiffe://cluster.local/ns/a/sa/b"}), "annotation keyward.io/inbound-allow-https: expected keyward.io/inbound-allow-TLS_PORT with a port 1-65535, got port 'https'");
    rejects(json!({"keyward.io/inbound": "8080:8081", "keyward.io/inbound-allow-8080": "spiffe://cluster.local/ns/a/sa/b"}), "annotation keyward.io/inbound: TLS port 8080 is already a containerPort of container 'app'; pick a free port for the sidecar");
    rejects(
        json!({"keyward.io/inbound": "15090:8080", "keyward.io/inbound-allow-15090": "spiffe://cluster.local/ns/a/sa/b"}),
        "annotation keyward.io/inbound: port 15090 is already used by the sidecar's admin port",
    );
    rejects(json!({"keyward.io/outbound-orders": "orders.shop.svc:15443"}), "annotation keyward.io/outbound-orders: expected LOCAL_PORT=HOST:PORT such as 15001=orders.shop.svc:15443, got 'orders.shop.svc:15443'");
    rejects(json!({"keyward.io/outbound-orders": "15001=orders.shop.svc:15443"}), "annotation keyward.io/outbound-orders: needs keyward.io/outbound-orders-id with the SPIFFE ID the upstream must present");
    rejects(json!({"keyward.io/outbound-orders": "15001=orders.shop.svc:15443", "keyward.io/outbound-orders-id": "https://orders"}), "annotation keyward.io/outbound-orders-id: 'https://orders' is not a SPIFFE ID: SPIFFE ID must start with spiffe://");
    rejects(json!({"keyward.io/outbound-orders": "15001=orders.shop.svc:15443", "keyward.io/outbound-orders-id": "spiffe://cluster.local/ns/shop/*"}), "annotation keyward.io/outbound-orders-id: 'spiffe://cluster.local/ns/shop/*' is a pattern; the upstream must present one of the exact SPIFFE IDs listed here (list each, comma-separated)");
    rejects(json!({"keyward.io/outbound-orders-id": "spiffe://cluster.local/ns/a/sa/b"}), "annotation keyward.io/outbound-orders-id: there is no keyward.io/outbound-orders annotation for it to apply to");
    // The proxy refuses IDs outside its trust domain; found by fuzz/fuzz_targets/annotations.rs.
    rejects(json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/a/*,spiffe://other.org/ns/a/sa/b"}), "annotation keyward.io/inbound-allow-15443: 'spiffe://other.org/ns/a/sa/b' is not in the trust domain cluster.local");
    rejects(json!({"keyward.io/outbound-orders": "15001=orders.shop.svc:15443", "keyward.io/outbound-orders-id": "spiffe://cluster.localx/ns/a/sa/b"}), "annotation keyward.io/outbound-orders-id: 'spiffe://cluster.localx/ns/a/sa/b' is not in the trust domain cluster.local");
    rejects(json!({"keyward.io/outbound-a": "15001=a.svc:443", "keyward.io/outbound-a-id": "spiffe://cluster.local/ns/a/sa/a", "keyward.io/outbound-b": "15001=b.svc:443", "keyward.io/outbound-b-id": "spiffe://cluster.local/ns/a/sa/b"}), "annotation keyward.io/outbound-b: local port 15001 is already used by keyward.io/outbound-a");
}

#[test]
fn kv_refresh_is_a_bounded_duration() {
    rejects(
        json!({"keyward.io/kv-refresh": "soon"}),
        "annotation keyward.io/kv-refresh: expected a duration such as 30s, 5m or 1h, got 'soon'",
    );
    rejects(
        json!({"keyward.io/kv-refresh": "60"}),
        "annotation keyward.io/kv-refresh: expected a duration such as 30s, 5m or 1h, got '60'",
    );
    rejects(
        json!({"keyward.io/kv-refresh": "500ms"}),
        "annotation keyward.io/kv-refresh: must be between 1s and 24h, got '500ms'",
    );
    rejects(
        json!({"keyward.io/kv-refresh": "2d"}),
        "annotation keyward.io/kv-refresh: must be between 1s and 24h, got '2d'",
    );
}

#[test]
fn pods_without_containers_are_denied_not_sent_a_patch_that_cannot_apply() {
    let message = "the pod has no containers (spec.containers is empty or missing); there is nothing to inject into";
    rejects_with_spec(json!(null), json!({}), message);
    rejects_with_spec(json!(null), json!({"containers": []}), message);
    // Also with only init containers (in legacy mode the patch would be `add /spec/containers/0`).
    rejects_with_spec(
        json!(null),
        json!({"initContainers": [{"name": "setup", "image": "s"}]}),
        message,
    );
}

#[test]
fn pods_that_already_hold_keyward_parts_are_denied() {
    let spec =
        json!({"containers": [{"name": "app", "image": "a"}, {"name": "keyward", "image": "k"}]});
    rejects_with_spec(json!(null), spec, "pod already has a container named 'keyward' but no keyward.io/status annotation; remove the container or add keyward.io/inject: \"false\"");
    let spec = json!({"containers": [{"name": "app", "image": "a"}], "volumes": [{"name": "keyward-socket", "emptyDir": {}}]});
    rejects_with_spec(
        json!(null),
        spec,
        "pod already has a volume named 'keyward-socket', which the injector adds",
    );
    let spec = json!({"containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "x", "mountPath": "/run/keyward/"}]}], "volumes": [{"name": "x", "emptyDir": {}}]});
    rejects_with_spec(
        json!(null),
        spec,
        "container 'app' already mounts /run/keyward, where the injector mounts the socket",
    );
}

#[test]
fn other_kinds_and_operations_are_allowed_unchanged() {
    let mut v: Value =
        serde_json::from_slice(&pod_review("shop", json!(null), app_spec())).expect("json");
    v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    v["request"]["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
    let reviewed = review(
        &serde_json::to_vec(&v).expect("json"),
        &InjectorConfig::default(),
    )
    .expect("review");
    assert_eq!(reviewed.outcome, ReviewOutcome::Ignored);
    let resp: Value = serde_json::from_slice(&reviewed.body).expect("json");
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["uid"], "0b7e1c7e-1");
    assert!(resp["response"].get("patch").is_none());

    let mut v: Value =
        serde_json::from_slice(&pod_review("shop", json!(null), app_spec())).expect("json");
    v["request"]["operation"] = json!("UPDATE");
    let reviewed = review(
        &serde_json::to_vec(&v).expect("json"),
        &InjectorConfig::default(),
    )
    .expect("review");
    assert_eq!(reviewed.outcome, ReviewOutcome::Ignored);
}

#[test]
fn malformed_reviews_are_errors_with_clear_messages() {
    let cfg = InjectorConfig::default();
    let err = review(b"{not json", &cfg).expect_err("not json");
    assert!(matches!(err, ReviewError::Json(_)));
    assert!(
        err.to_string()
            .starts_with("request body is not valid JSON: "),
        "{err}"
    );

    let err = review(
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
        &cfg,
    )
    .expect_err("v1beta1");
    assert_eq!(err.to_string(), "unsupported AdmissionReview apiVersion 'admission.k8s.io/v1beta1': this webhook speaks admission.k8s.io/v1 (set admissionReviewVersions: [v1])");

    let err = review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#,
        &cfg,
    )
    .expect_err("kind");
    assert_eq!(err.to_string(), "expected kind AdmissionReview, got 'Pod'");

    let err = review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        &cfg,
    )
    .expect_err("no request");
    assert_eq!(err.to_string(), "AdmissionReview has no request");

    let err = review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
        &cfg,
    )
    .expect_err("shape");
    assert!(
        err.to_string()
            .starts_with("AdmissionReview is malformed: "),
        "{err}"
    );

    // A Pod that is not a Pod is denied, not a server error.
    let mut v: Value =
        serde_json::from_slice(&pod_review("shop", json!(null), app_spec())).expect("json");
    v["request"]["object"]["spec"] = json!({"containers": "app"});
    let reviewed = review(&serde_json::to_vec(&v).expect("json"), &cfg).expect("review");
    assert_eq!(reviewed.outcome, ReviewOutcome::Denied);
    assert!(
        reviewed.detail.starts_with("cannot read the Pod: "),
        "{}",
        reviewed.detail
    );
}

#[test]
fn offline_errors_name_the_document_and_the_annotation() {
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    metadata:\n      annotations: {keyward.io/secret-db: ''}\n    spec:\n      containers: [{name: app, image: a}]\n";
    let err = keyward_injector::offline::inject_stream(input, &InjectorConfig::default())
        .expect_err("invalid");
    assert_eq!(err.to_string(), "document 2 (Deployment/web): annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got ''");
    // kube-system workloads pass through.
    let input = input.replace("namespace: shop", "namespace: kube-system");
    let out = keyward_injector::offline::inject_stream(&input, &InjectorConfig::default())
        .expect("skipped");
    assert!(!out.contains("keyward.io/status"));
    let err = keyward_injector::offline::inject_stream("a: [", &InjectorConfig::default())
        .expect_err("yaml");
    assert!(
        err.to_string().starts_with("document 1: not valid YAML"),
        "{err}"
    );
}
