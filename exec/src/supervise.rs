//! The process edge of `keyward exec`: reads the secrets, spawns the app, forwards signals,
//! reaps every child (the wrapper may be PID 1 of its PID namespace; elsewhere it makes itself
//! the child subreaper, so orphans of the app are its to reap either way), watches the
//! secrets and signals or restarts the app on a new version. The decisions are in
//! [`crate::policy`].
//!
//! The wrapper reaps with `waitpid(-1)`: it never uses `Child::wait`, which would race with it
//! for the app's status.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::client::{Client, ClientError, Event, Secret};
use crate::policy::{exit_code, pending_restarts, react, Backoff, Ended, Reaction, RestartState};
use crate::spec::Spec;
use crate::{env, EXIT_CONFIG, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE};

/// The signals passed on to the app.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The forwarded signals after which the wrapper no longer restarts the app.
fn terminates(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
}

/// How long one long-poll asks the broker to wait (the broker caps it at `socket.max_wait`).
const WATCH_WAIT: Duration = Duration::from_secs(300);

/// Timing settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub grace: Duration,
    pub backoff: Backoff,
    pub start_timeout: Duration,
}

type Env = Vec<(String, Zeroizing<String>)>;

/// Reads the value of every secret some `--env` reads, once.
async fn read_all(spec: &Spec, client: &Client) -> Result<BTreeMap<String, Secret>, ClientError> {
    let mut out = BTreeMap::new();
    for name in spec.read() {
        out.insert(name.to_owned(), client.read(name).await?);
    }
    Ok(out)
}

/// The values of the secrets `--env` reads and the version of every declared secret: those
/// named only by `--on-change` are asked for their version (`HEAD`), never their value.
async fn read_start(
    spec: &Spec,
    client: &Client,
) -> Result<(BTreeMap<String, Secret>, BTreeMap<String, u64>), ClientError> {
    let secrets = read_all(spec, client).await?;
    let mut versions: BTreeMap<String, u64> = secrets
        .iter()
        .map(|(n, s)| (n.clone(), s.version))
        .collect();
    for name in spec.watch_only() {
        versions.insert(name.to_owned(), client.version(name).await?);
    }
    Ok((secrets, versions))
}

/// [`read_start`], retrying while the socket or a secret is not available yet.
async fn read_all_at_start(
    spec: &Spec,
    client: &Client,
    timeout: Duration,
) -> Result<(BTreeMap<String, Secret>, BTreeMap<String, u64>), ClientError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        match read_start(spec, client).await {
            Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                debug!(error = %e, "Secrets not available yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Starts the app with the declared variables added to the wrapper's environment.
fn spawn(command: &[OsString], vars: &Env) -> Result<Pid, u8> {
    let Some((program, args)) = command.split_first() else {
        eprintln!("keyward exec: no command given after --");
        return Err(EXIT_CONFIG);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, v) in vars {
        cmd.env(k, v.as_str());
    }
    match cmd.spawn() {
        // The `Child` handle is dropped without waiting: the reaper collects the status.
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) => {
            eprintln!(
                "keyward exec: cannot run {}: {e}",
                program.to_string_lossy()
            );
            Err(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_NOT_EXECUTABLE
            })
        }
    }
}

/// Collects every child that has ended.
fn reap() -> Vec<(Pid, Ended)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, Ended::Exited(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, Ended::Signaled(sig as i32))),
            Ok(WaitStatus::StillAlive) => break,
            // Stops and continues are not asked for (no WUNTRACED/WCONTINUED).
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            // ECHILD: no children left.
            Err(_) => break,
        }
    }
    out
}

fn send(pid: Pid, sig: Signal) {
    match kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            warn!(pid = pid.as_raw(), signal = sig.as_str(), error = %e, "Cannot signal the app")
        }
    }
}

