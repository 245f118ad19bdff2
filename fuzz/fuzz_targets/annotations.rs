//! Pod annotations: `decide` never panics, and a pod it accepts is one the rest of keyward
//! accepts too: the patch applies to the pod, a second pass over the patched pod changes
//! nothing, and the sidecar config written into the pod is one `keyward sidecar` starts with.
//!
//! Input: one annotation per line, `KEY=VALUE`.
#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use keyward_injector::annotations::{self, Decision, SkipReason};
use keyward_injector::config::InjectorConfig;
use keyward_injector::mutate::{self, Outcome, PodView};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let annotations: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    assert_eq!(
        annotations::decide(Some("kube-system"), &annotations),
        Ok(Decision::Skip(SkipReason::SystemNamespace))
    );
    let Ok(Decision::Inject(settings)) = annotations::decide(Some("shop"), &annotations) else {
        return;
    };
    assert_eq!(
        annotations::parse_settings(&annotations).as_ref(),
        Ok(&*settings)
    );
    assert!(settings.secrets.windows(2).all(|w| w[0].name < w[1].name));
    assert!(settings.outbound.windows(2).all(|w| w[0].name < w[1].name));
    assert!(settings
        .inbound
        .windows(2)
        .all(|w| w[0].tls_port < w[1].tls_port));

    let cfg = InjectorConfig::default();

    // The patch applies to a pod carrying these annotations, and is applied once only.
    let mut pod_json = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "serviceAccountName": "orders",
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1"}, {"name": "worker", "image": "worker:1"}],
        },
    });
    let pod: Pod = serde_json::from_value(pod_json.clone()).expect("pod");
    let spec = pod.spec.as_ref().expect("spec");
    let view = PodView {
        namespace: Some("shop"),
        metadata: &pod.metadata,
        spec,
    };
    let Ok(Outcome::Patch(ops)) = mutate::mutate(view, &cfg) else {
        // Refused for a conflict with the pod (e.g. an unknown container in keyward.io/containers).
        return;
    };
    // The sidecar must start with the config the injector wrote for it.
    let sidecar = mutate::sidecar_config(&settings, &cfg, 1000);
    let yaml = serde_yaml_ng::to_string(&sidecar).expect("sidecar config serializes");
    // The sidecar's loader checks the whole document, identity and proxy included (broker-only
    // without identity), before it binds anything; it reads back what the injector built.
    let config = keyward_broker::config::Config::from_yaml(&yaml, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("the sidecar refuses the injected config: {e}\n{yaml}"));
    assert_eq!(config.contract(), &sidecar, "{yaml}");

    assert!(ops.iter().all(|op| op.op == "add"));
    let patch = mutate::to_json_patch(&ops).expect("patch");
    json_patch::patch(&mut pod_json, &patch).expect("the patch applies to the pod");
    let patched: Pod = serde_json::from_value(pod_json).expect("the patched pod is a Pod");
    let view = PodView {
        namespace: Some("shop"),
        metadata: &patched.metadata,
        spec: patched.spec.as_ref().expect("spec"),
    };
    assert_eq!(
        mutate::mutate(view, &cfg),
        Ok(Outcome::Skipped(SkipReason::AlreadyInjected))
    );
});
