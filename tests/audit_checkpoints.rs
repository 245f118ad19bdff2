//! Audit checkpoints in a real OpenBao (issue 12 §3): a sidecar anchors its chain in Vault
//! while it serves and at shutdown; `keyward audit verify --checkpoints`, with a reviewer's
//! token, detects deletion, editing, reordering, truncation and a full rewrite of the log even
//! when the attacker recomputed the chain; and the workload's own token can add checkpoints to
//! its own path only, never delete, destroy, undelete or rewrite their history.
//!
//! The Vault setup is the one `docs/vault-setup.md` gives (section 8).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};
use support::broker::{BrokerProc, KEYWARD};
use support::jwt::Claims;
use support::{eventually, TestVault};

const NS: &str = "shop";
const SA: &str = "orders";
const POD: &str = "orders-pod-1";
const MOUNT: &str = "keyward-audit";

/// The checkpoint setup of docs/vault-setup.md §8 on the harness's OpenBao: a KV v2 mount
/// keeping many versions, the templated policy, a jwt role with one entity alias per pod (its
/// uid) whose metadata carries the namespace and pod name, and a reviewer policy.
async fn setup() -> TestVault {
    let v = TestVault::start(NS, SA, "1h", "2h").await;
    let bao = &v.bao;
    bao.kv2("", MOUNT).await;
    bao.api(
        "POST",
        &format!("{MOUNT}/config"),
        Some(json!({"max_versions": 10000, "delete_version_after": "0s"})),
    )
    .await;
    let auths = bao.api("GET", "sys/auth", None).await;
    let accessor = auths["jwt/"]["accessor"]
        .as_str()
        .or_else(|| auths["data"]["jwt/"]["accessor"].as_str())
        .expect("jwt accessor")
        .to_owned();
    let policy = format!(
        "path \"{MOUNT}/data/checkpoints/{{{{identity.entity.aliases.{accessor}.metadata.namespace}}}}/{{{{identity.entity.aliases.{accessor}.metadata.pod_name}}}}\" {{\n  capabilities = [\"create\", \"update\"]\n}}\n"
    );
    bao.policy("keyward-audit-checkpoint", &policy).await;
    bao.policy(
        "keyward-audit-reviewer",
        &format!(
            "path \"{MOUNT}/data/checkpoints/*\" {{ capabilities = [\"read\"] }}\n\
             path \"{MOUNT}/metadata/checkpoints/*\" {{ capabilities = [\"read\", \"list\"] }}\n"
        ),
    )
    .await;
    bao.api(
        "POST",
        &format!("auth/jwt/role/{SA}"),
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "/kubernetes.io/pod/uid",
            "user_claim_json_pointer": true,
            "bound_claims_type": "string",
            "bound_claims": {"/kubernetes.io/namespace": NS, "/kubernetes.io/serviceaccount/name": SA},
            "claim_mappings": {
                "/kubernetes.io/namespace": "namespace",
                "/kubernetes.io/serviceaccount/name": "service_account_name",
                "/kubernetes.io/pod/name": "pod_name"
            },
            "token_ttl": "1h",
            "token_max_ttl": "2h",
            "token_policies": ["app", "keyward-audit-checkpoint"],
        })),
    )
    .await;
    v
}

/// A token of the reviewer policy only.
async fn reviewer_token(v: &TestVault) -> String {
    let t = v
        .bao
        .api(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["keyward-audit-reviewer"], "no_default_policy": true, "ttl": "1h"})),
        )
        .await;
    t["auth"]["client_token"]
        .as_str()
        .expect("reviewer token")
        .to_owned()
}