/// Long-polls one secret and reports each new version.
async fn watch(
    client: Client,
    name: String,
    mut index: u64,
    tx: mpsc::UnboundedSender<(String, u64)>,
) {
    let mut pause = Duration::from_secs(1);
    loop {
        match client.wait_version(&name, index, WATCH_WAIT).await {
            Ok(v) => {
                pause = Duration::from_secs(1);
                if v > index {
                    index = v;
                    if tx.send((name.clone(), v)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(secret = %name, error = %e, "Watching the secret for new versions failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A restart in progress: the old app has been sent SIGTERM.
struct Stopping {
    kill_at: Instant,
    killed: bool,
    env: Env,
    versions: BTreeMap<String, u64>,
}

struct Supervisor {
    spec: Spec,
    client: Client,
    command: Vec<OsString>,
    settings: Settings,
    child: Pid,
    started: Instant,
    quick: u32,
    /// The version of each secret the running app has (started with, or signalled for).
    applied: BTreeMap<String, u64>,
    /// The newest version seen of each secret.
    seen: BTreeMap<String, u64>,
    restart_due: Option<Instant>,
    retry_at: Option<Instant>,
    stopping: Option<Stopping>,
    shutting_down: bool,
}

/// Runs the wrapper; returns its exit code.
pub(crate) async fn run(
    spec: Spec,
    client: Client,
    command: Vec<OsString>,
    settings: Settings,
) -> u8 {
    // Handlers first, so no signal and no child's end is missed once the app runs.
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyward exec: cannot handle SIGCHLD: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let (sig_tx, mut sig_rx) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = match signal(SignalKind::from_raw(sig as i32)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keyward exec: cannot handle {}: {e}", sig.as_str());
                return EXIT_UNAVAILABLE;
            }
        };
        let tx = sig_tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
    }
    if std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "Cannot become the child subreaper; orphans of the app go to init");
        }
    }

    // A termination signal before the app runs ends the wrapper as it would have ended the
    // app; the others have no one to go to.
    let read = {
        let reading = read_all_at_start(&spec, &client, settings.start_timeout);
        tokio::pin!(reading);
        loop {
            tokio::select! {
                r = &mut reading => break r,
                Some(sig) = sig_rx.recv() => {
                    if terminates(sig) {
                        eprintln!("keyward exec: {} before the app started", sig.as_str());
                        return exit_code(Ended::Signaled(sig as i32));
                    }
                    debug!(signal = sig.as_str(), "Signal before the app started; ignored");
                }
            }
        }
    };
    let (secrets, versions) = match read {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyward exec: {e}");
            return match e.code() {
                Some("unknown_secret" | "denied" | "not_found" | "bad_request") => EXIT_CONFIG,
                _ => EXIT_UNAVAILABLE,
            };
        }
    };
    let vars = match env::build(&spec.env, &secrets) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("keyward exec: {e}");
            return EXIT_CONFIG;
        }
    };
    drop(secrets);
    let child = match spawn(&command, &vars) {
        Ok(p) => p,
        Err(code) => return code,
    };
    drop(vars);
    info!(pid = child.as_raw(), "App started");

    let (change_tx, mut change_rx) = mpsc::unbounded_channel();
    for name in spec.watched() {
        tokio::spawn(watch(
            client.clone(),
            name.to_owned(),
            versions.get(name).copied().unwrap_or(0),
            change_tx.clone(),
        ));
    }
    let mut sup = Supervisor {
        spec,
        client,
        command,
        settings,
        child,
        started: Instant::now(),
        quick: 0,
        applied: versions.clone(),
        seen: versions,
        restart_due: None,
        retry_at: None,
        stopping: None,
        shutting_down: false,
    };
    // Keeps the channel open when nothing is watched.
    let _keep = change_tx;
    loop {
        let deadline = [
            sup.restart_due,
            sup.retry_at,
            sup.stopping
                .as_ref()
                .filter(|s| !s.killed)
                .map(|s| s.kill_at),
        ]
        .into_iter()
        .flatten()
        .min();
        let far = Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(deadline.unwrap_or(far).into());
        tokio::select! {
            Some(()) = sigchld.recv() => {
                for (pid, ended) in reap() {
                    if pid != sup.child {
                        debug!(pid = pid.as_raw(), "Reaped an orphan");
                        continue;
                    }
                    if let Some(code) = sup.app_ended(ended).await {
                        return code;
                    }
                }
            }
            Some(sig) = sig_rx.recv() => sup.forward(sig),
            Some((name, version)) = change_rx.recv() => {
                let seen = sup.seen.entry(name).or_insert(0);
                *seen = (*seen).max(version);
                sup.review().await;
            }
            () = timer => {
                if let Some(code) = sup.on_timer().await {
                    return code;
                }
            }
        }
    }
}

impl Supervisor {
    /// The app ended: the wrapper's exit code, or `None` when this was a restart and the app
    /// runs again.
    async fn app_ended(&mut self, ended: Ended) -> Option<u8> {
        let Some(stop) = self.stopping.take() else {
            info!(status = ?ended, "App ended");
            return Some(exit_code(ended));
        };
        if self.shutting_down {
            info!(status = ?ended, "App ended during a restart, after a termination signal");
            return Some(exit_code(ended));
        }
        match spawn(&self.command, &stop.env) {
            Ok(pid) => {
                info!(
                    old = self.child.as_raw(),
                    pid = pid.as_raw(),
                    "App restarted"
                );
                self.child = pid;
                self.started = Instant::now();
                self.applied = stop.versions;
            }
            Err(code) => return Some(code),
        }
        // Changes that came in while the restart ran.
        self.review().await;
        None
    }

    fn forward(&mut self, sig: Signal) {
        debug!(signal = sig.as_str(), "Forwarding a signal to the app");
        send(self.child, sig);
        if terminates(sig) {
            // The app is being stopped from outside: no more restarts, exit when it ends.
            self.shutting_down = true;
            self.restart_due = None;
            self.retry_at = None;
        }
    }

