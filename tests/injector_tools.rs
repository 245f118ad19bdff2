//! The injector against the real tools: `helm lint --strict` and `helm template` with several
//! values sets, kubernetes-validate (Kubernetes 1.30 and 1.35 schemas, strict) on the rendered
//! chart and on injected workloads, checkov with only the failures listed in
//! `charts/keyward/checkov-skips.yaml`, and the Pod Security Standards "restricted" fields of the
//! sidecar. The tools come from `scripts/deps.sh k8s`; a missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const DEPS_HINT: &str = "run `scripts/deps.sh k8s` to install it";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYWARD_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("keyward")
}

/// The tool named by `var`, else its default place in the cache; fails naming deps.sh.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(default));
    assert!(
        path.is_file(),
        "{var}: {} not found; {DEPS_HINT}",
        path.display()
    );
    path
}

fn helm_bin() -> PathBuf {
    tool("KEYWARD_HELM", "helm-2.2.2/helm/helm")
}

fn kube_validate_bin() -> PathBuf {
    tool(
        "KEYWARD_KUBE_VALIDATE",
        "kubevalidate-venv/bin/kubernetes-validate",
    )
}

fn checkov_bin() -> PathBuf {
    tool("KEYWARD_CHECKOV", "checkov-venv/bin/checkov")
}

fn keyward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

/// Helm with its cache, config and data directories in `scratch`.
fn helm(scratch: &Path) -> Command {
    let mut c = Command::new(helm_bin());
    c.env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data"));
    c
}

fn chart() -> PathBuf {
    repo().join("charts/keyward")
}

