//! A real PostgreSQL server on a free port, in a temporary data directory, stopped when
//! dropped. Run as the `postgres` user when the tests run as root (initdb refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    stopped: bool,
    /// Set by [`Postgres::require_passwords`]: the superuser's password.
    password: Option<&'static str>,
}

/// The superuser's password once [`Postgres::require_passwords`] has set one.
pub const SUPERUSER_PASSWORD: &str = "keyward-test-pg-superuser";

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = crate::tools::pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("keyward-pg")
            .tempdir()
            .expect("tempdir");
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .expect("passwd")
                .expect(
                    "a postgres user (installed with the postgresql package: scripts/deps.sh core)",
                );
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let mut init = as_postgres(&bin, "initdb");
        init.args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(init, "initdb");
        let port = crate::free_port();
        let mut start = as_postgres(&bin, "pg_ctl");
        start
            .args(["-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.path().join("pg.log"))
            .args([
                "-w",
                "-o",
                &format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ),
                "start",
            ]);
        run(start, "pg_ctl start");
        Postgres {
            bin,
            dir,
            port,
            stopped: false,
            password: None,
        }
    }

    /// From now on TCP connections need a password (scram-sha-256), as a real server asks:
    /// a login works only with the password Vault gave the role. The superuser's is
    /// [`SUPERUSER_PASSWORD`] (used by [`Postgres::sql`] and [`Postgres::configure_vault`]).
    pub async fn require_passwords(&mut self) {
        self.sql(&format!(
            "ALTER ROLE postgres PASSWORD '{SUPERUSER_PASSWORD}'"
        ));
        let hba = self.dir.path().join("data").join("pg_hba.conf");
        let conf = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let conf: String = conf
            .lines()
            .map(|l| match l.strip_suffix("trust") {
                Some(head) if l.starts_with("host") => format!("{head}scram-sha-256\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, conf).expect("write pg_hba.conf");
        self.password = Some(SUPERUSER_PASSWORD);
        let mut reload = as_postgres(&self.bin, "pg_ctl");
        reload
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .arg("reload");
        run(reload, "pg_ctl reload");
        // The reload is asynchronous: wait until a TCP login without a password is refused.
        let (psql, port) = (self.bin.join("psql"), self.port.to_string());
        crate::eventually(
            std::time::Duration::from_secs(30),
            "pg_hba.conf reloaded",
            || {
                let refused = Command::new(&psql)
                    .args(["-h", "127.0.0.1", "-p", &port])
                    .args(["-U", "postgres", "-w", "-tAc", "select 1"])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|out| !out.status.success());
                async move { refused.then_some(()) }
            },
        )
        .await;
    }

    /// Runs one SQL statement as the superuser; returns the unaligned output.
    pub fn sql(&self, statement: &str) -> String {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-tAc",
            statement,
        ]);
        if let Some(pw) = self.password {
            c.env("PGPASSWORD", pw);
        }
        run(c, "psql").trim().to_owned()
    }

    /// Login roles whose names Vault's database engine generated (`v-...`).
    pub fn vault_roles(&self) -> Vec<String> {
        self.sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY 1")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut c = as_postgres(&self.bin, "pg_ctl");
        c.args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = c.stdin(Stdio::null()).output();
    }

    pub fn start_again(&mut self) {
        let mut start = as_postgres(&self.bin, "pg_ctl");
        start
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-l"])
            .arg(self.dir.path().join("pg.log"))
            .args([
                "-w",
                "-o",
                &format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    self.port,
                    self.dir.path().display()
                ),
                "start",
            ]);
        run(start, "pg_ctl start");
        self.stopped = false;
    }

    /// Configures OpenBao's database engine at database/ with role `app`.
    pub async fn configure_vault(&self, bao: &crate::bao::Bao, default_ttl: &str, max_ttl: &str) {
        use serde_json::json;
        bao.api(
            "POST",
            "sys/mounts/database",
            Some(json!({"type": "database"})),
        )
        .await;
        bao.api(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", self.port),
                "username": "postgres",
                "password": self.password.unwrap_or("unused-with-trust-auth"),
                "allowed_roles": "app",
                "verify_connection": true,
            })),
        )
        .await;
        bao.api(
            "POST",
            "database/roles/app",
            Some(json!({
                "db_name": "pg",
                "default_ttl": default_ttl,
                "max_ttl": max_ttl,
                "creation_statements": "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                "renew_statements": "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';",
                "revocation_statements": "DROP ROLE IF EXISTS \"{{name}}\";",
            })),
        )
        .await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
