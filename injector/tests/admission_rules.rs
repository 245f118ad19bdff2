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
    rejects(json!({"keyward.io/secrets-db": "secret/data/db"}), "annotation keyward.io/secrets-db: unknown keyward.io annotation; known: inject, status, role, vault-namespace, inbound, log-level, kv-refresh, identity-uids, identity-files, containers, cpu-request, memory-request, cpu-limit, memory-limit, secret-NAME, secret-NAME-uids, secret-NAME-optional, inbound-allow-PORT, outbound-NAME, outbound-NAME-id, env-CONTAINER, on-change-CONTAINER, file-NAME, file-NAME-secret, file-NAME-template, file-NAME-mode, cert-NAME, cert-NAME-common-name, cert-NAME-alt-names, cert-NAME-ttl, cert-NAME-container");
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
    assert_eq!(err.to_string(), "document 2 (Deployment/web) at spec.template.metadata.annotations: annotation keyward.io/secret-db: expected PATH[#KEY] with PATH a Vault API path such as secret/data/db (segments of letters, digits, '.', '_', '-', no leading '/'), got ''");
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

fn run_cfg(
    cfg: &InjectorConfig,
    annotations: Value,
    spec: Value,
    labels: Value,
) -> (ReviewOutcome, Value, Value) {
    let mut v: Value =
        serde_json::from_slice(&pod_review("shop", annotations, spec)).expect("json");
    v["request"]["object"]["metadata"]["labels"] = labels;
    let body = serde_json::to_vec(&v).expect("json");
    let reviewed = review(&body, cfg).expect("review");
    let out: Value = serde_json::from_slice(&reviewed.body).expect("json");
    let resp = out["response"].clone();
    let mut pod = v["request"]["object"].clone();
    if let Some(patch) = resp["patch"].as_str() {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch");
        json_patch::patch(&mut pod, &patch).expect("patch applies");
    }
    (reviewed.outcome, resp, pod)
}

#[track_caller]
fn rejects_cfg(cfg: &InjectorConfig, annotations: Value, spec: Value, message: &str) {
    let (outcome, resp, _) = run_cfg(cfg, annotations.clone(), spec, json!(null));
    assert_eq!(outcome, ReviewOutcome::Denied, "{annotations}: {resp}");
    assert_eq!(
        resp["status"]["message"],
        format!("keyward: {message}"),
        "{annotations}"
    );
}

#[track_caller]
fn injected_pod(cfg: &InjectorConfig, annotations: Value, spec: Value) -> Value {
    let (outcome, resp, pod) = run_cfg(cfg, annotations.clone(), spec, json!(null));
    assert_eq!(outcome, ReviewOutcome::Injected, "{annotations}: {resp}");
    pod
}

fn sidecar_config(pod: &Value) -> Value {
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "keyward")
        .expect("sidecar");
    let text = sidecar["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "KEYWARD_CONFIG"))
        .and_then(|e| e["value"].as_str())
        .expect("KEYWARD_CONFIG");
    serde_yaml_ng::from_str(text).expect("sidecar config YAML")
}

const PEER: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

#[test]
fn inbound_app_port_may_not_be_one_of_the_sidecars_own_ports() {
    rejects(
        json!({"keyward.io/inbound": "15443:15090", "keyward.io/inbound-allow-15443": PEER}),
        "annotation keyward.io/inbound: app port 15090 (of TLS port 15443) is the sidecar's admin port; a peer allowed on the TLS port would reach the sidecar's admin API",
    );
    rejects(
        json!({"keyward.io/inbound": "15443:15001", "keyward.io/inbound-allow-15443": PEER,
               "keyward.io/outbound-orders": "15001=orders.shop.svc:15443",
               "keyward.io/outbound-orders-id": "spiffe://cluster.local/ns/shop/sa/orders"}),
        "annotation keyward.io/inbound: app port 15001 (of TLS port 15443) is the local port of keyward.io/outbound-orders; a peer allowed on the TLS port would reach that upstream as this pod",
    );
    rejects(
        json!({"keyward.io/inbound": "15443:8080,15444:15443", "keyward.io/inbound-allow-15443": PEER, "keyward.io/inbound-allow-15444": PEER}),
        "annotation keyward.io/inbound: app port 15443 (of TLS port 15444) is a keyward.io/inbound TLS port; the sidecar would forward the port to itself",
    );
}

