//! The shop scenario shared by `scripts/demo.sh` (through `podrun shop`) and
//! `tests/e2e_shop.rs`: OpenBao (dev server, jwt auth trusting the runner's token issuer, KV,
//! the database engine, PKI) and PostgreSQL on the node host, `keyward inject` applied to
//! `examples/shop/*.yaml`, and the injected pods running.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::bao::Bao;
use crate::cluster::Cluster;
use crate::manifest::Manifests;
use crate::net::{Forward, Host};
use crate::{eventually, run, Error, Result};

/// The sidecar image the example injector config names.
pub const KEYWARD_IMAGE: &str = "ghcr.io/keyward/keyward";
/// Names that resolve to the node host in every pod.
pub const NODE_NAMES: &[&str] = &["vault.vault.svc", "postgres.db.svc"];
const PG_PASSWORD: &str = "podrun-postgres-admin";
/// Lease TTL of the orders database credential: short, so renewal shows within seconds.
pub const DB_TTL: &str = "10s";

/// The outside tools the scenario needs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub keyward: PathBuf,
    pub bao: PathBuf,
    pub pg_bin: PathBuf,
    /// The repository's `examples/` directory.
    pub examples: PathBuf,
}

impl Tools {
    /// OpenBao and PostgreSQL from `KEYWARD_BAO` / `KEYWARD_PG_BIN` (written by
    /// `scripts/deps.sh` into `~/.cache/keyward/env.sh`).
    pub fn from_env(keyward: PathBuf, examples: PathBuf) -> Result<Tools> {
        let var = |name: &str, what: &str| -> Result<PathBuf> {
            let p = std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
                Error::Setup(format!(
                    "{name} is not set: run scripts/deps.sh core and source ~/.cache/keyward/env.sh ({what})"
                ))
            })?;
            if !p.exists() {
                return Err(Error::Setup(format!(
                    "{name}={} does not exist: run scripts/deps.sh core ({what})",
                    p.display()
                )));
            }
            Ok(p)
        };
        let bao = var("KEYWARD_BAO", "the OpenBao binary")?;
        let pg_bin = var("KEYWARD_PG_BIN", "PostgreSQL's bin directory")?;
        for tool in [
            "nsenter", "unshare", "setpriv", "mount", "curl", "python3", "psql",
        ] {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
                .unwrap_or(false);
            if !found {
                return Err(Error::Setup(format!(
                    "{tool} not found on PATH (scripts/deps.sh core installs the tools the runner needs)"
                )));
            }
        }
        Ok(Tools {
            keyward,
            bao,
            pg_bin,
            examples,
        })
    }
}

/// A process on the node host, killed (group) when dropped.
struct NodeProc {
    child: Child,
}

impl NodeProc {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The running shop.
pub struct Shop {
    /// OpenBao's admin API (root token) through a forwarder on 127.0.0.1.
    pub bao: Bao,
    /// PostgreSQL's port on 127.0.0.1 (a forwarder to the node host).
    pub pg_port: u16,
    /// `keyward inject`'s output.
    pub injected: String,
    pub tools: Tools,
    bao_proc: Option<NodeProc>,
    pg_proc: Option<NodeProc>,
    _fwd: Vec<Forward>,
    // Last: dropped after the processes above.
    pub cluster: Cluster,
}

fn node_cmd(node: &Host, argv: &[String]) -> Command {
    let mut full = node.nsenter_args();
    full.extend(argv.iter().cloned());
    let mut c = Command::new(&full[0]);
    c.args(&full[1..]);
    c
}

fn log_file(dir: &Path, name: &str) -> Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(dir.join(name)).map_err(Error::io("log file"))?;
    let g = f.try_clone().map_err(Error::io("log file"))?;
    Ok((f.into(), g.into()))
}

impl Shop {
    /// Starts the node servers, configures OpenBao, injects the examples and runs the pods.
    /// `say` narrates each step.
    pub async fn up(tools: Tools, say: &dyn Fn(&str)) -> Result<Shop> {
        let mut shop = Self::servers(tools, say).await?;
        say(&format!(
            "keyward inject --config {0}/injector-config.yaml -f {0}/shop/*.yaml",
            shop.tools.examples.display()
        ));
        shop.injected = inject(&shop.tools)?;
        let manifests = Manifests::parse(&shop.injected)?;
        say(&format!(
            "starting {} pods, each in its own network namespace: sidecar first, apps after its startupProbe",
            manifests.pods.len()
        ));
        shop.cluster.apply(&manifests, NODE_NAMES).await?;
        Ok(shop)
    }

