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
                {"name": "app", "image": "app:1", "command": ["/app", "serve"], "args": ["-v"], "ports": [{"containerPort": 8080}]},
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

/// Secret names the delivery annotations refer to: declared often, sometimes not.
fn secret_ref() -> impl Strategy<Value = &'static str> {
    prop_oneof![12 => Just("db"), 6 => Just("api-key"), 1 => Just("nope")]
}

/// `keyward.io/env-CONTAINER` and `keyward.io/on-change-CONTAINER` (`keyward exec`).
fn exec_annotations() -> impl Strategy<Value = Vec<(String, String)>> {
    let var = prop_oneof![30 => "[A-Z_][A-Z0-9_]{0,8}", 1 => "[0-9a-z=#-]{1,4}"];
    let decl = (var, secret_ref(), prop::option::of(key())).prop_map(|(v, s, k)| match k {
        Some(k) => format!("{v}={s}#{k}"),
        None => format!("{v}={s}"),
    });
    let action = prop_oneof![
        3 => Just("none"),
        3 => Just("restart"),
        3 => Just("signal:HUP"),
        3 => Just("SIGUSR1"),
        1 => Just("signal:KILL")
    ];
    let change = (secret_ref(), action).prop_map(|(s, a)| {
        if a == "SIGUSR1" {
            format!("{s}=signal:{a}")
        } else {
            format!("{s}={a}")
        }
    });
    (
        prop_oneof![16 => Just("app"), 1 => Just("worker"), 1 => Just("nope")],
        prop::collection::vec(decl, 1..4),
        prop::collection::vec(change, 0..2),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(c, env, changes, newlines)| {
            let sep = if newlines { "\n" } else { " " };
            let mut m = Vec::new();
            if !env.is_empty() || changes.is_empty() {
                m.push((format!("keyward.io/env-{c}"), env.join(sep)));
            }
            if !changes.is_empty() {
                m.push((format!("keyward.io/on-change-{c}"), changes.join(sep)));
            }
            m
        })
}

/// `keyward.io/file-NAME` with `-secret` or `-template` and `-mode`.
fn file_annotations() -> impl Strategy<Value = Vec<(String, String)>> {
    let content = prop_oneof![
        4 => (secret_ref(), prop::option::of(key())).prop_map(|(s, k)| ("secret", match k {
            Some(k) => format!("{s}#{k}"),
            None => s.to_owned(),
        })),
        4 => prop_oneof![
            6 => Just("postgres://u:{{ secrets.db.data.password }}@db/x?v={{ secrets.db.version }}"),
            3 => Just("{{ secrets.api_key.data.token }} {{ secrets.api_key.lease_expires }}"),
            3 => Just("{% for k, v in secrets.db.data|items %}{{ k }}={{ v }}\n{% endfor %}"),
            1 => Just("{{ secrets.nope.data.x }}"),
            1 => Just("{{ secrets['db'] }}"),
            1 => Just("{{ broken "),
        ]
        .prop_map(|t| ("template", t.to_owned())),
    ];
    (
        label(),
        prop_oneof![12 => Just("app"), 12 => Just("worker"), 1 => Just("nope")],
        prop_oneof![
            40 => "[a-z][a-z0-9._-]{0,12}",
            1 => Just("../x".to_owned()),
            1 => Just("x/y".to_owned()),
            1 => Just("..".to_owned()),
        ],
        content,
        prop::option::of(prop_oneof![
            4 => Just("0440"),
            4 => Just("0400"),
            4 => Just("0444"),
            1 => Just("0640")
        ]),
    )
        .prop_map(|(name, c, path, (kind, value), mode)| {
            let mut m = vec![
                (format!("keyward.io/file-{name}"), format!("{c}/{path}")),
                (format!("keyward.io/file-{name}-{kind}"), value),
            ];
            if let Some(mode) = mode {
                m.push((format!("keyward.io/file-{name}-mode"), mode.to_owned()));
            }
            m
        })
}

