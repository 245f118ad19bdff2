//! The runner against a pod spec, without keyward: volumes, the projected token and its
//! refresh, credentials, /etc/hosts, the native sidecar's startupProbe gate, stop order and
//! cleanup. Needs root (network and mount namespaces), as the e2e test does.

use std::time::Duration;

use base64::Engine;
use keyward_e2e::cluster::Cluster;
use keyward_e2e::manifest::Manifests;
use keyward_e2e::net::NetMode;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: t, labels: {app: p}}
spec:
  serviceAccountName: sa
  terminationGracePeriodSeconds: 10
  securityContext: {fsGroup: 4000}
  initContainers:
    - name: side
      image: example/side
      restartPolicy: Always
      command: ["sh", "-c", "touch /run/shared/ready; exec sleep infinity"]
      startupProbe:
        exec: {command: ["test", "-e", "/run/shared/ready"]}
        periodSeconds: 1
        failureThreshold: 20
      volumeMounts: [{name: shared, mountPath: /run/shared}]
  containers:
    - name: app
      image: example/app
      securityContext: {runAsUser: 1234, runAsGroup: 1234, allowPrivilegeEscalation: false}
      env:
        - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: GREETING, value: "hi $(POD)"}
      command:
        - sh
        - -c
        - |
          test -e /run/shared/ready && echo "started after the sidecar"
          head -c 10 /var/run/secrets/tok/token >/dev/null && echo "token readable"
          echo "$GREETING"
          trap 'echo "got SIGTERM"; exit 0' TERM
          while :; do sleep 0.1; done
      volumeMounts:
        - {name: shared, mountPath: /run/shared}
        - {name: tok, mountPath: /var/run/secrets/tok, readOnly: true}
  volumes:
    - {name: shared, emptyDir: {}}
    - name: tok
      projected:
        defaultMode: 288
        sources: [{serviceAccountToken: {audience: vault, expirationSeconds: 2, path: token}}]
---
apiVersion: v1
kind: Service
metadata: {name: psvc, namespace: t}
spec: {selector: {app: p}}
"#;

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_pod_as_a_kubelet_would() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the pod runner needs root (network and mount namespaces)"
    );
    let mut cluster = Cluster::new(&[]).expect("cluster");
    assert_eq!(cluster.mode(), NetMode::Namespaces);
    let manifests = Manifests::parse(POD).expect("manifests");
    cluster
        .apply(&manifests, &["db.node.svc"])
        .await
        .expect("pod starts");
    let dir = cluster.dir().to_path_buf();

    let pod = cluster.pod("t", "p").expect("pod");
    let token_path = pod.volume("tok").expect("tok").join("token");
    let first = std::fs::read_to_string(&token_path).expect("token");
    let c = claims(&first);
    assert_eq!(c["sub"], "system:serviceaccount:t:sa");
    assert_eq!(c["aud"], serde_json::json!(["vault"]));
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "p");
    assert_eq!(c["kubernetes.io"]["namespace"], "t");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let left = c["exp"].as_i64().expect("exp") - now;
    assert!(
        (0..=2).contains(&left),
        "exp from expirationSeconds: {left}s left"
    );
    // Rewritten at 80% of its 2 s lifetime.
    keyward_e2e::eventually(Duration::from_secs(10), "a refreshed token", || {
        let now = std::fs::read_to_string(&token_path).unwrap_or_default();
        let changed = !now.is_empty() && now != first;
        async move { changed.then_some(()) }
    })
    .await
    .expect("token refresh");

    let out = pod.exec("app", &["id", "-u"]).await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1234");
    let out = pod.exec("app", &["id", "-G"]).await.expect("exec");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4000"),
        "fsGroup is a supplementary group"
    );
    // A PID namespace per container, as container runtimes make: each container's main
    // process is its pid 1, and it sees none of the other container's processes.
    let ns = |c: &str| {
        let pid = pod.pid(c).expect("pid");
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns")
    };
    let ours = std::fs::read_link("/proc/self/ns/pid").expect("our pid ns");
    assert!(
        ns("app") != ns("side") && ns("app") != ours && ns("side") != ours,
        "each container has its own PID namespace"
    );
    let out = pod
        .exec(
            "app",
            &[
                "sh",
                "-c",
                "for p in /proc/1 /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
            ],
        )
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with("sh -c")),
        "the app's command is pid 1 of its namespace: {text}"
    );
    assert!(
        !text.contains("sleep infinity"),
        "the sidecar's processes are not visible: {text}"
    );
    let out = pod.exec("app", &["hostname"]).await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "p");
    let out = pod.exec("app", &["cat", "/etc/hosts"]).await.expect("exec");
    let hosts = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(hosts.contains("db.node.svc"), "{hosts}");
    assert!(hosts.contains("psvc.t.svc"), "{hosts}");
    let out = pod
        .exec("app", &["sh", "-c", "touch /etc/x 2>/dev/null || echo ro"])
        .await
        .expect("exec");
    assert!(
        !std::path::Path::new("/etc/x").exists(),
        "a non-root container cannot write the host's /etc: {out:?}"
    );

    keyward_e2e::eventually(Duration::from_secs(10), "the app's output", || {
        let logs = pod.logs("app");
        async move { logs.contains("hi p").then_some(logs) }
    })
    .await
    .expect("app log");
    let logs = pod.logs("app");
    assert!(logs.contains("started after the sidecar"), "{logs}");
    assert!(logs.contains("token readable"), "{logs}");

    let stopped = cluster.pod_mut("t", "p").expect("pod").stop().await;
    let order: Vec<&str> = stopped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, ["app", "side"]);
    assert!(
        stopped[0].1.expect("app exited").success(),
        "the app handled SIGTERM"
    );
    assert!(cluster
        .pod("t", "p")
        .expect("pod")
        .logs("app")
        .contains("got SIGTERM"));

    drop(cluster);
    assert!(!dir.exists(), "run directory removed");
    let left = keyward_e2e::net::own_namespaces();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