    /// The shop without its pods: PostgreSQL and OpenBao on the node host, configured (the
    /// pods run elsewhere, as on tests/cluster_shop.rs's node agent).
    pub async fn servers(tools: Tools, say: &dyn Fn(&str)) -> Result<Shop> {
        let cluster = Cluster::new(&[(KEYWARD_IMAGE.to_owned(), tools.keyward.clone())])?;
        let node = cluster.node.clone();
        say(&format!(
            "node host {} ({:?}): PostgreSQL and OpenBao, reachable from pods as {}",
            node.ip,
            cluster.mode(),
            NODE_NAMES.join(", ")
        ));
        let node_dir = cluster.dir().join("node");
        std::fs::create_dir_all(&node_dir).map_err(Error::io("node dir"))?;
        let pg = start_postgres(&tools, &node, &node_dir)?;
        let pg_fwd = Forward::start(node.clone(), SocketAddr::new(node.ip.into(), 5432)).await?;
        let pg_port = pg_fwd.local.port();
        let (out, err) = log_file(&node_dir, "bao.log")?;
        let bao_child = node_cmd(
            &node,
            &[
                tools.bao.to_string_lossy().into_owned(),
                "server".into(),
                "-dev".into(),
                "-dev-root-token-id=root".into(),
                "-dev-listen-address=0.0.0.0:8200".into(),
            ],
        )
        .env("HOME", &node_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting OpenBao: {e}")))?;
        let bao_proc = NodeProc { child: bao_child };
        let bao_fwd = Forward::start(node.clone(), SocketAddr::new(node.ip.into(), 8200)).await?;
        let bao = Bao::connect(&format!("http://{}", bao_fwd.local), "root");
        let shop = Shop {
            bao,
            pg_port,
            injected: String::new(),
            tools,
            bao_proc: Some(bao_proc),
            pg_proc: Some(pg),
            _fwd: vec![pg_fwd, bao_fwd],
            cluster,
        };
        eventually(Duration::from_secs(30), "OpenBao to answer", || async {
            match shop.bao.call("GET", "sys/health", None).await {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        })
        .await?;
        let mut last = String::new();
        let ready = eventually(
            Duration::from_secs(30),
            "PostgreSQL to accept connections",
            || {
                let r = shop.psql("select 1");
                if let Err(e) = &r {
                    last = e.to_string();
                }
                async move { r.ok() }
            },
        )
        .await;
        if let Err(e) = ready {
            return Err(Error::Setup(format!("{e}: {last}")));
        }
        shop.psql(
            "create table if not exists orders (id serial primary key, item text not null);\
             insert into orders (item) values ('tea'), ('coffee'), ('cocoa');",
        )?;
        say("OpenBao: jwt auth trusting the runner's service-account issuer, roles frontend/orders/client, KV, database engine, PKI");
        shop.configure_vault().await?;
        Ok(shop)
    }

    async fn configure_vault(&self) -> Result<()> {
        let b = &self.bao;
        b.try_api("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
            .await?;
        b.try_api(
            "POST",
            "auth/jwt/config",
            Some(json!({"jwt_validation_pubkeys": [self.cluster.issuer.public_pem], "bound_issuer": crate::jwt::ISSUER})),
        )
        .await?;
        let common = r#"
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "pki_int/sign/spiffe" { capabilities = ["create", "update"] }
path "pki_int/cert/ca_chain" { capabilities = ["read"] }
"#;
        for (role, ns, sa, extra) in [
            (
                "frontend",
                "shop",
                "frontend",
                r#"path "secret/data/shop/frontend" { capabilities = ["read"] }"#,
            ),
            (
                "orders",
                "shop",
                "orders",
                r#"path "database/creds/orders" { capabilities = ["read"] }"#,
            ),
            (
                "client",
                "other",
                "client",
                r#"path "secret/data/other/client" { capabilities = ["read"] }"#,
            ),
            (
                "reports",
                "shop",
                "reports",
                r#"path "secret/data/shop/reports" { capabilities = ["read"] }"#,
            ),
            (
                "nightly",
                "shop",
                "nightly",
                r#"path "database/creds/nightly" { capabilities = ["read"] }"#,
            ),
        ] {
            b.try_api(
                "PUT",
                &format!("sys/policies/acl/{role}"),
                Some(json!({"policy": format!("{extra}\n{common}")})),
            )
            .await?;
            b.try_api(
                "POST",
                &format!("auth/jwt/role/{role}"),
                Some(keyward_testkit::jwt::role_body(
                    ns,
                    sa,
                    "2m",
                    "10m",
                    &[role],
                )),
            )
            .await?;
        }
        self.kv_put(
            "shop/frontend",
            json!({"banner": "Spring sale: v1", "api_key": "fk-demo-1"}),
        )
        .await?;
        self.kv_put("other/client", json!({"token": "client-demo-1"}))
            .await?;
        self.kv_put(
            "shop/reports",
            json!({"host": "smtp.shop.example", "password": "smtp-demo-1"}),
        )
        .await?;
        b.try_api(
            "POST",
            "sys/mounts/database",
            Some(json!({"type": "database"})),
        )
        .await?;
        b.try_api(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable",
                "username": "postgres",
                "password": PG_PASSWORD,
                "allowed_roles": "orders,nightly",
            })),
        )
        .await?;
        for role in ["orders", "nightly"] {
            b.try_api(
            "POST",
            &format!("database/roles/{role}"),
            Some(json!({
                "db_name": "pg",
                "default_ttl": DB_TTL,
                "max_ttl": "10m",
                "creation_statements": "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON orders TO \"{{name}}\";",
                "renew_statements": "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';",
                "revocation_statements": "REVOKE ALL ON orders FROM \"{{name}}\"; DROP ROLE IF EXISTS \"{{name}}\";",
            })),
        )
        .await?;
        }
        setup_pki(b).await
    }