/// One pod's `keyward.io/*` annotations, drawn from every production of the grammar.
fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let secret = (
        prop_oneof![8 => label(), 2 => Just("db".to_owned()), 2 => Just("api-key".to_owned())],
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
        prop::option::weighted(0.25, exec_annotations()),
        prop::option::weighted(0.25, prop::collection::vec(file_annotations(), 1..3)),
        prop::option::weighted(
            0.5,
            Just(vec![
                (
                    "keyward.io/secret-db".to_owned(),
                    "secret/data/db".to_owned(),
                ),
                (
                    "keyward.io/secret-api-key".to_owned(),
                    "secret/data/api#token".to_owned(),
                ),
            ]),
        ),
    )
        .prop_map(
            |(secrets, inbound, outbound, fixed, exec, files, delivered)| {
                secrets
                    .into_iter()
                    .chain(delivered)
                    .chain(inbound)
                    .chain(outbound)
                    .chain(fixed)
                    .chain(exec)
                    .chain(files.into_iter().flatten())
                    .flatten()
                    .collect()
            },
        )
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

/// `keyward exec`'s own command line, to parse what the injector wrote with the wrapper's
/// parser.
#[derive(clap::Parser)]
struct ExecCommandLine {
    #[command(flatten)]
    exec: keyward_exec::ExecArgs,
}

/// What the injector did for `keyward exec` and rendered files in an admitted pod, checked:
/// each wrapped container's command parses with the wrapper's own parser (clap, then its
/// declaration checks) and ends with the original command; the binary's volume and its
/// installer are there; each file's container mounts its own files volume read-only, which the
/// sidecar mounts where the config says it writes. Returns (wrapped containers, files).
fn delivery_holds(pod: &Value, config: &Config) -> Result<(usize, usize), String> {
    use clap::Parser as _;
    let containers = pod["spec"]["containers"]
        .as_array()
        .ok_or("no containers")?;
    let volumes = pod["spec"]["volumes"].as_array().ok_or("no volumes")?;
    let mounts = |c: &Value| c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let mut wrapped = 0;
    for c in containers {
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if cmd.first() != Some(&"/keyward/bin/keyward") {
            continue;
        }
        wrapped += 1;
        let line = ExecCommandLine::try_parse_from(
            std::iter::once("keyward-exec").chain(cmd[2..].iter().copied()),
        )
        .map_err(|e| format!("the wrapper's parser refuses {cmd:?}: {e}"))?;
        keyward_exec::spec::build(&line.exec.env, &line.exec.on_change)
            .map_err(|e| format!("the wrapper refuses {cmd:?}: {}", e.0))?;
        if line.exec.command != ["/app", "serve"] || cmd[1] != "exec" {
            return Err(format!("the original command is not kept: {cmd:?}"));
        }
        for s in keyward_exec::spec::build(&line.exec.env, &line.exec.on_change)
            .map_err(|e| e.0)?
            .secrets()
        {
            if config.secret(s).is_none() {
                return Err(format!("{s} is read by the wrapper but not declared"));
            }
        }
        if !mounts(c).iter().any(|m| {
            m["name"] == "keyward-bin" && m["mountPath"] == "/keyward/bin" && m["readOnly"] == true
        }) {
            return Err(format!(
                "the wrapped container has no read-only binary mount: {c}"
            ));
        }
    }
    if wrapped > 0 {
        let installer = pod["spec"]["initContainers"]
            .as_array()
            .and_then(|i| i.iter().find(|c| c["name"] == "keyward-install"))
            .ok_or("no keyward-install init container")?;
        if installer.get("restartPolicy").is_some()
            || !volumes.iter().any(|v| v["name"] == "keyward-bin")
        {
            return Err("the installer or the binary's volume is wrong".into());
        }
    }
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|i| i.iter().find(|c| c["name"] == "keyward"))
        .ok_or("no sidecar")?;
    for f in &config.files {
        let c = containers
            .iter()
            .find(|c| c["name"] == f.container.as_str())
            .ok_or_else(|| format!("file {} for a missing container", f.name))?;
        let own = mounts(c)
            .into_iter()
            .find(|m| m["mountPath"] == "/keyward/files" && m["readOnly"] == true)
            .ok_or_else(|| format!("container {} does not mount its files", f.container))?;
        let in_sidecar = mounts(sidecar)
            .into_iter()
            .find(|m| m["name"] == own["name"])
            .ok_or("the sidecar does not mount the files volume")?;
        if in_sidecar["mountPath"].as_str() != f.dir.to_str() {
            return Err(format!(
                "the sidecar writes {} but mounts {in_sidecar}",
                f.dir.display()
            ));
        }
        for other in containers.iter().filter(|o| o["name"] != c["name"]) {
            if mounts(other).iter().any(|m| m["name"] == own["name"]) {
                return Err(format!(
                    "{} also mounts {}'s files",
                    other["name"], f.container
                ));
            }
        }
    }
    Ok((wrapped, config.files.len()))
}

