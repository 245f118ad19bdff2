//! `keyward audit report` in a real headless Chromium (Debian's `chromium`, installed by
//! `scripts/deps.sh browser`, part of `all`), with the network taken away (`unshare -n`): the
//! page generated from a multi-pod, multi-chain export — written by the audit log's own writer,
//! one pod's lines wrapped in Fluent Bit envelopes, a gap cut into one chain, a secret and a
//! process named like markup — shows the per-secret counts, the denials, the chain with the gap
//! and the markup as text.
//!
//! With `--checkpoints`, against a real OpenBao holding the sidecars' checkpoints: per chain, the
//! last checkpoint and whether the log agrees, a recomputed rewrite shown as a mismatch.
//!
//! Outputs kept: `$CARGO_TARGET_TMPDIR/audit-report/` and `audit-report-checkpoints/` (under the
//! target dir: `tmp/audit-report/`...) hold `export.jsonl`, `report.html`, `dom.html` (what
//! Chromium parsed) and `report.png` (its screenshot).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use keyward_audit::cli::{run, AuditArgs, AuditCommand};
use keyward_audit::{AuditConfig, AuditLog, Caller, Decision, PodIdentity, Record};

const CANARY: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='img'\">";

fn open(dir: &Path, pod: &str) -> AuditLog {
    let log = AuditLog::open(AuditConfig {
        path: dir.join("audit.log"),
        stdout: false,
        hmac_key: None,
        fsync: false,
    })
    .expect("open");
    log.set_pod(PodIdentity {
        namespace: "shop".into(),
        service_account: pod.into(),
        pod_name: format!("{pod}-7c9f"),
        pod_uid: format!("uid-{pod}"),
    });
    log
}

fn access(log: &AuditLog, secret: &str, uid: u32, comm: &str, allow: bool, n: usize) {
    for _ in 0..n {
        let mut r = Record::new(
            "secret.read",
            if allow {
                Decision::Allow
            } else {
                Decision::Deny
            },
        );
        r.secret = Some(secret.into());
        r.caller = Some(Caller {
            pid: 0,
            uid,
            gid: uid,
            comm: comm.into(),
            ..Caller::default()
        });
        if !allow {
            r.reason = Some(format!("uid {uid} is not in the secret's allow list"));
        }
        log.record(&r).expect("write");
    }
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("audit.log"))
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The export: three pods, four chains (shipping restarted), payments' lines in Fluent Bit
/// envelopes, seq 4-5 of shipping's first chain removed. Returns the file and the id of the
/// chain with the gap.
fn export(out: &Path) -> (PathBuf, String) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let orders = open(dirs[0].path(), "orders");
    access(&orders, "orders-db", 1000, "orders", true, 12);
    access(&orders, "payments-key", 1001, "curl", false, 3);
    access(&orders, "orders-db", 1002, "migrate", true, 2);
    let payments = open(dirs[1].path(), "payments");
    access(&payments, "stripe-key", 1000, "payments", true, 7);
    access(&payments, CANARY, 1000, CANARY, false, 1);
    let shipping = open(dirs[2].path(), "shipping");
    access(&shipping, "labels-api", 1000, "shipping", true, 10);
    let gap_chain = shipping.chain_id().to_owned();
    drop(shipping);
    let shipping = open(dirs[2].path(), "shipping");
    access(&shipping, "labels-api", 1000, "shipping", true, 4);

    let o = lines(dirs[0].path());
    let p: Vec<String> = lines(dirs[1].path())
        .into_iter()
        .map(|l| {
            serde_json::json!({"log": format!("{l}\n"), "stream": "stdout",
                "kubernetes": {"namespace_name": "shop", "pod_name": "payments-7c9f"}})
            .to_string()
        })
        .collect();
    let s: Vec<String> = lines(dirs[2].path())
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, l)| l)
        .collect();
    let mut all = Vec::new();
    for i in 0..o.len().max(p.len()).max(s.len()) {
        for part in [&o, &p, &s] {
            if let Some(l) = part.get(i) {
                all.push(l.clone());
            }
        }
    }
    all.push("a line of the sidecar's own log, not a record".into());
    let file = out.join("export.jsonl");
    std::fs::write(&file, all.join("\n") + "\n").expect("write export");
    (file, gap_chain)
}

