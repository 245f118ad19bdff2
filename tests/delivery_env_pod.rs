//! An app that reads only environment variables, under `keyward exec`, in pods the way a cluster
//! runs them (issue 13 §2, §5): the manifests go through `keyward inject` and the e2e pod runner
//! executes the injected spec as is — the `keyward-install` init container copies the binary,
//! the app container's rewritten `command` runs the wrapper as PID 1 of the container's own PID
//! namespace, reading over the container's own socket. The app gets exactly the declared
//! variables (no other key, no other secret, no token), its exit status is the container's (what
//! a Job sees: 0, non-zero, 128 + signal), and the wrapper's reads are attributed to that
//! container in the pod's audit log.
//!
//! Also: every manifest of `examples/delivery/` is admitted by `keyward inject` and its output
//! parses and holds what each delivery kind needs.

mod delivery_pods;

use std::collections::BTreeMap;
use std::time::Duration;

use delivery_pods::{inject, Pods};
use serde_json::{json, Value};

const USER: &str = "delivery-user";
const CANARY: &str = "canary-envpod-3f9a1c-password";
/// A key of the same secret that no `--env` names.
const EXTRA: &str = "canary-envpod-undeclared-key-77b2";
/// A secret the pod declares but the app's `--env` does not read.
const OTHER: &str = "canary-envpod-other-secret-c0d4";
const NS: &str = "delivery";
const APP_UID: u32 = 1000;
const RUN: Duration = Duration::from_secs(90);

/// A Job whose app prints its environment (and whether the sidecar's token is visible) and
/// ends with `end` (a shell command: `exit 0`, `kill -USR1 $$`, ...). A second container,
/// `logger`, reads nothing: the audit must not attribute the app's reads to it.
fn job(name: &str, end: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {NS}}}
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        keyward.io/secret-db: secret/data/delivery/db
        keyward.io/secret-other: secret/data/delivery/other
        keyward.io/env-app: |
          DB_USER=db#user
          DB_PASSWORD=db#password
    spec:
      serviceAccountName: envapp
      restartPolicy: Never
      terminationGracePeriodSeconds: 10
      securityContext: {{runAsNonRoot: true, runAsUser: {APP_UID}, runAsGroup: {APP_UID}}}
      containers:
        - name: app
          image: docker.io/library/debian:12
          command:
            - sh
            - -c
            - |
              env | sed 's/^/ENV /'
              if [ -e /var/run/secrets/keyward/token ]; then echo "TOKEN visible"; else echo "TOKEN absent"; fi
              echo "PPID $PPID"
              {end}
          securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
        - name: logger
          image: docker.io/library/debian:12
          command: ["true"]
          securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#
    )
}

/// The app container of an injected pod spec.
fn app_container(spec: &Value) -> &Value {
    spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "app"))
        .expect("an app container in the injected spec")
}