/// The seed of a run: `PROPTEST_RNG_SEED` when set (to replay a run), else a fresh one, named
/// in every failure so the run can be replayed.
fn run_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        })
}

/// Per injector config, 3000 generated pods through the webhook with the RNG seeded by `seed`:
/// each admitted pod's config loads and its delivery holds. The generator must reach each kind
/// of admitted pod, or the property says little; the counts are random (binomial over the
/// 3000 cases), so each bound sits at least 4 standard deviations below its mean (measured over
/// many seeds: about 450 injected, 205 without mesh ports, 50 wrapped, 44 with files), where a
/// run falls short about once in a million, not once in 30 as with the bounds of 30 for the
/// wrapped pods and the pods with files (the failure of a colleague's run: see
/// `the_seed_that_left_fewer_than_30_pods_with_files_passes`).
fn check_admitted_pods(seed: u64) {
    use proptest::test_runner::RngSeed;
    for (label, cfg) in injector_configs() {
        let mut runner = TestRunner::new(PropConfig {
            cases: 3000,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed),
            ..PropConfig::default()
        });
        let injected = std::cell::Cell::new(0u32);
        let meshless = std::cell::Cell::new(0u32);
        let wrapped = std::cell::Cell::new(0u32);
        let with_files = std::cell::Cell::new(0u32);
        let result = runner.run(&annotations(), |ann| {
            match admit(&cfg, &ann) {
                Admission::Injected(pod) => {
                    injected.set(injected.get() + 1);
                    // No injected pod gains an fsGroup (it would change the group of every
                    // volume): the socket's group comes as a supplementary group instead.
                    let sc = &pod["spec"]["securityContext"];
                    if sc.get("fsGroup").is_some() || sc.get("fsGroupChangePolicy").is_some() {
                        return Err(TestCaseError::fail(format!(
                            "the injector gave a pod without one an fsGroup: {sc}"
                        )));
                    }
                    let yaml = config_yaml(&pod).map_err(TestCaseError::fail)?;
                    let config = sidecar_loads(&yaml).map_err(TestCaseError::fail)?;
                    if config.identity.is_none() {
                        meshless.set(meshless.get() + 1);
                    }
                    let (w, f) = delivery_holds(&pod, &config).map_err(TestCaseError::fail)?;
                    wrapped.set(wrapped.get() + u32::from(w > 0));
                    with_files.set(with_files.get() + u32::from(f > 0));
                }
                Admission::NotInjected(_) => {}
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("injector config {label} (replay: PROPTEST_RNG_SEED={seed}): {e}");
        }
        let (injected, meshless) = (injected.get(), meshless.get());
        assert!(
            injected > 300 && meshless > 50 && injected - meshless > 50,
            "injector config {label} (PROPTEST_RNG_SEED={seed}): only {injected} pods admitted ({meshless} without mesh ports) of 3000"
        );
        let (wrapped, with_files) = (wrapped.get(), with_files.get());
        assert!(
            wrapped > 20 && with_files > 15,
            "injector config {label} (PROPTEST_RNG_SEED={seed}): only {wrapped} admitted pods with keyward exec and {with_files} with files of 3000"
        );
    }
}

#[test]
fn every_pod_the_webhook_admits_gets_a_config_the_sidecar_loads() {
    check_admitted_pods(run_seed());
}

/// The run that failed once: the property held, but the generator's random share of admitted
/// pods with files fell to 30 or fewer of 3000 (a bound about 2 standard deviations below the
/// mean). Kept as a regression seed.
/// `PROPTEST_RNG_SEED=27`: with the default injector config, 29 admitted pods with files of
/// 3000 (and 52 wrapped, 432 admitted); it failed the former bound of 30 (`with_files > 30`).
const SHORT_OF_FILES_SEED: u64 = 27;

#[test]
fn the_seed_that_left_fewer_than_30_pods_with_files_passes() {
    check_admitted_pods(SHORT_OF_FILES_SEED);
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
