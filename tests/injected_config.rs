//! The contract between the injector and the sidecar: every pod the webhook admits gets a
//! sidecar config that `keyward sidecar`'s own loader accepts (the same two calls
//! `keyward sidecar` makes before it binds anything), and the annotations that map to config
//! fields arrive as the values they name.
//!
//! Not a sample of golden pods: a property test generates pods over the whole annotation
//! grammar (names, paths and keys up to and past each length limit, ports, uids, patterns,
//! durations, resources), sends each through the webhook's review, applies the patch it
//! answers, and loads the result. A rule that the injector and the sidecar spell differently
//! (a Vault path the injector admits and the broker refuses) fails here. Pure: no servers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use keyward_broker::config::Config;
use keyward_injector::config::InjectorConfig;
use keyward_injector::review::{review, ReviewOutcome};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("injector/tests/golden")
        .join(format!("{name}.pod.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden pod is JSON")
}

/// The `KEYWARD_CONFIG` env value of the pod's keyward container.
fn config_yaml(pod: &Value) -> Result<String, String> {
    let containers = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["containers"].as_array())
        .flatten();
    let keyward = containers
        .into_iter()
        .find(|c| c["name"] == "keyward")
        .ok_or("the pod has no keyward container")?;
    keyward["env"]
        .as_array()
        .ok_or("the keyward container has no env")?
        .iter()
        .find(|e| e["name"] == "KEYWARD_CONFIG")
        .and_then(|e| e["value"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| "KEYWARD_CONFIG is not set".to_owned())
}

/// Loads the config as `keyward sidecar` does: the broker's loader, then the sidecar's check of
/// the identity and proxy sections. No `KEYWARD_*` overrides: the config must stand on its own.
fn sidecar_loads(yaml: &str) -> Result<Config, String> {
    let config = Config::from_yaml(yaml, &BTreeMap::<String, String>::new())
        .map_err(|e| format!("the broker refuses the injected config: {e}\n{yaml}"))?;
    keyward_sidecar::validate(&config)
        .map_err(|e| format!("the sidecar refuses the injected config: {e}\n{yaml}"))?;
    Ok(config)
}

fn sidecar_config(pod: &Value) -> Config {
    sidecar_loads(&config_yaml(pod).expect("config")).unwrap_or_else(|e| panic!("{e}"))
}

/// What the webhook does with a pod carrying these annotations.
enum Admission {
    /// Admitted with the sidecar: the pod as patched.
    Injected(Value),
    /// Admitted unchanged, or denied (with the message).
    NotInjected(String),
}

fn admit(cfg: &InjectorConfig, annotations: &BTreeMap<String, String>) -> Admission {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop", "annotations": annotations},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]},
                {"name": "worker", "image": "worker:1"},
            ],
        },
    });
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": pod,
        },
    }))
    .expect("json");
    let reviewed = review(&body, cfg).expect("a well-formed review is answered");
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("answer is JSON");
    let resp = &answer["response"];
    if reviewed.outcome != ReviewOutcome::Injected {
        return Admission::NotInjected(resp["status"]["message"].to_string());
    }
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("an injected pod has a patch"))
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch is a JSON patch");
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod");
    Admission::Injected(patched)
}

// ---- the annotation grammar -------------------------------------------------------------

/// DNS labels, 1 to 63 bytes (the injector's name rule), plus a few just outside it.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        3 => "[a-z]",
        3 => "[a-z][a-z0-9]{61}[a-z0-9]",
        1 => "[a-z][a-z0-9]{62}[a-z0-9]",
        1 => "[A-Za-z0-9._-]{1,8}",
    ]
}

/// Vault paths: two or more segments, lengths around every limit either side has used (512,
/// 1024), with the characters each side has allowed (`@` only on one side once).
fn vault_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        6 => "[A-Za-z0-9._-]{1,12}",
        1 => "[A-Za-z0-9@._-]{1,6}",
        1 => "[a-z]{1,3}",
    ];
    let long = (480usize..1100).prop_map(|n| format!("secret/data/{}", "a".repeat(n - 12)));
    prop_oneof![
        30 => prop::collection::vec(segment, 2..6).prop_map(|s| s.join("/")),
        6 => long,
        1 => "[a-z]{1,8}",
        1 => "[a-z/.]{1,12}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => "[A-Za-z0-9._-]{1,16}",
        2 => "[!-~]{1,8}",
        2 => (200usize..300).prop_map(|n| "k".repeat(n)),
    ]
}

fn uids() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => prop::collection::vec(0u32..70000, 1..4)
            .prop_map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        1 => Just("4294967295".to_owned()),
        1 => "[0-9, ]{0,8}",
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        30 => 1024u16..65535,
        1 => Just(15090u16),
        2 => Just(8080u16),
        1 => 1u16..1024,
        1 => Just(65535u16),
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("1s".to_owned()),
        1 => Just("500ms".to_owned()),
        2 => Just("24h".to_owned()),
        1 => Just("25h".to_owned()),
        6 => (1u32..100000).prop_map(|n| format!("{n}s")),
        6 => (1u32..2000).prop_map(|n| format!("{n}m")),
        1 => "[0-9a-z ]{0,6}",
    ]
}