/// Named values sets rendered and checked by the tests.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("cert-manager", &["tls.mode=certManager"]),
    (
        "cert-manager-issuer",
        &[
            "tls.mode=certManager",
            "tls.certManager.issuerRef.name=cluster-ca",
            "tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    ),
    (
        "legacy-minimal",
        &[
            "sidecar.mode=legacy",
            "webhook.failurePolicy=Ignore",
            "networkPolicy.enabled=false",
            "metrics.enabled=false",
            "podDisruptionBudget.enabled=false",
            "replicaCount=3",
            "sidecar.vault.caConfigMap.name=vault-ca",
            "sidecar.auth.method=kubernetes",
            "sidecar.auth.mount=kubernetes",
            "sidecar.resources.limits.cpu=200m",
            "sidecar.kvRefresh=5m",
            "sidecar.auditCheckpoint.mount=kv-audit",
            "sidecar.auditCheckpoint.every_records=100",
            "sidecar.vault.addr=http://vault.vault.svc:8200",
            "sidecar.vault.allowInsecureHttp=true",
            "memoryBudgetMiB=64",
        ],
    ),
    (
        "policy-strict",
        &[
            "policy.allowOptOut=false",
            "policy.minKvRefresh=30s",
            "policy.allowHostNamespaces=true",
            "policy.allowTrustDomainWidePatterns=true",
            "sidecar.exposedAppPort=refuse",
        ],
    ),
];

fn render(scratch: &Path, sets: &[&str]) -> String {
    let mut cmd = helm(scratch);
    cmd.args([
        "template",
        "kw",
        "--namespace",
        "keyward-system",
        "--kube-version",
        "1.35.0",
    ])
    .arg(chart());
    for s in sets {
        cmd.args(["--set", s]);
    }
    String::from_utf8(run_ok(&mut cmd).stdout).expect("utf-8")
}

fn docs(yaml: &str) -> Vec<Value> {
    keyward_injector::offline::parse_stream(yaml).expect("YAML stream")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// kubernetes-validate, strict, against Kubernetes `version`; only CRD kinds
/// (cert-manager.io) may lack a schema.
#[track_caller]
fn kube_validate(file: &Path, version: &str) {
    let out = run_ok(
        Command::new(kube_validate_bin())
            .args(["-k", version, "--strict"])
            .arg(file),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in all.lines() {
        let ok = line.starts_with("INFO")
            || (line.starts_with("WARN") && line.contains("api version cert-manager.io/v1"))
            || line.trim().is_empty();
        assert!(
            ok,
            "kubernetes-validate {version} on {}: {line}\n{all}",
            file.display()
        );
    }
    assert!(
        all.contains("passed"),
        "nothing validated in {}:\n{all}",
        file.display()
    );
}

fn inject(input: &Path, config: Option<&Path>) -> String {
    let mut cmd = keyward();
    cmd.args(["inject", "-f"]).arg(input);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    String::from_utf8(run_ok(&mut cmd).stdout).expect("utf-8")
}

fn workloads() -> PathBuf {
    repo().join("tests/fixtures/injector/workloads.yaml")
}

fn legacy_config(dir: &Path) -> PathBuf {
    let p = dir.join("legacy.yaml");
    std::fs::write(&p, "mode: legacy\n").expect("write");
    p
}

#[test]
fn helm_lint_strict_passes_for_every_values_set() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for (name, sets) in VALUE_SETS {
        let mut cmd = helm(scratch.path());
        cmd.args(["lint", "--strict"]).arg(chart());
        for s in *sets {
            cmd.args(["--set", s]);
        }
        let out = run_ok(&mut cmd);
        let all = String::from_utf8_lossy(&out.stdout);
        assert!(all.contains("0 chart(s) failed"), "{name}: {all}");
        assert!(
            !all.contains("[WARNING]") && !all.contains("[ERROR]"),
            "{name}: {all}"
        );
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for (set, needle) in [
        ("sidecar.mode=sidecar", "/sidecar/mode"),
        ("image.digest=latest", "/image/digest"),
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        (
            "sidecar.token.expirationSeconds=60",
            "/sidecar/token/expirationSeconds",
        ),
        (
            "sidecar.security.runAsUser=0",
            "/sidecar/security/runAsUser",
        ),
        ("sidecar.kvRefresh=soon", "/sidecar/kvRefresh"),
        ("sidecar.exposedAppPort=maybe", "/sidecar/exposedAppPort"),
        ("policy.minKvRefresh=soon", "/policy/minKvRefresh"),
        ("policy.allowOptOut=sometimes", "/policy/allowOptOut"),
        ("unknownKey=1", "unknownKey"),
    ] {
        let out = helm(scratch.path())
            .args(["template", "kw"])
            .arg(chart())
            .args(["--set", set])
            .output()
            .expect("helm");
        assert!(!out.status.success(), "{set} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{set}: {err}");
    }
}

#[test]
fn rendered_chart_has_the_webhook_contract_and_validates_on_1_30_and_1_35() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for (name, sets) in VALUE_SETS {
        let yaml = render(scratch.path(), sets);
        let d = docs(&yaml);
        let mwc = find(&d, "MutatingWebhookConfiguration").expect("webhook config");
        let w = &mwc["webhooks"][0];
        let failure = if name.starts_with("legacy") {
            "Ignore"
        } else {
            "Fail"
        };
        assert_eq!(w["failurePolicy"], failure, "{name}");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(w["clientConfig"]["service"]["path"], "/mutate");
        assert_eq!(
            w["namespaceSelector"]["matchLabels"]["keyward.io/inject"],
            "enabled"
        );
        if sets.contains(&"policy.allowOptOut=false") {
            assert!(
                w.get("objectSelector").is_none(),
                "{name}: no label opt-out when the policy forbids opting out"
            );
        } else {
            assert_eq!(
                w["objectSelector"]["matchExpressions"][0]["key"],
                "keyward.io/inject"
            );
        }
        assert_eq!(w["rules"][0]["resources"], serde_json::json!(["pods"]));
        assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));

        let dep = find(&d, "Deployment").expect("deployment");
        let pod = &dep["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"]["keyward.io/inject"], "false",
            "injector pods are excluded"
        );
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert!(pod["spec"]["topologySpreadConstraints"].is_array());
        let c = &pod["spec"]["containers"][0];
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        }
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        let sa = find(&d, "ServiceAccount").expect("sa");
        assert_eq!(sa["automountServiceAccountToken"], false);
        for doc in &d {
            let labels = &doc["metadata"]["labels"];
            for l in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/version",
            ] {
                assert!(labels[l].is_string(), "{name}: {} lacks {l}", doc["kind"]);
            }
        }
        // RBAC only for tls.mode injector (its Secret and its webhook: tests/chart_ops.rs).
        assert_eq!(
            d.iter()
                .any(|x| x["kind"] == "Role" || x["kind"] == "ClusterRole"),
            !name.starts_with("cert-manager"),
            "{name}: RBAC"
        );
        if name.starts_with("cert-manager") {
            assert!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string());
            assert!(find(&d, "Certificate").is_some());
            assert!(find(&d, "Secret").is_none());
        } else {
            // tls.mode injector: the injector provisions the Secret and sets the caBundle.
            assert!(find(&d, "Secret").is_none(), "{name}");
            assert!(w["clientConfig"].get("caBundle").is_none(), "{name}");
        }
        if *name == "default" {
            assert_eq!(dep["spec"]["replicas"], 2);
            assert!(find(&d, "PodDisruptionBudget").is_some());
            assert!(find(&d, "NetworkPolicy").is_some());
        }

        let file = scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).expect("write");
        kube_validate(&file, "1.30.0");
        kube_validate(&file, "1.35.0");

        // The ConfigMap's config is what the injector loads: inject with it.
        let cm = find(&d, "ConfigMap").expect("configmap");
        let loaded = keyward_injector::config::InjectorConfig::from_yaml(
            cm["data"]["config.yaml"].as_str().expect("config.yaml"),
        )
        .unwrap_or_else(|e| panic!("{name}: the chart's config does not load: {e}"));
        // sidecar.auditCheckpoint reaches the injector's config (and so every sidecar's).
        match loaded.audit_checkpoint.as_ref() {
            Some(cp) if name.starts_with("legacy") => {
                assert_eq!((cp.mount.as_str(), cp.every_records), ("kv-audit", 100));
            }
            None if !name.starts_with("legacy") => {}
            other => panic!("{name}: audit_checkpoint {other:?}"),
        }
        let strict = sets.contains(&"policy.allowOptOut=false");
        assert_eq!(loaded.policy.allow_opt_out, !strict, "{name}");
        assert_eq!(loaded.policy.allow_host_namespaces, strict, "{name}");
        assert_eq!(
            loaded.policy.allow_trust_domain_wide_patterns, strict,
            "{name}"
        );
        assert_eq!(
            loaded.policy.min_kv_refresh,
            if strict { "30s" } else { "1s" },
            "{name}"
        );
        assert_eq!(
            loaded.exposed_app_port,
            if strict {
                keyward_injector::config::ExposedAppPort::Refuse
            } else {
                keyward_injector::config::ExposedAppPort::Warn
            },
            "{name}"
        );
        let cfg = scratch.path().join(format!("{name}-config.yaml"));
        std::fs::write(
            &cfg,
            cm["data"]["config.yaml"].as_str().expect("config.yaml"),
        )
        .expect("write");
        let out = docs(&inject(&workloads(), Some(&cfg)));
        let spec = &out[0]["spec"];
        let sidecar = if name.starts_with("legacy") {
            &spec["containers"][0]
        } else {
            &spec["initContainers"][0]
        };
        assert_eq!(sidecar["name"], "keyward", "{name}");
        let sidecar_config = sidecar["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "KEYWARD_CONFIG"))
            .and_then(|e| e["value"].as_str())
            .expect("KEYWARD_CONFIG");
        assert_eq!(
            sidecar_config.contains("kv_refresh: 5m"),
            sets.contains(&"sidecar.kvRefresh=5m"),
            "{name}: sidecar.kvRefresh reaches the sidecar config:\n{sidecar_config}"
        );
        assert_eq!(
            sidecar_config.contains("allow_insecure_http: true"),
            sets.contains(&"sidecar.vault.allowInsecureHttp=true"),
            "{name}: sidecar.vault.allowInsecureHttp reaches the sidecar config:\n{sidecar_config}"
        );
        let args = find(&d, "Deployment").expect("deployment")["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .to_string();
        let budget = if sets.contains(&"memoryBudgetMiB=64") {
            "--memory-budget-mib=64"
        } else {
            "--memory-budget-mib=40"
        };
        assert!(args.contains(budget), "{name}: {budget} in {args}");
        // The chart's default image: the release digest values.yaml pins (release/image.json).
        let pinned: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/release/image.json"))
                .expect("release/image.json"),
        )
        .expect("release/image.json is JSON");
        assert_eq!(
            sidecar["image"],
            format!(
                "ghcr.io/keyward/keyward@{}",
                pinned["digest"].as_str().expect("digest")
            )
        );
    }
}