    /// Writes a KV v2 secret under `secret/`.
    pub async fn kv_put(&self, name: &str, data: Value) -> Result<u64> {
        let v = self
            .bao
            .try_api(
                "POST",
                &format!("secret/data/{name}"),
                Some(json!({"data": data})),
            )
            .await?;
        Ok(v["data"]["version"].as_u64().unwrap_or(0))
    }

    /// Runs SQL as the PostgreSQL superuser; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        run(Command::new(self.tools.pg_bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5"))
    }

    /// The login roles Vault created in PostgreSQL (`v-...`).
    pub fn vault_roles(&self) -> Result<Vec<String>> {
        Ok(self
            .psql("select rolname from pg_roles where rolname like 'v-%' order by 1")?
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// `kubectl exec -n NS POD -c CONTAINER -- ARGV`: (exit code, stdout, stderr).
    pub async fn exec(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        argv: &[&str],
    ) -> Result<(i32, String, String)> {
        let out = self.cluster.pod(ns, pod)?.exec(container, argv).await?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// GET on the pod's keyward socket from its `app` container: (curl exit code, body).
    pub async fn socket_get(&self, ns: &str, pod: &str, path: &str) -> Result<(i32, String)> {
        let url = format!("http://keyward{path}");
        let (code, out, err) = self
            .exec(
                ns,
                pod,
                "app",
                &[
                    "sh",
                    "-c",
                    "curl -sS --max-time 10 --unix-socket \"$KEYWARD_SOCKET\" \"$1\"",
                    "sh",
                    &url,
                ],
            )
            .await?;
        Ok((
            code,
            if code == 0 {
                out
            } else {
                format!("{out}{err}")
            },
        ))
    }

    /// Host path of a pod's keyward socket volume (socket and audit log).
    pub fn socket_dir(&self, ns: &str, pod: &str) -> Result<PathBuf> {
        let p = self.cluster.pod(ns, pod)?;
        p.volume("keyward-socket")
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Setup(format!("pod {ns}/{pod} has no keyward-socket volume")))
    }

    /// The pod's audit log records.
    pub fn audit_records(&self, ns: &str, pod: &str) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(self.socket_dir(ns, pod)?.join("audit.log"))
            .unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Runs `keyward audit ARGS...` on a pod's audit log: (exit code, stdout+stderr).
    pub fn audit(&self, ns: &str, pod: &str, args: &[&str]) -> Result<(i32, String)> {
        let log = self.socket_dir(ns, pod)?.join("audit.log");
        let mut argv: Vec<String> = vec![
            "audit".into(),
            args[0].into(),
            log.to_string_lossy().into_owned(),
        ];
        argv.extend(args[1..].iter().map(|s| (*s).to_owned()));
        let out = Command::new(&self.tools.keyward)
            .args(&argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Setup(format!("keyward audit: {e}")))?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// `curl http://127.0.0.1:8080/` in the frontend's app container: the frontend page,
    /// which calls orders through the sidecars: (curl exit code, output).
    pub async fn frontend_page(&self) -> Result<(i32, String)> {
        let (code, out, err) = self
            .exec(
                "shop",
                "frontend",
                "app",
                &["curl", "-sS", "--max-time", "20", "http://127.0.0.1:8080/"],
            )
            .await?;
        Ok((code, format!("{out}{err}")))
    }

    /// Polls [`Shop::frontend_page`] until the apps answer (they have no readiness probes)
    /// and the page shows orders; fails with the last page after `timeout`.
    pub async fn wait_frontend_page(&self, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (code, page) = self.frontend_page().await?;
            if code == 0 && page.contains("open orders") {
                return Ok(page);
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the frontend page to show orders (last: {page})"),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `curl http://127.0.0.1:15001/` in the other namespace's client: a call to orders through
    /// its sidecar: (curl exit code, output).
    pub async fn client_call(&self) -> Result<(i32, String)> {
        let (code, out, err) = self
            .exec(
                "other",
                "client",
                "app",
                &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:15001/"],
            )
            .await?;
        Ok((code, format!("{out}{err}")))
    }

    /// Waits for an audit record of a pod matching `pred`.
    pub async fn wait_audit(
        &self,
        ns: &str,
        pod: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(timeout, what, || {
            let found = self
                .audit_records(ns, pod)
                .ok()
                .and_then(|r| r.into_iter().find(|r| pred(r)));
            async move { found }
        })
        .await
    }

    /// The command line of a pod's keyward sidecar process, as the kernel sees it.
    pub fn sidecar_cmdline(&self, ns: &str, pod: &str) -> Result<String> {
        let pid = self
            .cluster
            .pod(ns, pod)?
            .pid("keyward")
            .ok_or_else(|| Error::Setup(format!("pod {ns}/{pod} has no keyward container")))?;
        let raw =
            std::fs::read(format!("/proc/{pid}/cmdline")).map_err(Error::io("reading cmdline"))?;
        Ok(raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Stops one pod (SIGTERM, apps first, sidecar last): each container's exit status.
    pub async fn stop_pod(
        &mut self,
        ns: &str,
        pod: &str,
    ) -> Result<Vec<(String, Option<std::process::ExitStatus>)>> {
        Ok(self.cluster.pod_mut(ns, pod)?.stop().await)
    }

    /// Stops OpenBao (the pods keep running).
    pub fn stop_bao(&mut self) {
        if let Some(mut p) = self.bao_proc.take() {
            p.stop();
        }
    }

    /// Stops the pods, then OpenBao and PostgreSQL; the rest goes when `self` is dropped.
    pub async fn down(&mut self) {
        self.cluster.stop_all().await;
        self.bao_proc.take();
        self.pg_proc.take();
    }
}

fn start_postgres(tools: &Tools, node: &Host, dir: &Path) -> Result<NodeProc> {
    let root = nix::unistd::Uid::effective().is_root();
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).map_err(Error::io("pg dir"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("chmod"))?;
    let mut as_pg: Vec<String> = Vec::new();
    if root {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or_else(|| {
                Error::Setup("no postgres user: scripts/deps.sh core installs PostgreSQL".into())
            })?;
        nix::unistd::chown(&pg_dir, Some(user.uid), Some(user.gid))
            .map_err(|e| Error::io("chown pg dir")(e.into()))?;
        as_pg = vec![
            "setpriv".into(),
            format!("--reuid={}", user.uid),
            format!("--regid={}", user.gid),
            "--init-groups".into(),
            "--".into(),
        ];
    }
    let pw = pg_dir.join("pw");
    std::fs::write(&pw, PG_PASSWORD).map_err(Error::io("pg password file"))?;
    if root {
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io("chmod"))?;
    }
    let mut init = as_pg.clone();
    init.extend([
        tools.pg_bin.join("initdb").to_string_lossy().into_owned(),
        "-D".into(),
        pg_dir.join("data").to_string_lossy().into_owned(),
        "-U".into(),
        "postgres".into(),
        "--auth-local=trust".into(),
        "--auth-host=scram-sha-256".into(),
        format!("--pwfile={}", pw.display()),
        "--no-sync".into(),
    ]);
    run(Command::new(&init[0]).args(&init[1..]))?;
    // Pods connect over the node's private address, with a password.
    let hba = pg_dir.join("data").join("pg_hba.conf");
    let mut conf = std::fs::read_to_string(&hba).map_err(Error::io("reading pg_hba.conf"))?;
    conf += "host all all 0.0.0.0/0 scram-sha-256\n";
    std::fs::write(&hba, conf).map_err(Error::io("writing pg_hba.conf"))?;
    let mut start = as_pg;
    start.extend([
        tools.pg_bin.join("postgres").to_string_lossy().into_owned(),
        "-D".into(),
        pg_dir.join("data").to_string_lossy().into_owned(),
        "-p".into(),
        "5432".into(),
        "-k".into(),
        pg_dir.to_string_lossy().into_owned(),
        "-c".into(),
        "listen_addresses=*".into(),
        "-c".into(),
        "fsync=off".into(),
    ]);
    let (out, err) = log_file(dir, "postgres.log")?;
    let child = node_cmd(node, &start)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting PostgreSQL: {e}")))?;
    Ok(NodeProc { child })
}

/// Applies `keyward inject` to `examples/shop/*.yaml` with `examples/injector-config.yaml`.
pub fn inject(tools: &Tools) -> Result<String> {
    let dir = tools.examples.join("shop");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut input = String::new();
    for f in files {
        input += "---\n";
        input +=
            &std::fs::read_to_string(&f).map_err(Error::io(format!("reading {}", f.display())))?;
        input += "\n";
    }
    let mut child = Command::new(&tools.keyward)
        .args(["inject", "--config"])
        .arg(tools.examples.join("injector-config.yaml"))
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Setup(format!("keyward inject: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(input.as_bytes())
            .map_err(Error::io("keyward inject stdin"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(Error::io("keyward inject"))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "keyward inject failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Root and intermediate CA and the `spiffe` role, as in RECIPES.md.
async fn setup_pki(b: &Bao) -> Result<()> {
    b.try_api(
        "POST",
        "sys/mounts/pki",
        Some(json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})),
    )
    .await?;
    let root = b
        .try_api(
            "POST",
            "pki/root/generate/internal",
            Some(json!({"common_name": "Shop Root", "key_type": "ec", "key_bits": 256, "ttl": "87600h"})),
        )
        .await?;
    let root_pem = root["data"]["certificate"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    b.try_api(
        "POST",
        "sys/mounts/pki_int",
        Some(json!({"type": "pki", "config": {"max_lease_ttl": "43800h"}})),
    )
    .await?;
    let csr = b
        .try_api(
            "POST",
            "pki_int/intermediate/generate/internal",
            Some(json!({"common_name": "Shop Intermediate", "key_type": "ec", "key_bits": 256})),
        )
        .await?;
    let int = b
        .try_api(
            "POST",
            "pki/root/sign-intermediate",
            Some(json!({"csr": csr["data"]["csr"], "ttl": "43800h", "use_csr_values": true, "format": "pem"})),
        )
        .await?;
    let int_pem = int["data"]["certificate"].as_str().unwrap_or_default();
    b.try_api(
        "POST",
        "pki_int/intermediate/set-signed",
        Some(json!({"certificate": format!("{int_pem}\n{root_pem}\n")})),
    )
    .await?;
    b.try_api(
        "POST",
        "pki_int/roles/spiffe",
        Some(json!({
            "allowed_uri_sans": "spiffe://cluster.local/ns/*/sa/*",
            "allow_any_name": false,
            "require_cn": false,
            "key_type": "any",
            "ttl": "1h",
            "max_ttl": "24h",
            "use_csr_common_name": false,
            "use_csr_sans": true,
            "enforce_hostnames": false,
        })),
    )
    .await?;
    Ok(())
}