/// A call to OpenBao with `token` (none: unauthenticated): (status, body or null).
async fn call(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().expect("method"), format!("{addr}/v1/{path}"));
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("OpenBao answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Logs in as the pod's sidecar does: the role named after the service account, the pod's
/// projected token.
async fn login_as_pod(v: &TestVault, pod: &str) -> String {
    let mut claims = Claims::new(NS, SA);
    claims.pod = pod.to_owned();
    let (status, body) = call(
        &v.bao.addr(),
        None,
        "POST",
        "auth/jwt/login",
        Some(json!({"role": SA, "jwt": v.issuer.mint(&claims)})),
    )
    .await;
    assert_eq!(status, 200, "login as {pod}: {body}");
    body["auth"]["client_token"]
        .as_str()
        .expect("client token")
        .to_owned()
}

fn checkpoint_path(pod: &str) -> String {
    format!("{MOUNT}/data/checkpoints/{NS}/{pod}")
}

/// Runs `keyward audit verify [--checkpoints] FILE` as a reviewer: (success, stdout+stderr).
fn verify(file: &Path, v: &TestVault, token: &str, checkpoints: bool) -> (bool, String) {
    let mut cmd = Command::new(KEYWARD);
    cmd.args(["audit", "verify"]);
    if checkpoints {
        cmd.args(["--checkpoints", "--allow-insecure-http"]);
    }
    let out = cmd
        .arg(file)
        .env("VAULT_ADDR", v.bao.addr())
        .env("VAULT_TOKEN", token)
        .output()
        .expect("run keyward audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(token),
        "the reviewer's token never appears in the output"
    );
    (out.status.success(), text)
}

/// Audit records, parsed.
type Log = Vec<Map<String, Value>>;

fn records(file: &Path) -> Log {
    std::fs::read_to_string(file)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// What an attacker who can write the log does after changing records: renumbers them from 1
/// and recomputes every `prev` and `hash`, so that the chain verifies on its own.
fn rechain(mut recs: Vec<Map<String, Value>>, chain: Option<&str>) -> Vec<Map<String, Value>> {
    let mut prev = keyward_audit::GENESIS.to_owned();
    for (i, r) in recs.iter_mut().enumerate() {
        r.insert("seq".into(), json!(i + 1));
        if let Some(c) = chain {
            r.insert("chain".into(), json!(c));
        }
        r.insert("prev".into(), json!(prev));
        r.remove("hash");
        let hash = keyward_audit::record_hash(r);
        r.insert("hash".into(), json!(hash));
        prev = hash;
    }
    recs
}

fn write_log(dir: &Path, name: &str, recs: &[Map<String, Value>]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: String = recs
        .iter()
        .map(|r| serde_json::to_string(r).expect("json") + "\n")
        .collect();
    std::fs::write(&path, text).expect("write log");
    path
}

/// The KV versions of a pod's checkpoint path, as root sees them.
async fn versions(v: &TestVault, pod: &str) -> Vec<Value> {
    let (status, meta) = v
        .bao
        .api_status(
            "GET",
            &format!("{MOUNT}/metadata/checkpoints/{NS}/{pod}"),
            None,
        )
        .await;
    if status == 404 {
        return Vec::new();
    }
    let vs = meta["data"]["versions"].as_object().expect("versions");
    let mut out = Vec::new();
    for n in 1..=vs.len() {
        let d = v
            .bao
            .api(
                "GET",
                &format!("{}?version={n}", checkpoint_path(pod)),
                None,
            )
            .await;
        out.push(d["data"]["data"].clone());
    }
    out
}

#[tokio::test]
async fn a_sidecar_anchors_its_chain_in_vault_and_every_rewrite_up_to_the_last_checkpoint_is_detected(
) {
    let v = setup().await;
    v.bao
        .kv_put("app", json!({"password": "canary-cp-71e2"}))
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.log");
    let extra = format!(
        "secrets:\n  - {{name: app, path: secret/data/app}}\naudit: {{file: {}, checkpoint: {{every_records: 5, every: 1h}}}}\n",
        log.display()
    );
    let mut b = BrokerProc::start(&v.bao.addr(), &v.token(NS, SA), &extra, &[]);
    b.wait_ready().await;
    // Written while serving: a checkpoint after each burst of reads (every 5 records).
    let mut while_serving = Vec::new();
    for round in 1..=3 {
        for _ in 0..6 {
            assert_eq!(b.get("/v1/secrets/app").await.status, 200);
        }
        while_serving = tokio::time::timeout(
            Duration::from_secs(30),
            eventually(
                Duration::from_secs(60),
                "a checkpoint after each burst of reads",
                || async {
                    let vs = versions(&v, POD).await;
                    (vs.len() >= round).then_some(vs)
                },
            ),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no checkpoint {round} in Vault within 30 s while the sidecar serves; its log:\n{}",
                b.log()
            )
        });
    }
    assert!(b.is_running());
    let chain = while_serving[0]["chain"]
        .as_str()
        .expect("chain")
        .to_owned();
    assert_eq!(while_serving[0]["namespace"], NS);
    assert_eq!(while_serving[0]["pod_name"], POD);
    assert!(
        while_serving.iter().all(|c| c["chain"] == chain.as_str()),
        "{while_serving:?}"
    );
    let status = b.terminate();
    assert!(status.success(), "broker exit: {status:?}\n{}", b.log());
    support::assert_no_panic("broker", &b.log());

    // The last checkpoint was written at shutdown, after the reads, before the token was
    // revoked: only the revocation's own record comes after it.
    let recs = records(&log);
    let all = versions(&v, POD).await;
    let last = all.last().expect("a checkpoint");
    let last_seq = last["seq"].as_u64().expect("seq");
    assert_eq!(
        recs.last().and_then(|r| r["action"].as_str()),
        Some("vault.revoke_token")
    );
    assert_eq!(last_seq as usize, recs.len() - 1, "{all:?}");
    assert_eq!(
        last["head"],
        recs[last_seq as usize - 1]["hash"],
        "the checkpoint holds the head the sidecar wrote"
    );
    for c in &all {
        let seq = c["seq"].as_u64().expect("seq") as usize;
        assert_eq!(c["head"], recs[seq - 1]["hash"], "checkpoint {c}");
    }

    let reviewer = reviewer_token(&v).await;
    let (ok, out) = verify(&log, &v, &reviewer, true);
    assert!(ok, "the untouched log verifies against Vault: {out}");
    assert!(
        out.contains(&format!("anchored up to seq {last_seq}")),
        "the unanchored tail is stated: {out}"
    );

    let n = recs.len();
    // Each attack keeps the chain consistent (recomputed), so the chain alone verifies; only
    // the checkpoints tell.
    let mut deleted = recs.clone();
    deleted.remove(3);
    let mut edited = recs.clone();
    edited[2].insert("reason".into(), json!("nothing to see"));
    let mut reordered = recs.clone();
    reordered.swap(2, 3);
    let attacks: Vec<(&str, Log, String)> = vec![
        (
            "deleted",
            rechain(deleted, None),
            "differs from checkpoint version".into(),
        ),
        (
            "edited",
            rechain(edited, None),
            "differs from checkpoint version".into(),
        ),
        (
            "reordered",
            rechain(reordered, None),
            "differs from checkpoint version".into(),
        ),
        (
            "truncated",
            recs[..n - 4].to_vec(),
            format!("seq {}-{last_seq} missing", n - 3),
        ),
        (
            "rewritten",
            rechain(recs.clone(), Some("00000000000000000000000000000000")),
            "chain removed".into(),
        ),
    ];
    for (name, tampered, finding) in attacks {
        let file = write_log(dir.path(), &format!("{name}.log"), &tampered);
        let (alone, out) = verify(&file, &v, &reviewer, false);
        assert!(
            alone,
            "{name}: the recomputed chain verifies on its own: {out}"
        );
        let (ok, out) = verify(&file, &v, &reviewer, true);
        assert!(!ok, "{name}: detected with the checkpoints: {out}");
        assert!(
            out.contains(&finding) && out.contains("FAILED: chain"),
            "{name}: names {finding:?}: {out}"
        );
    }
}