/// The `ENV NAME=VALUE` lines an app printed.
fn printed_env(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_only_app_under_keyward_exec_in_an_injected_pod_gets_exactly_its_variables_and_a_job_sees_its_exit_code(
) {
    let mut pods = Pods::start().await;
    pods.bao
        .kv_put(
            "delivery/db",
            json!({"user": USER, "password": CANARY, "extra": EXTRA}),
        )
        .await;
    pods.bao
        .kv_put("delivery/other", json!({"token": OTHER}))
        .await;
    pods.role(
        NS,
        "envapp",
        r#"path "secret/data/delivery/*" { capabilities = ["read"] }"#,
    )
    .await;

    let cases = [
        ("env-zero", "exit 0", 0),
        ("env-fail", "exit 42", 42),
        // Killed by a signal: 128 + 10, as a container runtime reports it (`$$$$`: the
        // kubelet expands `$$` in a command to `$`).
        ("env-signal", "kill -USR1 $$$$", 138),
    ];
    let manifests: Vec<String> = cases.iter().map(|(n, end, _)| job(n, end)).collect();
    let injected = inject(&manifests.join("---\n"));
    let parsed = keyward_e2e::manifest::Manifests::parse(&injected).expect("injected stream");
    assert_eq!(parsed.pods.len(), cases.len());
    let spec = &parsed.pods[0].spec;
    let app = app_container(spec);
    let command: Vec<&str> = app["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        command[..5],
        [
            "/keyward/bin/keyward",
            "exec",
            "--env=DB_USER=db#user",
            "--env=DB_PASSWORD=db#password",
            "--"
        ],
        "the injector runs the app under keyward exec: {command:?}"
    );
    // What the spec itself gives the app container: only names, no value of a secret.
    let spec_env: Vec<String> = app["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|v| v["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !injected.contains(CANARY) && !injected.contains(EXTRA) && !injected.contains(OTHER),
        "no secret value in the injected spec"
    );

    pods.run(&injected).await;

    for (name, _, code) in cases {
        let statuses = pods
            .pod_mut(NS, name)
            .run_to_completion(RUN)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let logs = pods.logs(NS, name, &["app", "logger"]);
        let exit = |c: &str| {
            use std::os::unix::process::ExitStatusExt;
            statuses
                .iter()
                .find(|(n, _)| n == c)
                .and_then(|(_, s)| *s)
                .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
        };
        // What a Job sees: the app container's status is the app's.
        assert_eq!(exit("app"), Some(code), "{name}: {statuses:?}\n{logs}");
        assert_eq!(exit("logger"), Some(0), "{name}: {statuses:?}\n{logs}");
        assert_eq!(
            exit("keyward"),
            Some(0),
            "{name}: the sidecar stops cleanly once the Job's apps completed\n{logs}"
        );

        let log = pods.pod(NS, name).logs("app");
        // The wrapper is PID 1 of the container's PID namespace, the app its child.
        assert!(
            log.lines().any(|l| l == "PPID 1"),
            "{name}: the app's parent is the wrapper as PID 1:\n{logs}"
        );
        assert!(
            log.lines().any(|l| l == "TOKEN absent"),
            "{name}: the sidecar's Vault login token is not mounted in the app:\n{logs}"
        );
        let env = printed_env(&log);
        assert_eq!(env.get("DB_USER").map(String::as_str), Some(USER), "{name}");
        assert_eq!(
            env.get("DB_PASSWORD").map(String::as_str),
            Some(CANARY),
            "{name}"
        );
        // Exactly: the declared variables, the spec's own env, what the runtime sets (PATH,
        // HOSTNAME, HOME) and the shell's own; nothing else.
        let allowed: Vec<&str> = ["DB_USER", "DB_PASSWORD", "PATH", "HOSTNAME", "HOME"]
            .into_iter()
            .chain(spec_env.iter().map(String::as_str))
            .chain(["PWD", "SHLVL", "_", "OLDPWD"])
            .collect();
        for (k, v) in &env {
            assert!(
                allowed.contains(&k.as_str()),
                "{name}: unexpected variable {k} in the app's environment"
            );
            assert!(
                !v.contains(EXTRA) && !v.contains(OTHER),
                "{name}: {k} holds an undeclared secret value"
            );
            assert!(
                !v.starts_with("eyJ") && !v.starts_with("hvs.") && !v.starts_with("s."),
                "{name}: {k} looks like a token"
            );
        }
        for s in &spec_env {
            assert!(env.contains_key(s), "{name}: the spec's {s} is kept");
        }
        for c in ["keyward", "keyward-install", "logger"] {
            let l = pods.pod(NS, name).logs(c);
            assert!(
                !l.contains(CANARY) && !l.contains(EXTRA) && !l.contains(OTHER),
                "{name}: a secret value in {c}'s log"
            );
        }
        // The wrapper's log (the app container's stderr) holds no value either.
        let wrapper_log: String = log
            .lines()
            .filter(|l| !l.starts_with("ENV "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!wrapper_log.contains(CANARY), "{name}: {wrapper_log}");

        // The wrapper's read, attributed to the app container (its own socket) and uid; nothing
        // read for the logger, nothing read of the secret the app did not declare.
        let audit = pods.audit(NS, name);
        let reads: Vec<&Value> = audit
            .iter()
            .filter(|r| r["action"] == "secret.read")
            .collect();
        assert_eq!(
            reads.len(),
            1,
            "{name}: one read of the one secret the app's --env names: {reads:#?}"
        );
        let r = reads[0];
        assert_eq!(r["secret"], "db", "{name}: {r}");
        assert_eq!(r["decision"], "allow", "{name}: {r}");
        assert_eq!(r["caller"]["container"], "app", "{name}: {r}");
        assert_eq!(r["caller"]["uid"], APP_UID, "{name}: {r}");
    }
}

/// The injected pod specs of a stream, with their sidecar's config (`KEYWARD_CONFIG`) read and
/// checked as the sidecar checks it at start.
fn injected_pods(
    injected: &str,
) -> Vec<(
    keyward_e2e::manifest::PodDef,
    keyward_broker::config::SidecarConfig,
)> {
    let parsed = keyward_e2e::manifest::Manifests::parse(injected).expect("injected stream");
    parsed
        .pods
        .into_iter()
        .map(|p| {
            let sidecar = p.spec["initContainers"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "keyward"))
                .unwrap_or_else(|| panic!("{}: no keyward sidecar", p.name))
                .clone();
            let text = sidecar["env"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["name"] == "KEYWARD_CONFIG"))
                .and_then(|e| e["value"].as_str())
                .unwrap_or_else(|| panic!("{}: no KEYWARD_CONFIG", p.name));
            let config = keyward_broker::config::SidecarConfig::from_yaml(text)
                .unwrap_or_else(|e| panic!("{}: the sidecar config: {e}", p.name));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: the sidecar would refuse its config: {e}", p.name));
            (p, config)
        })
        .collect()
}