#[test]
fn injected_workloads_validate_on_1_30_and_1_35() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let legacy = legacy_config(scratch.path());
    for (name, cfg) in [("native", None), ("legacy", Some(legacy.as_path()))] {
        let out = inject(&workloads(), cfg);
        assert!(out.contains("keyward.io/status: injected"));
        let file = scratch.path().join(format!("injected-{name}.yaml"));
        std::fs::write(&file, &out).expect("write");
        kube_validate(&file, "1.30.0");
        kube_validate(&file, "1.35.0");
    }
    // The golden Job/CronJob stream too.
    let out = inject(&repo().join("injector/tests/golden/job.input.yaml"), None);
    let file = scratch.path().join("jobs.yaml");
    std::fs::write(&file, out).expect("write");
    kube_validate(&file, "1.30.0");
    kube_validate(&file, "1.35.0");
}

/// `charts/keyward/checkov-skips.yaml`: check id → targets it may fail on.
fn checkov_skips() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(chart().join("checkov-skips.yaml")).expect("skips file");
    let v = docs(&text).into_iter().next().expect("skips document");
    let map = v.as_object().expect("a map of check ids");
    map.iter()
        .map(|(id, entry)| {
            let reason = entry["reason"].as_str().unwrap_or("");
            assert!(reason.len() > 20, "{id} needs a reason");
            let targets = entry["applies_to"]
                .as_array()
                .expect("applies_to")
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            (id.clone(), targets)
        })
        .collect()
}