#[test]
fn host_network_and_host_pid_pods_are_refused_unless_the_operator_allows_them() {
    let mut cfg = InjectorConfig::default();
    for field in ["hostNetwork", "hostPID"] {
        let mut spec = app_spec();
        spec[field] = json!(true);
        rejects_cfg(&cfg, json!(null), spec.clone(), &format!("spec.{field} is true: the sidecar's plaintext outbound ports and admin port would listen on the node, and its socket peers would share the node's processes; such pods are refused unless the injector's policy.allow_host_namespaces is true"));
        cfg.policy.allow_host_namespaces = true;
        injected_pod(&cfg, json!(null), spec);
        cfg.policy.allow_host_namespaces = false;
    }
}

#[test]
fn other_containers_may_not_mount_the_token_or_write_the_socket() {
    let cfg = InjectorConfig::default();
    let spec = json!({"containers": [{"name": "app", "image": "a"}, {"name": "thief", "image": "t",
        "volumeMounts": [{"name": "keyward-token", "mountPath": "/t"}]}]});
    rejects_cfg(&cfg, json!(null), spec, "spec.containers[1].volumeMounts[0]: container 'thief' mounts the volume 'keyward-token', the sidecar's Vault login token; only the sidecar may mount it");
    let spec = json!({"containers": [{"name": "app", "image": "a"}], "initContainers": [{"name": "init", "image": "i",
        "volumeMounts": [{"name": "keyward-token", "mountPath": "/t", "readOnly": true}]}]});
    rejects_cfg(&cfg, json!(null), spec, "spec.initContainers[0].volumeMounts[0]: container 'init' mounts the volume 'keyward-token', the sidecar's Vault login token; only the sidecar may mount it");
    for ro in [json!(false), json!(null)] {
        let spec = json!({"containers": [{"name": "app", "image": "a"}, {"name": "side", "image": "s",
            "volumeMounts": [{"name": "keyward-socket", "mountPath": "/sock", "readOnly": ro}]}]});
        rejects_cfg(&cfg, json!({"keyward.io/containers": "app"}), spec, "spec.containers[1].volumeMounts[0]: container 'side' mounts the volume 'keyward-socket' read-write; mount it with readOnly: true (connecting to the socket works on a read-only mount)");
    }
    // Read-only is fine, and the injector itself mounts the socket read-only into apps.
    let spec = json!({"containers": [{"name": "app", "image": "a"}, {"name": "side", "image": "s",
        "volumeMounts": [{"name": "keyward-socket", "mountPath": "/sock", "readOnly": true}]}],
        "initContainers": [{"name": "migrate", "image": "m"}]});
    let pod = injected_pod(&cfg, json!({"keyward.io/containers": "app,migrate"}), spec);
    for c in pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["initContainers"].as_array())
        .flatten()
    {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if m["name"] == "keyward-socket" && c["name"] != "keyward" {
                assert_eq!(m["readOnly"], true, "{c}");
            }
        }
    }
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "keyward");
    assert!(pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == "keyward-socket" && m["readOnly"] == true));
}

#[test]
fn operator_ceilings_bound_kv_refresh_wide_patterns_and_opt_out() {
    let mut cfg = InjectorConfig::default();
    cfg.policy.min_kv_refresh = "30s".to_owned();
    rejects_cfg(&cfg, json!({"keyward.io/kv-refresh": "5s"}), app_spec(), "annotation keyward.io/kv-refresh: must be at least 30s (the injector's policy.min_kv_refresh), got '5s'");
    injected_pod(&cfg, json!({"keyward.io/kv-refresh": "30s"}), app_spec());

    let cfg = InjectorConfig::default();
    for wide in ["spiffe://cluster.local/*", "spiffe://cluster.local/ns/*"] {
        rejects_cfg(&cfg, json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": format!("{PEER},{wide}")}), app_spec(),
            &format!("annotation keyward.io/inbound-allow-15443: '{wide}' names no namespace and would let every workload of the trust domain in; list namespaces (spiffe://TD/ns/NS/*) or identities, or ask the operator to set policy.allow_trust_domain_wide_patterns"));
        let mut open = InjectorConfig::default();
        open.policy.allow_trust_domain_wide_patterns = true;
        injected_pod(
            &open,
            json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": wide}),
            app_spec(),
        );
    }
    injected_pod(
        &cfg,
        json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": "spiffe://cluster.local/ns/shop/*"}),
        app_spec(),
    );

    let mut cfg = InjectorConfig::default();
    cfg.policy.allow_opt_out = false;
    rejects_cfg(&cfg, json!({"keyward.io/inject": "false"}), app_spec(), "annotation keyward.io/inject: opting out is not allowed in this cluster (the injector's policy.allow_opt_out is false)");
    injected_pod(&cfg, json!({"keyward.io/inject": "true"}), app_spec());
    let (outcome, _, _) = {
        let body = pod_review(
            "kube-system",
            json!({"keyward.io/inject": "false"}),
            app_spec(),
        );
        let r = review(&body, &cfg).expect("review");
        (r.outcome, (), ())
    };
    assert_eq!(
        outcome,
        ReviewOutcome::Skipped,
        "system namespaces stay skipped"
    );
}