#[tokio::test]
async fn the_workload_token_writes_only_its_own_checkpoint_path_and_cannot_delete_destroy_undelete_or_rewrite_history(
) {
    let v = setup().await;
    let addr = v.bao.addr();
    let a = login_as_pod(&v, POD).await;
    // Another pod of the same service account logs in after it: each pod has its own entity
    // alias (its uid), so neither login changes what the other's token may write.
    let b = login_as_pod(&v, "orders-pod-2").await;
    let own = checkpoint_path(POD);
    let cp = |seq: u64| json!({"data": {"chain": "c1", "seq": seq, "head": "ab".repeat(32)}});
    for seq in [1, 2] {
        let (s, body) = call(&addr, Some(&a), "POST", &own, Some(cp(seq))).await;
        assert_eq!(s, 200, "the pod writes its own path: {body}");
    }
    let (s, body) = call(
        &addr,
        Some(&b),
        "POST",
        &checkpoint_path("orders-pod-2"),
        Some(cp(1)),
    )
    .await;
    assert_eq!(s, 200, "the other pod writes its own path: {body}");

    let rel = format!("checkpoints/{NS}/{POD}");
    let forbidden: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", checkpoint_path("orders-pod-2"), Some(cp(9))),
        (
            "POST",
            format!("{MOUNT}/data/checkpoints/other/{POD}"),
            Some(cp(9)),
        ),
        (
            "POST",
            format!("{MOUNT}/data/checkpoints/{NS}"),
            Some(cp(9)),
        ),
        ("DELETE", own.clone(), None),
        (
            "POST",
            format!("{MOUNT}/delete/{rel}"),
            Some(json!({"versions": [1]})),
        ),
        (
            "POST",
            format!("{MOUNT}/destroy/{rel}"),
            Some(json!({"versions": [1]})),
        ),
        (
            "POST",
            format!("{MOUNT}/undelete/{rel}"),
            Some(json!({"versions": [1]})),
        ),
        (
            "POST",
            format!("{MOUNT}/metadata/{rel}"),
            Some(json!({"max_versions": 1, "delete_version_after": "1s"})),
        ),
        ("DELETE", format!("{MOUNT}/metadata/{rel}"), None),
        (
            "POST",
            format!("{MOUNT}/config"),
            Some(json!({"max_versions": 1})),
        ),
        (
            "POST",
            format!("sys/mounts/{MOUNT}/tune"),
            Some(json!({"options": {"version": "2"}})),
        ),
        ("GET", format!("{MOUNT}/metadata/{rel}"), None),
    ];
    for (method, path, body) in forbidden {
        let (s, answer) = call(&addr, Some(&a), method, &path, body).await;
        assert_eq!(
            s, 403,
            "{method} {path} with the workload's token: {answer}"
        );
    }
    // After all that, the pod can still add to its own history, and nothing was lost.
    let (s, body) = call(&addr, Some(&a), "POST", &own, Some(cp(3))).await;
    assert_eq!(s, 200, "{body}");
    let meta = v
        .bao
        .api("GET", &format!("{MOUNT}/metadata/{rel}"), None)
        .await;
    let vs = meta["data"]["versions"].as_object().expect("versions");
    assert_eq!(vs.len(), 3, "{meta}");
    for (n, ver) in vs {
        assert_eq!(ver["destroyed"], false, "version {n}: {meta}");
        assert_eq!(ver["deletion_time"], "", "version {n}: {meta}");
    }
    assert_eq!(
        meta["data"]["max_versions"], 0,
        "the path's own setting is untouched"
    );
    let config = v.bao.api("GET", &format!("{MOUNT}/config"), None).await;
    assert_eq!(config["data"]["max_versions"], 10000, "{config}");
}