#[test]
fn checkov_finds_nothing_beyond_the_listed_skips() {
    let skips = checkov_skips();
    // Not a dot-prefixed directory: checkov skips hidden directories.
    let scratch = tempfile::Builder::new()
        .prefix("keyward-checkov-")
        .tempdir()
        .expect("tempdir");
    let dir = scratch.path().join("manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, sets) in VALUE_SETS
        .iter()
        .filter(|(n, _)| !n.starts_with("cert-manager"))
    {
        std::fs::write(
            dir.join(format!("chart-{name}.yaml")),
            render(scratch.path(), sets),
        )
        .expect("write");
    }
    std::fs::write(dir.join("injected-native.yaml"), inject(&workloads(), None)).expect("write");
    let legacy = legacy_config(scratch.path());
    std::fs::write(
        dir.join("injected-legacy.yaml"),
        inject(&workloads(), Some(&legacy)),
    )
    .expect("write");

    let out = Command::new(checkov_bin())
        .arg("-d")
        .arg(&dir)
        .args([
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "-o",
            "json",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("HOME", scratch.path())
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("checkov");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov output is not JSON ({e}):\n{}", text(&out)));
    let reports = match report {
        Value::Array(a) => a,
        other => vec![other],
    };
    let mut checked = 0;
    let mut unexpected = Vec::new();
    for r in &reports {
        checked += r["summary"]["passed"].as_u64().unwrap_or(0);
        for f in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = f["check_id"].as_str().unwrap_or("?");
            let file = f["file_path"].as_str().unwrap_or("");
            let target = if file.contains("injected-") {
                "injected"
            } else {
                "chart"
            };
            let allowed = skips
                .iter()
                .any(|(s, t)| s == id && t.iter().any(|x| x == target));
            if !allowed {
                unexpected.push(format!(
                    "{id} {} in {file}: {}",
                    f["resource"], f["check_name"]
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "checkov checked almost nothing:\n{}",
        text(&out)
    );
    assert!(
        unexpected.is_empty(),
        "checkov failures not in checkov-skips.yaml:\n{}",
        unexpected.join("\n")
    );
}

/// Every field of the Pod Security Standards "restricted" profile, on the sidecar and on the
/// volumes the injector adds, in both modes.
#[test]
fn sidecar_passes_pod_security_restricted() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let legacy = legacy_config(scratch.path());
    for (mode, cfg) in [("native", None), ("legacy", Some(legacy.as_path()))] {
        let out = docs(&inject(&workloads(), cfg));
        for doc in out
            .iter()
            .filter(|d| d["kind"] == "Pod" || d["kind"] == "Job")
        {
            let spec = if doc["kind"] == "Pod" {
                &doc["spec"]
            } else {
                &doc["spec"]["template"]["spec"]
            };
            let all: Vec<&Value> = spec["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["containers"].as_array().into_iter().flatten())
                .collect();
            let sidecar = all
                .iter()
                .find(|c| c["name"] == "keyward")
                .expect("sidecar");
            let sc = &sidecar["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{mode}");
            assert!(
                sc["runAsUser"].as_i64().is_some_and(|u| u > 0),
                "{mode}: runAsUser"
            );
            assert!(
                sc["runAsGroup"].as_i64().is_some_and(|g| g > 0),
                "{mode}: runAsGroup"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["privileged"], false);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
            assert!(sc["capabilities"].get("add").is_none());
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            assert!(sc.get("procMount").is_none() && sc.get("seLinuxOptions").is_none());
            assert!(sc.get("windowsOptions").is_none());
            for p in sidecar["ports"].as_array().into_iter().flatten() {
                assert!(p.get("hostPort").is_none(), "no host ports");
            }
            // Restricted volume types only; nothing from the host.
            for v in spec["volumes"].as_array().expect("volumes") {
                let name = v["name"].as_str().unwrap_or("");
                if name.starts_with("keyward") {
                    assert!(
                        v.get("projected").is_some()
                            || v.get("emptyDir").is_some()
                            || v.get("configMap").is_some(),
                        "{name}"
                    );
                }
                assert!(v.get("hostPath").is_none());
            }
            assert!(
                spec.get("hostNetwork").is_none()
                    && spec.get("hostPID").is_none()
                    && spec.get("hostIPC").is_none()
            );
            // Resources: modest requests, a memory limit.
            assert_eq!(sidecar["resources"]["requests"]["cpu"], "10m");
            assert_eq!(sidecar["resources"]["limits"]["memory"], "128Mi");
            if mode == "native" {
                assert_eq!(sidecar["restartPolicy"], "Always");
                assert_eq!(
                    spec["initContainers"][0]["name"], "keyward",
                    "sidecar first"
                );
            } else {
                assert_eq!(spec["containers"][0]["name"], "keyward", "sidecar first");
                assert!(sidecar["lifecycle"]["postStart"]["exec"]["command"].is_array());
            }
        }
    }
}

#[test]
fn inject_cli_reads_stdin_and_reports_errors_with_document_and_annotation() {
    let input = std::fs::read(workloads()).expect("fixture");
    for args in [&["inject"][..], &["inject", "-f", "-"][..]] {
        let mut child = keyward()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(&input).expect("write");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", text(&out));
        let d = docs(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(d.len(), 3);
        assert_eq!(d[2]["kind"], "NetworkPolicy");
    }

    let scratch = tempfile::tempdir().expect("tempdir");
    let bad = scratch.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: shop}\nspec:\n  template:\n    metadata:\n      annotations: {keyward.io/inbound: '15443'}\n    spec:\n      containers: [{name: app, image: a}]\n",
    )
    .expect("write");
    let out = keyward()
        .args(["inject", "-f"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing written on error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (StatefulSet/db) at spec.template.metadata.annotations: annotation keyward.io/inbound: expected a comma-separated list of TLS_PORT:APP_PORT"),
        "{err}"
    );

    let cfg = scratch.path().join("cfg.yaml");
    std::fs::write(&cfg, "token: {expiration_seconds: 60}\n").expect("write");
    let out = keyward()
        .args(["inject", "--config"])
        .arg(&cfg)
        .arg("-f")
        .arg(workloads())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("config field token.expiration_seconds: must be at least 600"));
}

/// The Python of the kubernetes-validate venv, which has PyYAML (a YAML 1.1 reader).
fn pyyaml_python() -> PathBuf {
    let python = kube_validate_bin().with_file_name("python3");
    assert!(
        python.is_file(),
        "{}: not found; {DEPS_HINT}",
        python.display()
    );
    python
}

/// Every document of a file as PyYAML (YAML 1.1) reads it, as JSON.
fn pyyaml_read(file: &Path) -> Vec<Value> {
    let out = run_ok(
        Command::new(pyyaml_python())
            .arg("-c")
            .arg(
                "import sys, json, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
         print(json.dumps(docs, default=str))",
            )
            .arg(file),
    );
    serde_json::from_slice(&out.stdout).expect("PyYAML output is JSON")
}

/// Whether everything in `before` is in `after` unchanged: objects keep every key, lists keep
/// every item in order (the injector only adds).
fn kept(before: &Value, after: &Value) -> bool {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => b
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| kept(v, av))),
        (Value::Array(b), Value::Array(a)) => {
            let mut rest = a.iter();
            b.iter().all(|bv| rest.any(|av| kept(bv, av)))
        }
        (b, a) => b == a,
    }
}

#[test]
fn offline_injection_means_the_same_to_yaml_1_1_readers_and_validates() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let input = repo().join("tests/fixtures/injector/yaml11.yaml");
    let out = inject(&input, None);
    let file = scratch.path().join("yaml11-injected.yaml");
    std::fs::write(&file, &out).expect("write");

    // Our reader agrees with PyYAML on the input (booleans, numbers, merge keys) ...
    let ours_in = docs(&std::fs::read_to_string(&input).expect("fixture"));
    let py_in = pyyaml_read(&input);
    assert_eq!(ours_in, py_in, "the input read by keyward and by PyYAML");
    // ... and PyYAML reads the output exactly as written: no string became a bool or number.
    let ours_out = docs(&out);
    let py_out = pyyaml_read(&file);
    assert_eq!(ours_out, py_out, "the output read by PyYAML:\n{out}");
    assert_eq!(py_in.len(), py_out.len());
    for (before, after) in py_in.iter().zip(&py_out) {
        let kind = before["kind"].as_str().unwrap_or("");
        if matches!(kind, "ConfigMap" | "Service") {
            assert_eq!(before, after, "{kind} passes through unchanged");
        } else {
            assert!(
                kept(before, after),
                "{kind}: something of the input was lost or changed:\n{before}\n{after}"
            );
            assert_ne!(before, after, "{kind} was injected");
        }
    }
    kube_validate(&file, "1.30.0");
    kube_validate(&file, "1.35.0");
}
