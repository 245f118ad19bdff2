//! `keyward exec` against a real broker and a real OpenBao: an app that reads only environment
//! variables gets the declared ones (and no others), its exit code and death by signal are the
//! wrapper's, signals reach it, orphans are reaped; a new KV version signals or restarts it as
//! declared (audited through `POST /v1/events`), a change during a restart is not lost, quick
//! restarts back off; bad declarations and unknown secrets fail before the app starts. An app
//! that gets its secret only as a rendered file (`--on-change` without `--env`) is restarted or
//! signalled on a new version, and finds the file already replaced.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::json;
use support::broker::{raw, BrokerProc, KEYWARD};
use support::{eventually, TestVault};

const CANARY: &str = "canary-exec-5c1d09-do-not-log";
const OTHER: &str = "canary-exec-undeclared-77aa";
const LONG: Duration = Duration::from_secs(30);

fn me() -> u32 {
    nix::unistd::getuid().as_raw()
}

async fn setup() -> (TestVault, BrokerProc) {
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao
        .kv_put(
            "app",
            json!({"user": "orders", "password": CANARY, "other": OTHER}),
        )
        .await;
    v.bao.kv_put("cfg", json!({"value": "v1"})).await;
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        "kv_refresh: 1s\nsecrets:\n  - {name: app, path: secret/data/app}\n  - {name: cfg, path: secret/data/cfg}\n  - {name: locked, path: secret/data/cfg, allow_uids: [4242]}\n",
        &[],
    );
    b.wait_ready().await;
    (v, b)
}

/// A running `keyward exec`, its directory (the app's `$D`) and its log.
struct Wrapper {
    child: Child,
    dir: tempfile::TempDir,
}

impl Wrapper {
    /// Starts `keyward exec FLAGS -- /bin/sh -c SCRIPT` with a minimal environment.
    fn start(b: &BrokerProc, flags: &[&str], script: &str) -> Wrapper {
        Self::start_under(&[], b, flags, script)
    }

    /// The same, run by `prefix` (for example `unshare ...`).
    fn start_under(prefix: &[&str], b: &BrokerProc, flags: &[&str], script: &str) -> Wrapper {
        Self::spawn(prefix, &b.socket, flags, &["/bin/sh", "-c", script])
    }

    /// [`Wrapper::start`], then waits for the app's first start (a line in `starts`).
    async fn started(b: &BrokerProc, flags: &[&str], script: &str) -> Wrapper {
        let w = Self::start(b, flags, script);
        w.wait_lines("starts", 1).await;
        w
    }

    /// Starts the long-running app with `V` from `cfg` under `--env V=cfg FLAGS` and waits for
    /// its first start.
    async fn running(b: &BrokerProc, flags: &[&str]) -> Wrapper {
        Self::started(b, &[&["--env", "V=cfg"], flags].concat(), LONG_RUNNING).await
    }

    /// [`Wrapper::running`] with `--on-change cfg=restart FLAGS`.
    async fn restarting(b: &BrokerProc, flags: &[&str]) -> Wrapper {
        Self::running(b, &[&["--on-change", "cfg=restart"], flags].concat()).await
    }

    /// Starts [`FILE_APP`] reading `cfg.txt` in `files` (no `--env`) under `FLAGS` and waits
    /// for its first start.
    async fn file_only(b: &BrokerProc, files: &tempfile::TempDir, flags: &[&str]) -> Wrapper {
        Self::started(b, flags, &file_app(files)).await
    }

