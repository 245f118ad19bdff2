//! `psql` (Debian's PostgreSQL client) connecting with a DSN file rendered from a dynamic
//! PostgreSQL credential, in a pod the way a cluster runs it (issue 13 §1, §3, §5): the manifest
//! goes through `keyward inject`, the e2e pod runner executes the injected spec as is. The
//! sidecar renders `keyward.io/file-dsn` from OpenBao's database engine (a real PostgreSQL that
//! asks for passwords); `keyward exec --on-change db=restart` (no `--env`: the app reads only the
//! file) is the app's parent. When the
//! lease nears its short max_ttl the sidecar fetches a new credential: the file is rendered
//! again, the wrapper restarts psql, and psql reconnects as the new role (seen in
//! `pg_stat_activity`), with `file.render` and `exec.restart` audit records.

mod delivery_pods;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use delivery_pods::{inject, Pods};
use keyward_testkit::pg::Postgres;
use serde_json::Value;

const NS: &str = "delivery";
const APP_UID: u32 = 1000;
/// The pod's group (the socket's), which the sidecar gives rendered files.
const POD_GROUP: u32 = 65532;
const LONG: Duration = Duration::from_secs(90);

/// The app takes its credential only from the file (no environment variable: the wrapper
/// watches `db` for `keyward.io/on-change-app` alone): at each start it prints the file's user,
/// then runs psql with the file's DSN and holds the session open.
const POD: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: psql, namespace: delivery}
---
apiVersion: v1
kind: Pod
metadata:
  name: psql
  namespace: delivery
  annotations:
    keyward.io/secret-db: database/creds/app
    keyward.io/file-dsn: app/db.dsn
    keyward.io/file-dsn-template: "host=postgres.db.svc port=5432 dbname=postgres user={{ secrets.db.data.username }} password={{ secrets.db.data.password }} application_name=delivery-psql connect_timeout=10"
    keyward.io/on-change-app: db=restart
spec:
  serviceAccountName: psql
  terminationGracePeriodSeconds: 10
  securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000}
  containers:
    - name: app
      image: docker.io/library/postgres:15
      command:
        - sh
        - -c
        - |
          f=/keyward/files/db.dsn
          echo "start $$(sed -n 's/.* user=\([^ ]*\) .*/\1/p' "$f")"
          exec psql "$$(cat "$f")" -X -q -v ON_ERROR_STOP=1 -c "select pg_sleep(3600)"
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"#;

/// The roles of the app's sessions (`application_name` from the DSN), as PostgreSQL sees them.
fn sessions(pg: &Postgres) -> Vec<String> {
    pg.sql(
        "SELECT usename FROM pg_stat_activity WHERE application_name = 'delivery-psql' ORDER BY 1",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

/// The user named by a rendered DSN.
fn dsn_user(dsn: &str) -> Option<String> {
    dsn.split_whitespace()
        .find_map(|w| w.strip_prefix("user="))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reconnects_as_the_new_role_after_the_lease_is_refetched_the_dsn_file_re_rendered_and_the_app_restarted(
) {
    let mut pg = tokio::task::block_in_place(Postgres::start);
    pg.require_passwords().await;
    let mut pods = Pods::start().await;
    // Short leases: renewed, then near max_ttl a new credential (a new role) is fetched.
    pg.configure_vault(&pods.bao, "6s", "20s").await;
    pods.expose(5432, pg.port).await;
    pods.role(
        NS,
        "psql",
        r#"path "database/creds/app" { capabilities = ["read"] }"#,
    )
    .await;
    // The wrapper is injected for the on-change annotation alone, with no --env.
    let injected = inject(POD);
    assert!(
        injected.contains("--on-change=db=restart") && !injected.contains("--env"),
        "{injected}"
    );
    pods.run(&injected).await;

    let logs = |pods: &Pods| pods.logs(NS, "psql", &["app"]);
    let file: PathBuf = pods
        .pod(NS, "psql")
        .volume("keyward-files-0")
        .expect("the app's files volume")
        .join("db.dsn");
    let read_user = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|d| dsn_user(&d))
    };

    // psql is connected as the role in the file.
    let first = keyward_e2e::eventually(LONG, "psql connected as the file's role", || {
        let s = sessions(&pg);
        let u = read_user();
        async move { (s.len() == 1 && Some(&s[0]) == u.as_ref()).then(|| s[0].clone()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: sessions {:?}\n{}", sessions(&pg), logs(&pods)));
    assert!(pg.vault_roles().contains(&first), "a role Vault created");
    let meta = std::fs::metadata(&file).expect("the DSN file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    assert_eq!(meta.gid(), POD_GROUP);

    // The lease is re-fetched: a new role, the file names it, psql was restarted and is
    // connected as it; the old session is gone.
    let second = keyward_e2e::eventually(LONG, "psql reconnected as a new role", || {
        let s = sessions(&pg);
        let u = read_user();
        let new = s.len() == 1 && s[0] != first && Some(&s[0]) == u.as_ref();
        async move { new.then(|| s[0].clone()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: sessions {:?}\n{}", sessions(&pg), logs(&pods)));
    let dsn = std::fs::read_to_string(&file).expect("the DSN file");
    assert!(dsn.contains(&format!("user={second} ")), "{}", logs(&pods));

    let app = pods.pod(NS, "psql").logs("app");
    let starts: Vec<&str> = app.lines().filter(|l| l.starts_with("start ")).collect();
    assert!(
        starts.len() >= 2
            && starts[0] == format!("start {first}")
            && starts.contains(&format!("start {second}").as_str()),
        "the app started as {first}, then again as {second}:\n{}",
        logs(&pods)
    );
    // Each restart is for a new credential (a new role), so a restarted app that found the
    // file not yet rendered for it would start as the same user again.
    assert!(
        starts.windows(2).all(|w| w[0] != w[1]),
        "a restarted app found the file not yet rendered for its version:\n{}",
        logs(&pods)
    );

    // No credential value in any log.
    let password = dsn
        .split_whitespace()
        .find_map(|w| w.strip_prefix("password="))
        .expect("a password in the DSN");
    assert!(!logs(&pods).contains(password), "a password in the logs");

    // Audit: a file.render per credential version and the wrapper's exec.restart, attributed
    // to the app container.
    let audit = pods.audit(NS, "psql");
    let renders: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "file.render" && r["decision"] == "ok")
        .collect();
    let versions: Vec<u64> = renders
        .iter()
        .filter_map(|r| r["version"].as_u64())
        .collect();
    assert!(
        versions.len() >= 2 && versions[0] == 1 && versions.windows(2).all(|w| w[0] < w[1]),
        "one render per version: {renders:#?}"
    );
    for r in &renders {
        assert_eq!(r["secret"], "db", "{r}");
        assert!(
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/keyward-files/app/db.dsn")),
            "{r}"
        );
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|p| p.starts_with("file dsn for container app: db v")),
            "{r}"
        );
    }
    let restarts: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "exec.restart")
        .collect();
    assert!(!restarts.is_empty(), "{}", logs(&pods));
    let r = restarts[0];
    assert_eq!(r["decision"], "ok", "{r}");
    assert_eq!(r["secret"], "db", "{r}");
    assert_eq!(
        r["version"], versions[1],
        "the restart is for the re-fetched version: {r}"
    );
    assert_eq!(r["caller"]["container"], "app", "{r}");
    assert_eq!(r["caller"]["uid"], APP_UID, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("restart of pid ")),
        "{r}"
    );
    // The re-fetch itself is audited by the sidecar.
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "vault.fetch" && r["version"].as_u64() == Some(versions[1])),
        "the re-fetch of the credential is audited"
    );
}