fn spiffe_id() -> impl Strategy<Value = String> {
    (label(), label(), prop::bool::weighted(0.9)).prop_map(|(ns, sa, same_domain)| {
        let td = if same_domain {
            "cluster.local"
        } else {
            "other.example"
        };
        format!("spiffe://{td}/ns/{ns}/sa/{sa}")
    })
}

fn id_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => spiffe_id(),
        1 => label().prop_map(|ns| format!("spiffe://cluster.local/ns/{ns}/*")),
        1 => Just("spiffe://cluster.local/*".to_owned()),
        1 => Just("spiffe://other.example/*".to_owned()),
    ]
}

fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (1u32..4000).prop_map(|n| format!("{n}m")),
        6 => (1u32..2048).prop_map(|n| format!("{n}Mi")),
        3 => (1u32..8).prop_map(|n| n.to_string()),
        1 => "[0-9A-Za-z.]{1,5}",
    ]
}

/// One pod's `keyward.io/*` annotations, drawn from every production of the grammar.
fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let secret = (
        label(),
        vault_path(),
        prop::option::of(key()),
        prop::option::of(uids()),
        prop::option::of(prop_oneof![8 => Just("true"), 8 => Just("false"), 1 => Just("yes")]),
    )
        .prop_map(|(name, path, key, uids, optional)| {
            let mut m = vec![(
                format!("keyward.io/secret-{name}"),
                match key {
                    Some(k) => format!("{path}#{k}"),
                    None => path,
                },
            )];
            if let Some(u) = uids {
                m.push((format!("keyward.io/secret-{name}-uids"), u));
            }
            if let Some(o) = optional {
                m.push((format!("keyward.io/secret-{name}-optional"), o.to_owned()));
            }
            m
        });
    let inbound = (
        prop::collection::vec((port(), port()), 1..3),
        prop::collection::vec(id_pattern(), 0..3),
    )
        .prop_map(|(pairs, allow)| {
            let mut m = vec![(
                "keyward.io/inbound".to_owned(),
                pairs
                    .iter()
                    .map(|(t, a)| format!("{t}:{a}"))
                    .collect::<Vec<_>>()
                    .join(","),
            )];
            if let Some((tls, _)) = pairs.first() {
                if !allow.is_empty() {
                    m.push((format!("keyward.io/inbound-allow-{tls}"), allow.join(",")));
                }
            }
            m
        });
    let outbound = (
        label(),
        port(),
        prop_oneof![
            label().prop_map(|h| format!("{h}.shop.svc")),
            Just("10.0.0.1".to_owned()),
            Just("[::1]".to_owned()),
        ],
        port(),
        prop::collection::vec(spiffe_id(), 0..3),
    )
        .prop_map(|(name, local, host, up, ids)| {
            let mut m = vec![(
                format!("keyward.io/outbound-{name}"),
                format!("{local}={host}:{up}"),
            )];
            if !ids.is_empty() {
                m.push((format!("keyward.io/outbound-{name}-id"), ids.join(",")));
            }
            m
        });
    let fixed = prop_oneof![
        label().prop_map(|r| vec![("keyward.io/role".to_owned(), r)]),
        duration().prop_map(|d| vec![("keyward.io/kv-refresh".to_owned(), d)]),
        prop_oneof![3 => Just("debug"), 3 => Just("info"), 3 => Just("warn"), 1 => Just("loud")]
            .prop_map(|l| vec![("keyward.io/log-level".to_owned(), l.to_owned())]),
        prop_oneof![Just("app"), Just("app,worker"), Just("worker")]
            .prop_map(|c| vec![("keyward.io/containers".to_owned(), c.to_owned())]),
        (quantity(), quantity()).prop_map(|(r, l)| vec![
            ("keyward.io/memory-request".to_owned(), r),
            ("keyward.io/memory-limit".to_owned(), l)
        ]),
        quantity().prop_map(|q| vec![("keyward.io/cpu-limit".to_owned(), q)]),
        uids().prop_map(|u| vec![("keyward.io/identity-uids".to_owned(), u)]),
    ];
    (
        prop::collection::vec(secret, 0..3),
        prop::option::of(inbound),
        prop::collection::vec(outbound, 0..3),
        prop::collection::vec(fixed, 0..3),
    )
        .prop_map(|(secrets, inbound, outbound, fixed)| {
            secrets
                .into_iter()
                .chain(inbound)
                .chain(outbound)
                .chain(fixed)
                .flatten()
                .collect()
        })
}