#[test]
fn identity_uids_reach_the_sidecar_config_and_need_a_mesh_port() {
    let cfg = InjectorConfig::default();
    let mesh = json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": PEER, "keyward.io/identity-uids": "1000, 1001,1000"});
    let pod = injected_pod(&cfg, mesh, app_spec());
    let sc = sidecar_config(&pod);
    assert_eq!(sc["identity"]["allow_uids"], json!([1000, 1001]));
    // Absent: the key is omitted (nobody may read the key).
    let pod = injected_pod(
        &cfg,
        json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": PEER}),
        app_spec(),
    );
    let sc = sidecar_config(&pod);
    assert!(sc["identity"].is_object());
    assert!(sc["identity"].get("allow_uids").is_none(), "{sc:?}");
    rejects(
        json!({"keyward.io/identity-uids": "1000"}),
        "annotation keyward.io/identity-uids: needs keyward.io/inbound or a keyward.io/outbound-NAME port: no identity is issued to a pod without one",
    );
    rejects(json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": PEER, "keyward.io/identity-uids": "root"}),
        "annotation keyward.io/identity-uids: expected a comma-separated list of numeric uids such as 1000,1001, got 'root'");
}

#[test]
fn inbound_pods_are_labelled_for_network_policies_and_carry_exposed_app_port() {
    let inbound =
        json!({"keyward.io/inbound": "15443:8080", "keyward.io/inbound-allow-15443": PEER});
    let mut cfg = InjectorConfig::default();
    for (setting, expected) in [
        (None, "warn"),
        (
            Some(keyward_injector::config::ExposedAppPort::Refuse),
            "refuse",
        ),
    ] {
        if let Some(s) = setting {
            cfg.exposed_app_port = s;
        }
        let pod = injected_pod(&cfg, inbound.clone(), app_spec());
        assert_eq!(pod["metadata"]["labels"]["keyward.io/mesh"], "inbound");
        assert_eq!(sidecar_config(&pod)["proxy"]["exposed_app_port"], expected);
    }
    // Existing labels are kept.
    let (outcome, _, pod) = run_cfg(&cfg, inbound.clone(), app_spec(), json!({"app": "orders"}));
    assert_eq!(outcome, ReviewOutcome::Injected);
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app": "orders", "keyward.io/mesh": "inbound"})
    );
    // Outbound-only and secrets-only pods are not labelled; no proxy section, no key.
    let pod = injected_pod(
        &cfg,
        json!({"keyward.io/secret-db": "secret/data/db"}),
        app_spec(),
    );
    assert!(pod["metadata"]["labels"].is_null(), "{pod}");
    assert!(sidecar_config(&pod).get("proxy").is_none());
    // The label is the injector's to set.
    let (outcome, resp, _) = run_cfg(
        &cfg,
        json!(null),
        app_spec(),
        json!({"keyward.io/mesh": "inbound"}),
    );
    assert_eq!(outcome, ReviewOutcome::Denied, "{resp}");
    assert_eq!(resp["status"]["message"], "keyward: label keyward.io/mesh is set by the injector (to 'inbound' on pods with keyward.io/inbound ports); remove it from the pod, got 'inbound'");
}
