//! The sidecar's Prometheus port (issue 15 §1): declared on every sidecar under the name the
//! chart's PodMonitor selects, and the prometheus.io annotations only when the injector config
//! asks for them (never replacing a pod's own).

mod common;

use common::{apply, mutate_pod, one_container_pod};
use keyward_injector::config::InjectorConfig;
use serde_json::{json, Value};

fn patched(annotations: Value, cfg: &InjectorConfig) -> Value {
    let pod = one_container_pod(annotations);
    let ops = mutate_pod(&pod, cfg).expect("injected");
    apply(&pod, &ops)
}

fn sidecar(pod: &Value) -> &Value {
    pod["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "keyward"))
        .expect("sidecar")
}

#[test]
fn every_sidecar_declares_the_metrics_port_and_scrape_annotations_come_only_when_asked() {
    let secret = json!({"keyward.io/secret-db": "secret/data/db"});
    let mut cfg = InjectorConfig::default();
    let pod = patched(secret.clone(), &cfg);
    assert_eq!(
        sidecar(&pod)["ports"],
        json!([{"name": "kw-metrics", "containerPort": 15091, "protocol": "TCP"}]),
        "a broker-only sidecar has the metrics port too"
    );
    assert!(pod["metadata"]["annotations"]
        .get("prometheus.io/scrape")
        .is_none());

    cfg.metrics.scrape_annotations = true;
    cfg.metrics.port = 9464;
    cfg.metrics.port_name = "keyward-metrics".into();
    cfg.validate().expect("valid");
    let pod = patched(secret, &cfg);
    let a = &pod["metadata"]["annotations"];
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "9464");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert_eq!(sidecar(&pod)["ports"][0]["name"], "keyward-metrics");

    let own = json!({"keyward.io/secret-db": "secret/data/db",
        "prometheus.io/port": "8080", "prometheus.io/scrape": "true"});
    let pod = patched(own, &cfg);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"], "8080",
        "the pod's own kept"
    );
}

#[test]
fn a_bad_metrics_port_or_name_is_refused_naming_the_setting() {
    for (port, name, setting) in [
        (0, "kw-metrics", "metrics.port"),
        (15090, "kw-metrics", "metrics.port"),
        (15091, "", "metrics.port_name"),
        (15091, "much-too-long-name", "metrics.port_name"),
        (15091, "Metrics", "metrics.port_name"),
        (15091, "kw--m", "metrics.port_name"),
    ] {
        let mut cfg = InjectorConfig::default();
        cfg.metrics.port = port;
        cfg.metrics.port_name = name.into();
        let e = cfg.validate().expect_err(setting);
        assert!(e.to_string().contains(setting), "{port} {name:?}: {e}");
    }
}

#[test]
fn a_pod_using_the_metrics_port_is_refused_naming_what_uses_it() {
    let cfg = InjectorConfig::default();
    for (annotations, ports, says) in [
        (
            json!({"keyward.io/secret-db": "secret/data/db", "keyward.io/inbound": "15091:8080",
                "keyward.io/inbound-allow-15091": "spiffe://cluster.local/ns/shop/sa/web"}),
            json!([]),
            "keyward.io/inbound uses port 15091",
        ),
        (
            json!({"keyward.io/secret-db": "secret/data/db"}),
            json!([{"containerPort": 15091}]),
            "container 'app' (containerPort) uses port 15091",
        ),
    ] {
        let pod = common::pod(
            annotations,
            json!([{"name": "app", "image": "app:1", "ports": ports}]),
        );
        let e = mutate_pod(&pod, &cfg).expect_err("refused");
        assert!(e.to_string().contains(says), "{e}");
    }
}