fn chromium() -> PathBuf {
    let found = std::env::var_os("KEYWARD_CHROMIUM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("chromium"))
                    .find(|p| p.is_file())
            })
        });
    found.unwrap_or_else(|| {
        panic!(
            "chromium not found (neither $KEYWARD_CHROMIUM nor `chromium` on PATH): install it \
             with `scripts/deps.sh browser` (part of `scripts/deps.sh all`)"
        )
    })
}

/// Runs Chromium headless in a new network namespace (no network at all: only loopback, down).
fn headless(args: &[String], profile: &Path) -> std::process::Output {
    let out = Command::new("timeout")
        .arg("180")
        .arg("unshare")
        .arg("-n")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run timeout unshare -n chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `<tr ...>...</tr>` rows of the DOM whose opening tag contains `marker`.
fn rows<'a>(dom: &'a str, marker: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<tr ") {
        let row = &rest[i..];
        let end = row.find("</tr>").map_or(row.len(), |e| e + 5);
        let open_end = row.find('>').unwrap_or(0);
        if row[..open_end].contains(marker) {
            found.push(&row[..end]);
        }
        rest = &row[end..];
    }
    found
}

#[test]
fn report_in_headless_chromium_shows_counts_denials_gaps_and_markup_as_text() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-report");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("output dir");
    let (file, gap_chain) = export(&out);
    let html_path = out.join("report.html");
    let code = run(AuditArgs {
        command: AuditCommand::Report {
            files: vec![file],
            out: Some(html_path.clone()),
            window: false,
            any_order: false,
            checkpoints: Default::default(),
        },
    });
    assert_eq!(code, ExitCode::SUCCESS);
    let html = std::fs::read_to_string(&html_path).expect("report written");
    for outside in ["src=\"", "href=\"", "@import", "url(", "<link", "<script"] {
        assert!(
            !html.contains(outside),
            "the page refers to something outside it ({outside})"
        );
    }

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("file://{}", html_path.display());
    let dom =
        String::from_utf8(headless(&["--dump-dom".into(), url.clone()], profile.path()).stdout)
            .expect("utf-8 DOM");
    std::fs::write(out.join("dom.html"), &dom).expect("keep the DOM");
    let png = out.join("report.png");
    headless(
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,3200".into(),
            "--hide-scrollbars".into(),
            url,
        ],
        profile.path(),
    );
    let shot = std::fs::read(&png).expect("screenshot written");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "a real screenshot at {}",
        png.display()
    );

    // The page was parsed as a page: title intact, the sections there.
    assert!(
        dom.contains("<title>keyward audit report</title>"),
        "title changed: {}",
        &dom[..dom.len().min(400)]
    );
    assert!(dom.contains("37 records in 4 chains from 1 input; 1 line held no record."));

    // Per-secret counts.
    for (secret, reads, denied) in [
        ("orders-db", 14, 0),
        ("stripe-key", 7, 0),
        ("labels-api", 12, 0),
        ("payments-key", 0, 3),
    ] {
        let row = rows(&dom, &format!("data-secret=\"{secret}\""));
        assert_eq!(row.len(), 1, "one row for {secret}");
        assert!(
            row[0].contains(&format!("<td class=\"n reads\">{reads}</td>"))
                && row[0].contains(&format!("<td class=\"n denied\">{denied}</td>")),
            "{secret}: {}",
            row[0]
        );
        assert!(
            row[0].contains("<svg class=\"spark\""),
            "a chart for {secret}"
        );
    }

    // Denials: three for payments-key by curl, one for the canary.
    assert!(dom.contains("<p id=\"denial-count\">4 denials.</p>"));
    let denials = rows(&dom, "class=\"denial\"");
    assert_eq!(denials.len(), 4, "{denials:?}");
    let curl = denials
        .iter()
        .filter(|r| {
            r.contains("<td>shop/orders-7c9f</td>")
                && r.contains("uid 1001 curl")
                && r.contains("uid 1001 is not in the secret's allow list")
        })
        .count();
    assert_eq!(curl, 3, "{denials:?}");

    // The chain with the gap, named with its pod; the other three intact.
    let broken = rows(&dom, "class=\"chain broken\"");
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(
        broken[0].contains(&format!("data-chain=\"{gap_chain}\""))
            && broken[0].contains("shop/shipping-7c9f uid-shipping")
            && broken[0].contains("seq 4-5 missing (removed or not collected"),
        "{}",
        broken[0]
    );
    assert_eq!(rows(&dom, "class=\"chain intact\"").len(), 3);
    assert!(dom.contains("<p id=\"no-checkpoints\">No checkpoints given"));

    // Top callers per container.
    assert!(dom.contains("shop/orders-7c9f <span class=\"muted\">container</span>"));
    assert!(rows(&dom, "class=\"caller\"")
        .iter()
        .any(|r| r.contains("<td>uid 1000 orders</td><td class=\"n\">12</td>")));

    // The canary is text: no script or img element was created from it, and it reads as
    // written (secret name, process name).
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(!dom.contains("<img"), "an img element in the DOM");
    let shown = "&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x \
                 onerror=\"document.title='img'\"&gt;";
    let canary_rows = rows(&dom, "class=\"denial\"")
        .into_iter()
        .filter(|r| r.contains(shown))
        .count();
    assert_eq!(canary_rows, 1, "the canary shown as text in its denial row");
    assert!(
        dom.contains(&format!("<td>uid 1000 {shown}</td>")),
        "as a caller"
    );
}