/// The mounts of a container, as `(volume, mountPath, readOnly)`.
fn mounts(c: &Value) -> Vec<(String, String, bool)> {
    c["volumeMounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_owned(),
                        m["mountPath"].as_str().unwrap_or_default().to_owned(),
                        m["readOnly"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `kubernetes-validate --strict` (scripts/deps.sh all installs it) passes every object of `file`.
#[track_caller]
fn kube_validate(file: &std::path::Path) {
    let tool = keyward_testkit::tools::tool(
        "KEYWARD_KUBE_VALIDATE",
        "kubevalidate-venv/bin/kubernetes-validate",
        "scripts/deps.sh all",
    );
    let out = std::process::Command::new(tool)
        .arg("--strict")
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.lines().all(|l| l.is_empty() || l.starts_with("INFO")),
        "kubernetes-validate --strict {}:\n{all}",
        file.display()
    );
}

#[test]
fn every_example_of_examples_delivery_is_admitted_and_delivers_its_kind() {
    let dir = delivery_pods::examples().join("delivery");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/delivery") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let kind = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_owned();
        let text = std::fs::read_to_string(&path).expect("example");
        let (code, injected, err) = delivery_pods::inject_output(&text);
        assert_eq!(code, 0, "{kind}: keyward inject refused it: {err}");
        // The example and what the injector made of it are valid Kubernetes objects.
        let out = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(out.path(), &injected).expect("write the injected stream");
        for file in [path.as_path(), out.path()] {
            kube_validate(file);
        }
        let pods = injected_pods(&injected);
        assert_eq!(pods.len(), 1, "{kind}: one app");
        let (pod, config) = &pods[0];
        let app = app_container(&pod.spec);
        let command: Vec<&str> = app["command"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let wrapped = command.first() == Some(&"/keyward/bin/keyward");
        let app_mounts = mounts(app);
        let files_mount = app_mounts
            .iter()
            .find(|(_, p, _)| p == "/keyward/files")
            .cloned();
        // Every app reaches its own socket.
        assert!(
            app["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["name"] == "KEYWARD_SOCKET")),
            "{kind}: {app:#}"
        );
        assert!(
            app_mounts
                .iter()
                .any(|(v, p, ro)| v == "keyward-socket" && p == "/run/keyward" && *ro),
            "{kind}: {app:#}"
        );
        match kind.as_str() {
            "socket" => {
                assert!(!wrapped && files_mount.is_none() && config.files.is_empty());
            }
            "file" => {
                assert!(!wrapped, "{kind}: a file needs no wrapper");
                let (volume, _, ro) = files_mount.expect("the files volume in the app");
                assert!(ro, "{kind}: read-only in the app");
                assert_eq!(config.files.len(), 1);
                let f = &config.files[0];
                assert_eq!((f.container.as_str(), f.path.as_str()), ("app", "db.dsn"));
                assert!(f.template.is_some());
                // The sidecar writes where the app reads: the same volume.
                let sidecar = pod.spec["initContainers"][0].clone();
                assert!(
                    mounts(&sidecar)
                        .iter()
                        .any(|(v, p, ro)| *v == volume && p == "/run/keyward-files/app" && !ro),
                    "{kind}: {sidecar:#}"
                );
            }
            "env" => {
                assert_eq!(
                    command[..4],
                    [
                        "/keyward/bin/keyward",
                        "exec",
                        "--env=API_TOKEN=api#token",
                        "--"
                    ],
                    "{kind}"
                );
                assert!(files_mount.is_none() && config.files.is_empty());
                assert!(app_mounts
                    .iter()
                    .any(|(v, p, ro)| v == "keyward-bin" && p == "/keyward/bin" && *ro));
                assert!(
                    pod.spec["initContainers"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["name"] == "keyward-install")),
                    "{kind}: the binary is copied in"
                );
            }
            "cert" => {
                assert!(wrapped, "{kind}: nginx runs under keyward exec");
                assert!(
                    command.contains(&"--on-change=web=signal:HUP"),
                    "{kind}: {command:?}"
                );
                let web = config
                    .secrets
                    .iter()
                    .find(|s| s.name == "web")
                    .expect("the certificate's secret");
                assert!(web.issue.is_some(), "{kind}: issued from PKI");
                let mut paths: Vec<&str> = config.files.iter().map(|f| f.path.as_str()).collect();
                paths.sort_unstable();
                assert_eq!(paths, ["web.ca.crt", "web.crt", "web.key"], "{kind}");
                assert!(files_mount.is_some_and(|(_, _, ro)| ro), "{kind}");
            }
            other => panic!("examples/delivery/{other}.yaml: which delivery kind is it?"),
        }
        seen.push(kind);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["cert", "env", "file", "socket"],
        "one app of each kind"
    );
}