/// Injector configs a cluster may run with: the defaults, and one with every optional
/// cluster-wide setting that reaches the sidecar's config.
fn injector_configs() -> Vec<(&'static str, InjectorConfig)> {
    let custom = InjectorConfig::from_yaml(
        "vault:\n  addr: https://vault.vault.svc:8200\n  ca_config_map: {name: vault-ca}\n\
         auth: {method: kubernetes, mount: k8s-prod}\n\
         kv_refresh: 2m\n",
    )
    .expect("the custom injector config is valid");
    vec![("defaults", InjectorConfig::default()), ("custom", custom)]
}

#[test]
fn every_pod_the_webhook_admits_gets_a_config_the_sidecar_loads() {
    for (label, cfg) in injector_configs() {
        let mut runner = TestRunner::new(PropConfig {
            cases: 3000,
            failure_persistence: None,
            ..PropConfig::default()
        });
        let injected = std::cell::Cell::new(0u32);
        let meshless = std::cell::Cell::new(0u32);
        let result = runner.run(&annotations(), |ann| {
            match admit(&cfg, &ann) {
                Admission::Injected(pod) => {
                    injected.set(injected.get() + 1);
                    let yaml = config_yaml(&pod).map_err(TestCaseError::fail)?;
                    let config = sidecar_loads(&yaml).map_err(TestCaseError::fail)?;
                    if config.identity.is_none() {
                        meshless.set(meshless.get() + 1);
                    }
                }
                Admission::NotInjected(_) => {}
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("injector config {label}: {e}");
        }
        // The generator must reach both kinds of admitted pod, or the property says little.
        let (injected, meshless) = (injected.get(), meshless.get());
        assert!(
            injected > 300 && meshless > 50 && injected - meshless > 50,
            "injector config {label}: only {injected} pods admitted ({meshless} without mesh ports) of 3000"
        );
    }
}

/// The cases the property test is there to catch, spelled out: each must be admitted and load,
/// or be denied by the webhook, never admitted and then refused by the sidecar.
#[test]
fn boundary_values_are_either_denied_or_loaded() {
    let cfg = InjectorConfig::default();
    let long = |n: usize| format!("secret/data/{}", "a".repeat(n - 12));
    let cases: Vec<BTreeMap<String, String>> = vec![
        // secrets only: no identity, no proxy section
        [("keyward.io/secret-db", "secret/data/batch/db".to_owned())].into(),
        // the 612-byte path one side used to admit and the other refuse
        [("keyward.io/secret-db", long(612))].into(),
        [("keyward.io/secret-db", long(512))].into(),
        [("keyward.io/secret-db", long(513))].into(),
        [("keyward.io/secret-db", "pki/issue/web@v2".to_owned())].into(),
        [(
            "keyward.io/secret-db",
            format!("secret/data/db#{}", "k".repeat(256)),
        )]
        .into(),
        [(
            "keyward.io/secret-db",
            format!("secret/data/db#{}", "k".repeat(257)),
        )]
        .into(),
        [("keyward.io/secret-db", "secret".to_owned())].into(),
    ]
    .into_iter()
    .map(|m: BTreeMap<&str, String>| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    .collect();
    for ann in cases {
        match admit(&cfg, &ann) {
            Admission::Injected(pod) => {
                let yaml = config_yaml(&pod).expect("config");
                if let Err(e) = sidecar_loads(&yaml) {
                    panic!("{ann:?} was admitted but: {e}");
                }
            }
            Admission::NotInjected(why) => {
                assert!(why.contains("keyward.io/secret-db"), "{ann:?}: {why}");
            }
        }
    }
}

#[test]
fn a_secrets_only_pod_gets_a_broker_only_sidecar() {
    let ann: BTreeMap<String, String> = [(
        "keyward.io/secret-db".to_owned(),
        "secret/data/batch/db".to_owned(),
    )]
    .into();
    let Admission::Injected(pod) = admit(&InjectorConfig::default(), &ann) else {
        panic!("a secrets-only pod is injected");
    };
    let config = sidecar_config(&pod);
    assert!(config.identity.is_none() && config.proxy.is_none());
    let (identity, proxy) = keyward_sidecar::validate(&config).expect("loads");
    assert!(identity.is_none(), "no SVID is issued");
    assert!(proxy.inbound.is_empty() && proxy.outbound.is_empty());
    assert!(
        proxy.admin.ip().is_loopback(),
        "the admin endpoint still serves"
    );
}

#[test]
fn every_golden_injected_pod_has_a_config_the_sidecar_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("injector/tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let file = entry.expect("entry").file_name();
        if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".pod.json")) {
            sidecar_config(&golden(name));
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} golden pods in {}",
        dir.display()
    );
}

#[test]
fn kv_refresh_annotation_becomes_the_brokers_kv_refresh() {
    // full.review.json carries keyward.io/kv-refresh: 30s; minimal has none.
    assert_eq!(
        sidecar_config(&golden("full")).kv_refresh(),
        Duration::from_secs(30)
    );
    assert_eq!(
        sidecar_config(&golden("minimal")).kv_refresh(),
        Duration::from_secs(60),
        "without the annotation the broker's default applies"
    );
}
