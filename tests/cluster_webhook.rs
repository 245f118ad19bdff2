//! The injector behind a real kube-apiserver (scripts/cluster.sh, built by
//! `scripts/deps.sh cluster`): the chart's MutatingWebhookConfiguration, pointed by URL at a
//! `keyward injector` process on loopback, mutates pods that `kubectl apply` creates; pods
//! outside labelled namespaces are untouched; a bad annotation and a missing injector refuse
//! the pod. And the API server's TokenRequest tokens carry the claims the broker reads.
//! No node agent runs: pods are stored, never run (docs/cluster.md).

use std::path::Path;

use keyward_test_cluster::{Cluster, Injector};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_cluster() -> Cluster {
    Cluster::start().unwrap_or_else(|e| panic!("starting the test cluster: {e}"))
}

fn start_injector() -> Injector {
    Injector::start(
        Path::new(env!("CARGO_BIN_EXE_keyward")),
        &repo().join("examples/injector-config.yaml"),
    )
    .unwrap_or_else(|e| panic!("starting keyward injector: {e}"))
}

fn pod(ns: &str, name: &str, annotations: &[(&str, &str)]) -> String {
    keyward_test_cluster::restricted_pod(ns, name, annotations, &[])
}

fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

#[test]
fn real_api_server_sends_pods_to_the_injector_and_keeps_its_patch() {
    let cluster = start_cluster();
    let mut injector = start_injector();
    let url = injector.url();
    let mwc = cluster
        .register_webhook(&injector, &[])
        .expect("apply the MutatingWebhookConfiguration");
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail");
    cluster
        .workload_namespace("kw-shop", true, &["orders"])
        .expect("labelled namespace");
    cluster
        .workload_namespace("kw-plain", false, &["orders"])
        .expect("unlabelled namespace");

    // A pod in the labelled namespace: stored with the sidecar and its volumes.
    cluster
        .apply(&pod(
            "kw-shop",
            "orders",
            &[("keyward.io/secret-db", "secret/data/shop/db")],
        ))
        .unwrap_or_else(|e| panic!("apply the pod: {e}\ninjector log:\n{}", injector.log()));
    let stored = cluster
        .get_json(&["-n", "kw-shop", "pod", "orders"])
        .expect("get pod");
    assert_eq!(
        stored["metadata"]["annotations"]["keyward.io/status"], "injected",
        "{stored:#}"
    );
    let sidecar = stored["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "keyward"))
        .unwrap_or_else(|| panic!("no keyward sidecar in the stored pod: {stored:#}"));
    assert_eq!(sidecar["restartPolicy"], "Always", "{sidecar:#}");
    assert!(
        sidecar["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("ghcr.io/keyward/keyward@sha256:")),
        "{sidecar:#}"
    );
    let token = volume(&stored, "keyward-token")
        .unwrap_or_else(|| panic!("no keyward-token volume: {stored:#}"));
    let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["audience"], "vault", "{token:#}");
    assert_eq!(sat["expirationSeconds"], 600, "{token:#}");
    let socket = volume(&stored, "keyward-socket")
        .unwrap_or_else(|| panic!("no keyward-socket volume: {stored:#}"));
    assert_eq!(socket["emptyDir"]["medium"], "Memory", "{socket:#}");
    let app = &stored["spec"]["containers"][0];
    assert!(
        app["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "keyward-socket")),
        "the app container mounts the socket: {app:#}"
    );

    // The same pod in an unlabelled namespace: stored as written.
    cluster
        .apply(&pod(
            "kw-plain",
            "orders",
            &[("keyward.io/secret-db", "secret/data/shop/db")],
        ))
        .expect("apply the pod in the unlabelled namespace");
    let plain = cluster
        .get_json(&["-n", "kw-plain", "pod", "orders"])
        .expect("get pod");
    assert!(plain["spec"]["initContainers"].is_null(), "{plain:#}");
    assert!(volume(&plain, "keyward-token").is_none(), "{plain:#}");
    assert!(volume(&plain, "keyward-socket").is_none(), "{plain:#}");
    assert!(
        plain["metadata"]["annotations"]["keyward.io/status"].is_null(),
        "{plain:#}"
    );

    // A misspelt annotation: kubectl apply is refused with the injector's message.
    let err = cluster
        .apply(&pod(
            "kw-shop",
            "typo",
            &[("keyward.io/secrets-db", "secret/data/shop/db")],
        ))
        .expect_err("a pod with an unknown keyward.io annotation is refused");
    let msg = err.to_string();
    assert!(
        msg.contains(r#"admission webhook "inject.keyward.io" denied the request"#)
            && msg.contains("keyward: ")
            && msg.contains("keyward.io/secrets-db"),
        "{msg}"
    );
    assert!(
        cluster
            .kubectl(&["-n", "kw-shop", "get", "pod", "typo"])
            .is_err(),
        "the refused pod was not stored"
    );

    // No injector and failurePolicy Fail: the pod is refused, saying the webhook failed.
    injector.stop();
    let err = cluster
        .apply(&pod("kw-shop", "unserved", &[]))
        .expect_err("with the injector down, pods in labelled namespaces are refused");
    let msg = err.to_string();
    assert!(
        msg.contains(r#"failed calling webhook "inject.keyward.io""#),
        "{msg}"
    );
    assert!(
        msg.contains(&url),
        "the message names the webhook URL: {msg}"
    );
    // Unlabelled namespaces do not depend on the injector.
    cluster
        .apply(&pod("kw-plain", "unserved", &[]))
        .expect("unlabelled namespaces still admit pods");
}

#[test]
fn token_request_tokens_carry_the_claims_the_broker_reads() {
    let cluster = start_cluster();
    cluster
        .workload_namespace("kw-tokens", false, &["orders"])
        .expect("namespace");
    cluster
        .apply(&pod("kw-tokens", "orders-1", &[]))
        .expect("apply the pod");
    let stored = cluster
        .get_json(&["-n", "kw-tokens", "pod", "orders-1"])
        .expect("get pod");
    let pod_uid = stored["metadata"]["uid"].as_str().expect("pod uid");

    // Bound to the pod, as the kubelet asks for the projected token volume.
    let jwt = cluster
        .kubectl(&[
            "-n",
            "kw-tokens",
            "create",
            "token",
            "orders",
            "--audience",
            "vault",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "orders-1",
            "--bound-object-uid",
            pod_uid,
        ])
        .expect("kubectl create token");
    let info = keyward_broker::claims::decode(jwt.trim()).expect("the broker parses the token");
    assert_eq!(info.pod.namespace, "kw-tokens");
    assert_eq!(info.pod.service_account, "orders");
    assert_eq!(info.pod.pod_name, "orders-1");
    assert_eq!(info.pod.pod_uid, pod_uid);
    assert!(info.expires_at.is_some());

    // Signed by the cluster's service-account key, for the Vault audience and the issuer.
    let key = std::fs::read(cluster.dir().join("pki/sa.pub")).expect("sa.pub");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["vault"]);
    validation.set_issuer(&["https://kubernetes.default.svc.cluster.local"]);
    let verified = jsonwebtoken::decode::<Value>(
        jwt.trim(),
        &jsonwebtoken::DecodingKey::from_rsa_pem(&key).expect("RSA public key"),
        &validation,
    )
    .expect("the token verifies with the cluster's service-account key");
    let claims = verified.claims;
    assert_eq!(claims["sub"], "system:serviceaccount:kw-tokens:orders");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "orders-1");

    // An unbound token (no pod): the broker still reads the service account.
    let jwt = cluster
        .kubectl(&[
            "-n",
            "kw-tokens",
            "create",
            "token",
            "orders",
            "--audience",
            "vault",
        ])
        .expect("kubectl create token");
    let info = keyward_broker::claims::decode(jwt.trim()).expect("the broker parses the token");
    assert_eq!(
        (
            info.pod.namespace.as_str(),
            info.pod.service_account.as_str()
        ),
        ("kw-tokens", "orders")
    );
    assert_eq!(info.pod.pod_name, "");
}