    /// Starts `PREFIX keyward exec FLAGS -- COMMAND` against the socket `socket`, in its own
    /// directory (`$D`, also the working directory), logging to `wrapper.log` there.
    fn spawn(prefix: &[&str], socket: &Path, flags: &[&str], command: &[&str]) -> Wrapper {
        let dir = tempfile::Builder::new()
            .prefix("keyward-exec")
            .tempdir()
            .expect("tempdir");
        let err = std::fs::File::create(dir.path().join("wrapper.log")).expect("log");
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(KEYWARD);
                c
            }
            None => Command::new(KEYWARD),
        };
        let child = cmd
            .arg("exec")
            .args(flags)
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("D", dir.path())
            .env("KEYWARD_SOCKET", socket)
            .env("KEYWARD_LOG", "debug")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start keyward exec");
        Wrapper { child, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("wrapper.log")).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the file `name` has at least `n` lines; returns them.
    async fn wait_lines(&self, name: &str, n: usize) -> Vec<String> {
        eventually(LONG, &format!("{n} lines in {name}"), || async {
            let l = self.lines(name);
            (l.len() >= n).then_some(l)
        })
        .await
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal the wrapper");
    }

    /// Waits until the log holds `text`.
    async fn wait_log(&self, text: &str) {
        eventually(LONG, &format!("{text:?} in the wrapper's log"), || {
            let found = self.log().contains(text);
            async move { found.then_some(()) }
        })
        .await
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let log = std::fs::read_to_string(self.dir.path().join("wrapper.log")).unwrap_or_default();
        eventually(LONG, &format!("keyward exec to exit; log:\n{log}"), || {
            let r = child.try_wait().expect("try_wait");
            async move { r }
        })
        .await
    }
}

impl Drop for Wrapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags that let a test change `cfg` while a restart is under way: a grace period the
/// held app does not reach, and a short back-off.
const HELD_RESTART: &[&str] = &["--grace-period", "60s", "--restart-backoff", "100ms"];

/// With `w`'s app restarting on `cfg` ([`HELD_RESTART`]) and held in its TERM trap until
/// `release` exists: `cfg` changes to v2, and, while the old app is stopping, to v3, which the
/// wrapper's long-poll sees (its audited read of v3, one that `also` accepts); then the app is
/// released. Returns v2 and v3.
async fn change_twice_during_a_restart(
    v: &TestVault,
    b: &BrokerProc,
    w: &Wrapper,
    also: impl Fn(&serde_json::Value) -> bool,
) -> (u64, u64) {
    std::fs::write(w.path("hold"), "").expect("hold");
    let v2 = v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    // The old app is stopping (held in its TERM trap) ...
    w.wait_lines("terms", 1).await;
    // ... when v3 arrives, and the wrapper's long-poll sees it (its read of v3 is audited).
    let v3 = v.bao.kv_put("cfg", json!({"value": "v3"})).await;
    eventually(LONG, "the wrapper to see v3 during the restart", || {
        let seen = records(b, "secret.read")
            .iter()
            .any(|r| r["secret"] == "cfg" && r["version"] == v3 && also(r));
        async move { seen.then_some(()) }
    })
    .await;
    std::fs::write(w.path("release"), "").expect("release");
    (v2, v3)
}

fn records(b: &BrokerProc, action: &str) -> Vec<serde_json::Value> {
    b.audit_records()
        .into_iter()
        .filter(|r| r["action"] == action)
        .collect()
}

/// The one `action` record of `b`'s audit log, which must be `ok` for `cfg` at `version`.
fn the_ok_record(b: &BrokerProc, action: &str, version: u64) -> serde_json::Value {
    let ev = records(b, action);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (&ev[0]["secret"], &ev[0]["version"], &ev[0]["decision"]),
        (&json!("cfg"), &json!(version), &json!("ok"))
    );
    ev[0].clone()
}

