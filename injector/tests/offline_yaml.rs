//! `keyward inject` keeps the meaning of everything it does not inject, as kubectl's YAML 1.1
//! reader reads it: ambiguous strings stay strings, merge keys are resolved before the pod
//! template changes, duplicate keys are refused, and errors name the document and field path.
//! (The same output read by PyYAML and checked against the Kubernetes schemas is in
//! tests/injector_tools.rs.)

use keyward_injector::config::InjectorConfig;
use keyward_injector::offline::{inject_stream, parse_stream};
use serde_json::{json, Value};

fn fixture() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/injector/yaml11.yaml"),
    )
    .expect("fixture")
}

fn inject(text: &str) -> Result<String, String> {
    inject_stream(text, &InjectorConfig::default()).map_err(|e| e.to_string())
}

fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn strings_that_yaml_1_1_reads_as_other_types_stay_strings() {
    let out = inject(&fixture()).expect("inject");
    let docs = parse_stream(&out).expect("output reads back");
    let cm = &doc(&docs, "ConfigMap")["data"];
    for (k, v) in [
        ("enabled", "yes"),
        ("legacy", "on"),
        ("tls", "off"),
        ("answer", "NO"),
        ("short", "y"),
        ("mode", "0777"),
        ("big", "1_000"),
        ("sci", "1e3"),
        ("inf", ".inf"),
        ("tilde", "~"),
        ("nothing", "null"),
        ("true", "True"),
        ("date", "2001-12-14"),
        ("time", "12:30"),
        ("multi", "line one\nline two\n"),
    ] {
        assert_eq!(cm[k], json!(v), "data.{k} in:\n{out}");
    }
    // Each is written quoted, so the output means the same to a YAML 1.1 reader.
    for quoted in [
        "'yes'",
        "'on'",
        "'off'",
        "'NO'",
        "'y'",
        "'0777'",
        "'1_000'",
        "'1e3'",
        "'.inf'",
        "'~'",
        "'null'",
        "'true'",
        "'2001-12-14'",
        "'12:30'",
    ] {
        assert!(out.contains(quoted), "{quoted} not quoted in:\n{out}");
    }
    let deploy = doc(&docs, "Deployment");
    let app = container(&deploy["spec"]["template"]["spec"], "app");
    assert_eq!(
        app["args"],
        json!(["--verbose", "yes", "0x1F", "~", "1_000"])
    );
    assert_eq!(app["env"][0], json!({"name": "DEBUG", "value": "off"}));
    assert_eq!(app["env"][1], json!({"name": "LEVEL", "value": "1e3"}));
    assert_eq!(
        app["env"][2]["name"], "KEYWARD_SOCKET",
        "injected after the app's own"
    );
    // Plain YAML 1.1 forms keep kubectl's meaning: off is false, 0x2 is 2.
    assert_eq!(doc(&docs, "CronJob")["spec"]["suspend"], json!(false));
    assert_eq!(doc(&docs, "Job")["spec"]["backoffLimit"], json!(2));
    // The same stream read again gives the same values (the output is a fixed point).
    assert_eq!(inject(&out).expect("re-inject"), out);
}

#[test]
fn merge_keys_are_resolved_before_the_template_changes() {
    let out = inject(&fixture()).expect("inject");
    let docs = parse_stream(&out).expect("output");
    let pod = doc(&docs, "Pod");
    let app = container(&pod["spec"], "app");
    assert_eq!(app["image"], "registry.example/app:1");
    let env: Vec<&str> = app["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(env, ["FEATURE", "COUNT", "KEYWARD_SOCKET"], "{out}");
    assert_eq!(app["env"][1]["value"], "010");
    let mounts: Vec<&str> = app["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(mounts, ["data", "keyward-socket"]);
    assert!(!out.contains("<<"), "merge keys resolved:\n{out}");

    // Explicit keys after << win; a sequence of maps: earlier maps win.
    let v = parse_stream("a: &a {p: 1, q: 1}\nb: &b {q: 2, r: 2}\nc:\n  <<: [*a, *b]\n  p: 0\n")
        .expect("merge");
    assert_eq!(v[0]["c"], json!({"p": 0, "q": 1, "r": 2}));
    // A key set before << that << also sets: readers disagree, so refused.
    let err = inject("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\ndata:\n  a: &d {k: one}\n  b:\n    k: two\n    <<: *d\n")
        .expect_err("ambiguous merge");
    assert!(
        err.starts_with(
            "document 1 (ConfigMap/m) at data.b.k: key 'k' is set before a merge key (<<)"
        ),
        "{err}"
    );
}

#[test]
fn duplicate_keys_are_refused_naming_document_and_key() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: a\n          image: b\n";
    let err = inject(text).expect_err("duplicate");
    assert_eq!(err, "document 2 (Deployment/web) at spec.template.spec.containers[0].image: duplicate key 'image' in spec.template.spec.containers[0]; kubectl refuses a mapping with a key twice (line 14)");
    // YAML 1.1 keys: `on` and `true` are the same key.
    let err = inject("kind: ConfigMap\nmetadata: {name: c}\ndata:\n  on: a\n  true: b\n")
        .expect_err("dup");
    assert!(err.contains("duplicate key 'true' in data"), "{err}");
    let err = inject("a: 1\na: 2\n").expect_err("dup");
    assert_eq!(err, "document 1: duplicate key 'a' in the top level; kubectl refuses a mapping with a key twice (line 2)");
}

#[test]
fn errors_name_the_document_and_the_field_path() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly, namespace: shop}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n            - name: app\n              image: a\n              ports: [{containerPort: http}]\n";
    let err = inject(text).expect_err("bad port");
    assert!(
        err.starts_with("document 2 (CronJob/nightly) at spec.jobTemplate.spec.template.spec.containers[0].ports[0].containerPort: cannot read the pod spec: invalid type: string \"http\""),
        "{err}"
    );
    let err = inject(
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: b, args: [.inf]}]}\n",
    )
    .expect_err("inf");
    assert_eq!(err, "document 1 (Pod/p) at spec.containers[0].args[0]: '.inf': is an infinite or NaN float, which kubectl cannot turn into JSON (line 3)");
    let err = inject("a: [\n").expect_err("syntax");
    assert!(err.starts_with("document 1: not valid YAML: "), "{err}");
}