/// What the sidecar writes to its pod's checkpoint path (docs/vault-setup.md §8), as one KV v2
/// version.
async fn checkpoint(bao: &keyward_testkit::bao::Bao, pod: &str, chain: &str, seq: u64, head: &str) {
    bao.api(
        "POST",
        &format!("keyward-audit/data/checkpoints/shop/{pod}"),
        Some(serde_json::json!({"data": {
            "chain": chain, "seq": seq, "head": head, "time": "2026-12-02T00:00:00Z",
            "pod_uid": format!("uid-{pod}"), "namespace": "shop", "pod_name": pod,
        }})),
    )
    .await;
}

fn hash_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("record");
    v["hash"].as_str().expect("hash").to_owned()
}

/// `keyward audit report --checkpoints` against a real OpenBao holding the checkpoints the
/// sidecars wrote (the §8 mount, read with a reviewer's token): per chain, the last checkpoint
/// (seq, head) and whether the log agrees; a chain rewritten and recomputed by an attacker,
/// which verifies on its own, disagrees. Chromium shows it. Vault unreachable: no page.
#[test]
fn report_with_checkpoints_shows_per_chain_agreement_with_vault() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-report-checkpoints");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("output dir");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let orders = open(dirs[0].path(), "orders");
    access(&orders, "orders-db", 1000, "orders", true, 8);
    let orders_chain = orders.chain_id().to_owned();
    let shipping = open(dirs[1].path(), "shipping");
    access(&shipping, "labels-api", 1000, "shipping", true, 6);
    let shipping_chain = shipping.chain_id().to_owned();
    drop((orders, shipping));
    let o = lines(dirs[0].path());
    let s = lines(dirs[1].path());

    let bao = keyward_testkit::bao::Bao::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reviewer = rt.block_on(async {
        bao.kv2("", "keyward-audit").await;
        checkpoint(&bao, "orders-7c9f", &orders_chain, 5, &hash_of(&o[4])).await;
        checkpoint(&bao, "orders-7c9f", &orders_chain, 8, &hash_of(&o[7])).await;
        checkpoint(&bao, "shipping-7c9f", &shipping_chain, 4, &hash_of(&s[3])).await;
        bao.policy(
            "keyward-audit-reviewer",
            "path \"keyward-audit/data/checkpoints/*\" { capabilities = [\"read\"] }\n\
             path \"keyward-audit/metadata/checkpoints/*\" { capabilities = [\"read\", \"list\"] }\n",
        )
        .await;
        let t = bao
            .api(
                "POST",
                "auth/token/create",
                Some(serde_json::json!({"policies": ["keyward-audit-reviewer"], "no_default_policy": true})),
            )
            .await;
        t["auth"]["client_token"].as_str().expect("token").to_owned()
    });

    // The attacker rewrites shipping's record 2 and recomputes the chain from there on.
    let mut prev = keyward_audit::GENESIS.to_owned();
    let rewritten: Vec<String> = s
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut m: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(l).expect("record");
            if i == 1 {
                m.insert("secret".into(), "nothing-to-see".into());
            }
            m.insert("prev".into(), prev.clone().into());
            m.remove("hash");
            let h = keyward_audit::record_hash(&m);
            m.insert("hash".into(), h.clone().into());
            prev = h;
            serde_json::Value::Object(m).to_string()
        })
        .collect();
    let file = out.join("export.jsonl");
    std::fs::write(&file, [o, rewritten].concat().join("\n") + "\n").expect("export");

    let report = |addr: String, html: &Path| {
        run(AuditArgs {
            command: AuditCommand::Report {
                files: vec![file.clone()],
                out: Some(html.to_owned()),
                window: false,
                any_order: false,
                checkpoints: keyward_audit::checkpoints::CheckpointArgs {
                    checkpoints: true,
                    vault_addr: Some(addr),
                    vault_token: Some(reviewer.clone()),
                    checkpoint_mount: "keyward-audit".into(),
                    checkpoint_prefix: "checkpoints".into(),
                    allow_insecure_http: true,
                    ..Default::default()
                },
            },
        })
    };
    let html_path = out.join("report.html");
    assert_eq!(report(bao.addr(), &html_path), ExitCode::SUCCESS);
    let html = std::fs::read_to_string(&html_path).expect("report written");
    assert!(
        !html.contains(&reviewer),
        "the reviewer's token is not on the page"
    );

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("file://{}", html_path.display());
    let dom =
        String::from_utf8(headless(&["--dump-dom".into(), url.clone()], profile.path()).stdout)
            .expect("utf-8 DOM");
    std::fs::write(out.join("dom.html"), &dom).expect("keep the DOM");
    headless(
        &[
            format!("--screenshot={}", out.join("report.png").display()),
            "--window-size=1400,2000".into(),
            "--hide-scrollbars".into(),
            url,
        ],
        profile.path(),
    );
    for page in [&html, &dom] {
        // The rewritten chain verifies on its own: only the checkpoint shows it.
        assert_eq!(rows(page, "class=\"chain intact\"").len(), 2, "{page}");
        let agrees = rows(page, "class=\"checkpoint agrees\"");
        assert_eq!(agrees.len(), 1, "{agrees:?}");
        let r = agrees[0];
        assert!(
            r.contains(&format!("data-chain=\"{orders_chain}\""))
                && r.contains("shop/orders-7c9f")
                && r.contains("<td class=\"n last-seq\">8</td>")
                && r.contains(&format!(
                    "<code class=\"last-head\">{}</code>",
                    &hash_of(&lines(dirs[0].path())[7])[..16]
                ))
                && r.contains("<td class=\"n anchored\">8</td>")
                && r.contains("<span class=\"ok\">yes</span>"),
            "{r}"
        );
        let bad = rows(page, "class=\"checkpoint mismatch\"");
        assert_eq!(bad.len(), 1, "{bad:?}");
        let r = bad[0];
        assert!(
            r.contains(&format!("data-chain=\"{shipping_chain}\""))
                && r.contains("<td class=\"n last-seq\">4</td>")
                && r.contains("<span class=\"bad\">no</span>")
                && r.contains("seq 4: hash")
                && r.contains("rewritten"),
            "{r}"
        );
        assert!(
            page.contains("1 checkpoint finding."),
            "the verdict says so"
        );
    }

    // Checkpoints asked for and Vault not answering: no page that could pass for checked.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let none = out.join("unreachable.html");
    assert_eq!(report(addr, &none), ExitCode::FAILURE);
    assert!(!none.exists(), "no page without the checkpoints asked for");
}