/// `w`'s app, started once, was not restarted, and the one `exec.signal` record is `ok` for
/// `cfg` at `version`, a SIGHUP; returns that record.
fn signalled_not_restarted(w: &Wrapper, b: &BrokerProc, version: u64) -> serde_json::Value {
    assert_eq!(w.lines("starts"), vec!["v1"], "signalled, not restarted");
    let ev = the_ok_record(b, "exec.signal", version);
    assert!(
        ev["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("SIGHUP to pid ")),
        "{ev:?}"
    );
    ev
}

/// A long-running app: records each start (with `$V`), SIGHUPs and SIGTERM, then exits 0 on
/// SIGTERM (after `$D/release` exists, when `$D/hold` exists).
const LONG_RUNNING: &str = r#"
trap 'echo hup >> "$D/hups"' HUP
trap 'echo term >> "$D/terms"; kill $S 2>/dev/null; while [ -e "$D/hold" ] && [ ! -e "$D/release" ]; do sleep 0.05; done; exit 0' TERM
echo "$V" >> "$D/starts"
while :; do sleep 1000 & S=$!; wait $S; kill $S 2>/dev/null; done
"#;

#[tokio::test]
async fn an_env_only_app_gets_the_declared_variables_and_its_exit_code_is_the_wrappers() {
    let (_v, b) = setup().await;
    let mut w = Wrapper::start(
        &b,
        &[
            "--env",
            "DB_USER=app#user",
            "--env=DB_PASS=app#password",
            "--env",
            "CFG=cfg",
        ],
        r#"env > "$D/env"; exit 7"#,
    );
    let status = w.exit().await;
    assert_eq!(
        status.code(),
        Some(7),
        "the app's exit code; log:\n{}",
        w.log()
    );

    let env: Vec<(String, String)> = w
        .lines("env")
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("DB_USER"), Some("orders"));
    assert_eq!(get("DB_PASS"), Some(CANARY));
    assert_eq!(get("CFG"), Some("v1"));
    // Only the declared variables are added: the secret's other key is nowhere.
    for (k, _) in &env {
        assert!(
            [
                "DB_USER",
                "DB_PASS",
                "CFG",
                "PATH",
                "D",
                "KEYWARD_SOCKET",
                "KEYWARD_LOG",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(&k.as_str()),
            "unexpected variable {k}"
        );
    }
    assert!(!w.lines("env").iter().any(|l| l.contains(OTHER)));
    // Values are never logged.
    assert!(!w.log().contains(CANARY), "log:\n{}", w.log());
    assert!(!b.log().contains(CANARY));
    // One audited read per secret, attributed to the wrapper's uid.
    let reads = records(&b, "secret.read");
    for name in ["app", "cfg"] {
        let r: Vec<_> = reads.iter().filter(|r| r["secret"] == name).collect();
        assert_eq!(r.len(), 1, "{name}: {r:?}");
        assert_eq!(r[0]["decision"], "allow");
        assert_eq!(r[0]["caller"]["uid"], me());
    }
}

#[tokio::test]
async fn death_by_signal_is_128_plus_the_signal_and_a_sigterm_to_the_wrapper_reaches_the_app() {
    let (_v, b) = setup().await;
    let mut w = Wrapper::start(&b, &["--env", "CFG=cfg"], r#"kill -USR1 $$"#);
    assert_eq!(w.exit().await.code(), Some(128 + 10), "log:\n{}", w.log());

    let mut w = Wrapper::running(&b, &[]).await;
    w.signal(nix::sys::signal::Signal::SIGHUP);
    w.wait_lines("hups", 1).await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        w.exit().await.code(),
        Some(0),
        "the app's status after its TERM trap"
    );
    assert_eq!(w.lines("terms"), vec!["term"]);
}

#[tokio::test]
async fn orphans_of_the_app_are_reaped_by_the_wrapper() {
    let (_v, b) = setup().await;
    // The subshell exits at once, so its child is orphaned and handed to the wrapper (the
    // subreaper here, PID 1 in a container); it exits and must not stay a zombie.
    let mut w = Wrapper::start(
        &b,
        &["--env", "V=cfg"],
        r#"( sh -c 'echo $$ > "$D/orphan"' & ); while [ ! -e "$D/done" ]; do sleep 0.05; done; exit 3"#,
    );
    let pid = w.wait_lines("orphan", 1).await[0].clone();
    eventually(LONG, "the orphan to be reaped (no zombie left)", || {
        let gone = !Path::new(&format!("/proc/{pid}")).exists();
        async move { gone.then_some(()) }
    })
    .await;
    std::fs::write(w.path("done"), "").expect("done");
    assert_eq!(w.exit().await.code(), Some(3));
    assert!(w.log().contains("Reaped an orphan"), "log:\n{}", w.log());
}

#[tokio::test]
async fn as_pid_1_of_a_pid_namespace_the_wrapper_reaps_orphans_and_passes_sigterm_on() {
    let (_v, b) = setup().await;
    // The app checks from inside the namespace that its parent is PID 1 and that its orphan
    // does not stay a zombie (a zombie keeps its /proc entry).
    let mut w = Wrapper::start_under(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        &b,
        &["--env", "V=cfg"],
        r#"
echo "$PPID" > "$D/ppid"
( sh -c 'echo $$ > "$D/orphan"' & )
while [ ! -s "$D/orphan" ]; do sleep 0.05; done
o=$(cat "$D/orphan")
while [ -e "/proc/$o" ]; do sleep 0.05; done
echo reaped > "$D/reaped"
trap 'exit 5' TERM
while :; do sleep 1000 & wait $!; done
"#,
    );
    w.wait_lines("reaped", 1).await;
    assert_eq!(w.lines("ppid"), vec!["1"], "the wrapper is PID 1");
    // The wrapper's pid outside the namespace: unshare's only child.
    let unshare = w.child.id();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("children");
    let wrapper: i32 = children.trim().parse().expect("one child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wrapper),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(w.exit().await.code(), Some(5), "log:\n{}", w.log());
}

#[tokio::test]
async fn an_app_that_ignores_sigterm_is_killed_after_the_grace_period_and_restarted() {
    let (v, b) = setup().await;
    let w = Wrapper::start(
        &b,
        &[
            "--env",
            "V=cfg",
            "--on-change",
            "cfg=restart",
            "--grace-period",
            "300ms",
        ],
        r#"trap '' TERM; echo "$V" >> "$D/starts"; while :; do sleep 0.05; done"#,
    );
    w.wait_lines("starts", 1).await;
    v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    assert_eq!(w.wait_lines("starts", 2).await, vec!["v1", "v2"]);
    assert!(w.log().contains("sending SIGKILL"), "log:\n{}", w.log());
}

#[tokio::test]
async fn a_new_version_signals_the_app_and_the_signal_is_audited() {
    let (v, b) = setup().await;
    let w = Wrapper::running(&b, &["--on-change", "cfg=signal:HUP"]).await;
    let version = v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    w.wait_lines("hups", 1).await;
    let ev = signalled_not_restarted(&w, &b, version);
    assert_eq!(ev["caller"]["uid"], me());
}

#[tokio::test]
async fn a_new_version_restarts_the_app_with_the_new_environment_and_is_audited() {
    let (v, b) = setup().await;
    let mut w = Wrapper::restarting(&b, &[]).await;
    let version = v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    let starts = w.wait_lines("starts", 2).await;
    assert_eq!(starts, vec!["v1", "v2"]);
    assert_eq!(w.lines("terms"), vec!["term"], "the old app got SIGTERM");
    let ev = records(&b, "exec.restart");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (&ev[0]["secret"], &ev[0]["version"]),
        (&json!("cfg"), &json!(version))
    );
    assert_eq!(ev[0]["caller"]["uid"], me());
    // The wrapper keeps its job: SIGTERM still reaches the new app and ends the wrapper.
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
    assert_eq!(w.lines("terms").len(), 2);
}

#[tokio::test]
async fn a_change_during_a_restart_is_not_lost() {
    let (v, b) = setup().await;
    let w = Wrapper::restarting(&b, HELD_RESTART).await;
    let (_, v3) = change_twice_during_a_restart(&v, &b, &w, |_| true).await;
    // The restart completes with what it read (v2), then the pending v3 restarts it again.
    let starts = w.wait_lines("starts", 3).await;
    assert_eq!(starts, vec!["v1", "v2", "v3"], "log:\n{}", w.log());
    let versions: Vec<_> = records(&b, "exec.restart")
        .iter()
        .map(|r| r["version"].clone())
        .collect();
    assert_eq!(versions, vec![json!(v3 - 1), json!(v3)]);
}

#[tokio::test]
async fn quick_restarts_back_off_in_order() {
    let (v, b) = setup().await;
    let w = Wrapper::restarting(&b, &["--restart-backoff", "200ms", "--stable-after", "10m"]).await;
    for (i, value) in ["v2", "v3", "v4"].iter().enumerate() {
        v.bao.kv_put("cfg", json!({ "value": value })).await;
        w.wait_lines("starts", i + 2).await;
    }
    assert_eq!(w.lines("starts"), vec!["v1", "v2", "v3", "v4"]);
    // Each restart within the stable period counts one more quick restart (the spacing per
    // count is policy::Backoff's, unit-tested there).
    let counts: Vec<String> = w
        .log()
        .lines()
        .filter(|l| l.contains("Restart scheduled"))
        .filter_map(|l| l.split("quick_restarts=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(counts, vec!["1", "2", "3"], "log:\n{}", w.log());
}

#[tokio::test]
async fn an_unknown_secret_or_a_malformed_declaration_fails_before_the_app_starts() {
    let (_v, b) = setup().await;
    let app = r#"echo started > "$D/started""#;
    for (flags, code, says) in [
        (vec!["--env", "X=nope"], 2, "nope"),
        (vec!["--env", "X=locked"], 2, "locked"),
        (
            vec!["--env", "X=app#nokey"],
            2,
            "secret app has no key \"nokey\"",
        ),
        (vec!["--env", "X=app"], 2, "secret app has 3 keys"),
        (vec!["--env", "X"], 2, "--env \"X\": no '='"),
        (vec!["--env", "1X=app#user"], 2, "variable name"),
        (
            vec!["--env", "X=cfg", "--on-change", "cfg=signal:KILL"],
            2,
            "unknown signal",
        ),
        (vec!["--bogus"], 2, "unexpected argument"),
    ] {
        let mut w = Wrapper::start(&b, &flags, app);
        let status = w.exit().await;
        assert_eq!(status.code(), Some(code), "{flags:?}: log:\n{}", w.log());
        assert!(w.log().contains(says), "{flags:?}: log:\n{}", w.log());
        assert!(
            !w.path("started").exists(),
            "{flags:?}: the app must not start"
        );
        assert!(!w.log().contains(CANARY) && !w.log().contains(OTHER));
    }
    let mut w = Wrapper::start(&b, &["--env", "X=cfg"], app);
    assert_eq!(w.exit().await.code(), Some(0));
    assert!(w.path("started").exists());
    // A command that does not exist: 127, like a shell.
    let mut w = Wrapper::spawn(&[], &b.socket, &["--env", "X=cfg"], &["/nonexistent/app"]);
    assert_eq!(w.exit().await.code(), Some(127), "log:\n{}", w.log());
    assert!(
        w.log().contains("cannot run /nonexistent/app"),
        "{}",
        w.log()
    );
}

#[tokio::test]
async fn an_unreachable_socket_fails_before_the_app_starts_naming_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("missing.sock");
    let mut w = Wrapper::spawn(
        &[],
        &socket,
        &["--env", "X=cfg", "--start-timeout", "300ms"],
        &["/bin/sh", "-c", r#"touch "$D/started""#],
    );
    assert_eq!(w.exit().await.code(), Some(1), "log:\n{}", w.log());
    let expected = format!("cannot connect to the broker socket {}", socket.display());
    assert!(w.log().contains(&expected), "{}", w.log());
    assert!(!w.path("started").exists());
}

#[tokio::test]
async fn before_the_app_starts_sighup_is_ignored_and_sigterm_ends_the_wrapper_with_143() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Wrapper::spawn(
        &[],
        &dir.path().join("not-yet.sock"),
        &["--env", "X=cfg", "--start-timeout", "10m"],
        &["/bin/sh", "-c", r#"touch "$D/started""#],
    );
    // Its handlers are in place once it is waiting for the socket.
    w.wait_log("Secrets not available yet").await;
    w.signal(nix::sys::signal::Signal::SIGHUP);
    w.wait_log("Signal before the app started; ignored").await;
    assert!(w.is_running(), "still waiting");
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(143), "log:\n{}", w.log());
    assert!(!w.path("started").exists());
}

#[tokio::test]
async fn the_events_endpoint_records_only_declared_events_for_readable_secrets() {
    let (_v, b) = setup().await;
    let post = |body: &str| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let ok = raw(
        &b.socket,
        post(r#"{"event":"exec.restart","secret":"cfg","version":4,"detail":"restart of pid 9"}"#)
            .as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let rec = records(&b, "exec.restart");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["caller"]["uid"], me());
    assert_eq!(rec[0]["path"], "secret/data/cfg");
    assert_eq!(rec[0]["reason"], "restart of pid 9");

    for (body, status, code) in [
        (
            r#"{"event":"secret.read","secret":"cfg","version":1}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"event":"exec.signal","secret":"cfg"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"event":"exec.signal","secret":"cfg","version":1,"x":1}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"event":"exec.signal","secret":"cfg","version":1,"detail":"a\nb"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"event":"exec.signal","secret":"../x","version":1}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"event":"exec.signal","secret":"nope","version":1}"#,
            404,
            "unknown_secret",
        ),
        (
            r#"{"event":"exec.signal","secret":"locked","version":1}"#,
            403,
            "denied",
        ),
    ] {
        let a = raw(&b.socket, post(body).as_bytes()).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert_eq!(a.json()["error"], code, "{body}");
    }
    let big = format!(
        r#"{{"event":"exec.signal","secret":"cfg","version":1,"detail":"{}"}}"#,
        "x".repeat(2000)
    );
    assert_eq!(raw(&b.socket, post(&big).as_bytes()).await.status, 413);
    // Denials are audited under the event's action; nothing else was recorded as done.
    let signals = records(&b, "exec.signal");
    assert_eq!(
        signals.iter().filter(|r| r["decision"] == "deny").count(),
        2,
        "{signals:?}"
    );
    assert!(signals.iter().all(|r| r["decision"] == "deny"));
    // Other methods and paths are unchanged.
    let put = raw(
        &b.socket,
        b"PUT /v1/events HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(put.status, 405);
}

/// A broker that renders `cfg`'s value into `cfg.txt` in its own directory (the app's files
/// volume), as the sidecar does for `keyward.io/file-NAME`.
async fn setup_with_file() -> (TestVault, BrokerProc, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let v = TestVault::start("shop", "orders", "1h", "2h").await;
    v.bao.kv_put("cfg", json!({"value": "v1"})).await;
    let files = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let b = BrokerProc::start(
        &v.bao.addr(),
        &v.token("shop", "orders"),
        &format!(
            "kv_refresh: 1s\nsecrets:\n  - {{name: cfg, path: secret/data/cfg}}\n  - {{name: locked, path: secret/data/cfg, allow_uids: [4242]}}\nfiles:\n  - {{name: cfg-file, container: app, dir: {}, path: cfg.txt, secret: cfg, key: value}}\n",
            files.path().display()
        ),
        &[],
    );
    b.wait_ready().await;
    (v, b, files)
}

/// A long-running app that reads its secret only from the file `$F`: records the file's
/// content at each start (`starts`) and at each SIGHUP (`hups`); exits 0 on SIGTERM (after
/// `$D/release` exists, when `$D/hold` exists).
const FILE_APP: &str = r#"
trap 'cat "$F" >> "$D/hups"; echo >> "$D/hups"' HUP
trap 'echo term >> "$D/terms"; kill $S 2>/dev/null; while [ -e "$D/hold" ] && [ ! -e "$D/release" ]; do sleep 0.05; done; exit 0' TERM
cat "$F" >> "$D/starts"; echo >> "$D/starts"
while :; do sleep 1000 & S=$!; wait $S; kill $S 2>/dev/null; done
"#;

fn file_app(files: &tempfile::TempDir) -> String {
    format!("F={}; {FILE_APP}", files.path().join("cfg.txt").display())
}

#[tokio::test]
async fn a_file_only_app_without_env_is_restarted_when_its_secret_changes_and_finds_the_new_file() {
    let (v, b, files) = setup_with_file().await;
    let mut w = Wrapper::file_only(&b, &files, &["--on-change", "cfg=restart"]).await;
    assert_eq!(w.lines("starts"), vec!["v1"], "log:\n{}", w.log());
    let version = v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    // The restarted app reads the file: it was replaced before the wrapper was told.
    assert_eq!(
        w.wait_lines("starts", 2).await,
        vec!["v1", "v2"],
        "log:\n{}",
        w.log()
    );
    assert_eq!(w.lines("terms"), vec!["term"], "the old app got SIGTERM");
    let ev = the_ok_record(&b, "exec.restart", version);
    assert_eq!(ev["caller"]["uid"], me());
    let reads = records(&b, "secret.read");
    assert!(
        reads
            .iter()
            .any(|r| r["secret"] == "cfg" && r["caller"]["uid"] == me()),
        "the wrapper's version checks are audited: {reads:?}"
    );
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(w.exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_file_only_app_without_env_is_signalled_when_its_secret_changes_and_the_signal_is_audited(
) {
    let (v, b, files) = setup_with_file().await;
    let w = Wrapper::file_only(&b, &files, &["--on-change", "cfg=signal:HUP"]).await;
    let version = v.bao.kv_put("cfg", json!({"value": "v2"})).await;
    // On SIGHUP the app re-reads the file, already replaced.
    assert_eq!(
        w.wait_lines("hups", 1).await,
        vec!["v2"],
        "log:\n{}",
        w.log()
    );
    signalled_not_restarted(&w, &b, version);
}

#[tokio::test]
async fn a_change_of_a_file_only_secret_during_a_restart_is_not_lost() {
    let (v, b, files) = setup_with_file().await;
    let w = Wrapper::file_only(
        &b,
        &files,
        &[&["--on-change", "cfg=restart"], HELD_RESTART].concat(),
    )
    .await;
    let (v2, v3) = change_twice_during_a_restart(&v, &b, &w, |r| r["caller"]["uid"] == me()).await;
    // The restart for v2 starts the app with the file as it is then (v3 already); the wrapper
    // cannot tell, so v3 calls for one more restart: never fewer than the changes need.
    let starts = w.wait_lines("starts", 3).await;
    assert_eq!(starts, vec!["v1", "v3", "v3"], "log:\n{}", w.log());
    let versions: Vec<_> = records(&b, "exec.restart")
        .iter()
        .map(|r| r["version"].clone())
        .collect();
    assert_eq!(versions, vec![json!(v2), json!(v3)]);
}

#[tokio::test]
async fn an_unknown_or_denied_secret_in_on_change_is_refused_naming_it_before_the_app_starts() {
    let (_v, b) = setup().await;
    let app = r#"echo started > "$D/started""#;
    for (flags, says) in [
        (vec!["--on-change", "nope=restart"], "secret nope"),
        (
            vec!["--env", "X=cfg", "--on-change", "nope=signal:HUP"],
            "secret nope",
        ),
        (vec!["--on-change", "locked=restart"], "secret locked"),
        (vec![], "nothing to set or watch"),
    ] {
        let mut w = Wrapper::start(&b, &flags, app);
        let status = w.exit().await;
        assert_eq!(status.code(), Some(2), "{flags:?}: log:\n{}", w.log());
        assert!(w.log().contains(says), "{flags:?}: log:\n{}", w.log());
        assert!(
            !w.path("started").exists(),
            "{flags:?}: the app must not start"
        );
    }
    let unknown = records(&b, "secret.read")
        .into_iter()
        .filter(|r| r["secret"] == "nope")
        .count();
    assert!(unknown >= 1, "the refused look-ups are audited");
    // Without --env but with a known secret, the app starts.
    let mut w = Wrapper::start(&b, &["--on-change", "cfg=restart"], app);
    assert_eq!(w.exit().await.code(), Some(0), "log:\n{}", w.log());
    assert!(w.path("started").exists());
}