    /// Deadlines: SIGKILL after the grace period, retries, a restart that is due. Returns the
    /// exit code if the app turned out to have ended on its own.
    async fn on_timer(&mut self) -> Option<u8> {
        let now = Instant::now();
        if let Some(stop) = self.stopping.as_mut() {
            if !stop.killed && now >= stop.kill_at {
                warn!(pid = self.child.as_raw(), grace = ?self.settings.grace, "App still running after the grace period; sending SIGKILL");
                send(self.child, Signal::SIGKILL);
                stop.killed = true;
            }
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.review().await;
        }
        if self.restart_due.is_some_and(|t| now >= t) {
            self.restart_due = None;
            return self.begin_restart().await;
        }
        None
    }

    fn retry_later(&mut self) {
        let pause = self.settings.backoff.spacing(self.quick.max(1));
        self.retry_at = Some(Instant::now() + pause);
    }

    /// Acts on every version newer than what the app has: signals now, a restart when the
    /// backoff allows.
    async fn review(&mut self) {
        if self.stopping.is_some() || self.shutting_down {
            return;
        }
        let mut restart = false;
        let seen: Vec<(String, u64)> = self.seen.iter().map(|(n, v)| (n.clone(), *v)).collect();
        for (name, version) in seen {
            let action = self.spec.on_change.get(&name).copied();
            let applied = self.applied.get(&name).copied().unwrap_or(0);
            let Some(action) = action else { continue };
            match react(action, applied, version) {
                Reaction::Ignore => {}
                Reaction::Restart => restart = true,
                Reaction::Signal(sig) => {
                    let detail = format!("{} to pid {}", sig.as_str(), self.child);
                    let event = Event {
                        event: "exec.signal",
                        secret: &name,
                        version,
                        detail: &detail,
                    };
                    match self.client.record(&event).await {
                        Ok(()) => {
                            info!(secret = %name, version, signal = sig.as_str(), "Signalling the app for a new version");
                            send(self.child, sig);
                            self.applied.insert(name, version);
                        }
                        Err(e) => {
                            warn!(secret = %name, error = %e, "Not signalling the app: the event could not be audited; will retry");
                            self.retry_later();
                        }
                    }
                }
            }
        }
        if restart && self.restart_due.is_none() {
            let now = Instant::now();
            let (at, quick) = self.settings.backoff.schedule(
                RestartState {
                    last_start: self.started,
                    quick: self.quick,
                },
                now,
            );
            self.quick = quick;
            self.restart_due = Some(at);
            info!(delay = ?(at - now), quick_restarts = quick, "Restart scheduled");
        }
    }

    /// Reads the new values, audits the restart, and sends the app SIGTERM; the app is started
    /// again when it has ended. If the values cannot be read or the restart cannot be
    /// audited, the app keeps running and the restart is tried again later. Returns the exit
    /// code if the app ended on its own meanwhile (it is not restarted then).
    async fn begin_restart(&mut self) -> Option<u8> {
        if self.shutting_down || self.stopping.is_some() {
            return None;
        }
        let secrets = match read_all(&self.spec, &self.client).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Restart postponed: cannot read the secrets");
                self.postpone_restart();
                return None;
            }
        };
        let mut versions: BTreeMap<String, u64> = secrets
            .iter()
            .map(|(n, s)| (n.clone(), s.version))
            .collect();
        let vars = match env::build(&self.spec.env, &secrets) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "Restart postponed: the new values do not fit the declarations");
                self.postpone_restart();
                return None;
            }
        };
        drop(secrets);
        for (n, v) in &versions {
            let seen = self.seen.entry(n.clone()).or_insert(0);
            *seen = (*seen).max(*v);
        }
        // A secret the app gets as a file is not read: the restarted app has the newest version
        // a long-poll reported, which the broker answers only once the files rendered from it
        // are replaced (a newer one still being rendered is reported later, and restarts again).
        for name in self.spec.watch_only() {
            let v = self.seen.get(name).copied().unwrap_or(0);
            versions.insert(name.to_owned(), v);
        }
        let causes = pending_restarts(&self.spec.on_change, &self.applied, &versions);
        if causes.is_empty() {
            return None;
        }
        let detail = format!("restart of pid {}", self.child);
        for (name, version) in &causes {
            let event = Event {
                event: "exec.restart",
                secret: name,
                version: *version,
                detail: &detail,
            };
            if let Err(e) = self.client.record(&event).await {
                warn!(secret = %name, error = %e, "Restart postponed: the event could not be audited");
                self.postpone_restart();
                return None;
            }
        }
        // The app may have ended while the values were read: then it is not restarted, its
        // status is the wrapper's (its SIGCHLD is still queued; reap now to tell).
        for (pid, ended) in reap() {
            if pid == self.child {
                info!(status = ?ended, "App ended");
                return Some(exit_code(ended));
            }
            debug!(pid = pid.as_raw(), "Reaped an orphan");
        }
        info!(pid = self.child.as_raw(), causes = ?causes, "Restarting the app for new versions");
        send(self.child, Signal::SIGTERM);
        self.stopping = Some(Stopping {
            kill_at: Instant::now() + self.settings.grace,
            killed: false,
            env: vars,
            versions,
        });
        None
    }

    fn postpone_restart(&mut self) {
        self.quick = self.quick.saturating_add(1);
        self.restart_due = Some(Instant::now() + self.settings.backoff.spacing(self.quick));
    }
}
