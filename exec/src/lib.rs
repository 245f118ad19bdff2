//! `keyward exec`: the exec wrapper (issue 13 §2-3; see docs/delivery.md).
//!
//! Started as the app container's entrypoint, it reads the declared secrets over the broker's
//! socket (each read audited and attributed to the container by the broker), sets the declared
//! environment variables, and runs the app as its child. It stays the app's parent: it forwards
//! signals, reaps every child (it may be PID 1), exits with the app's status, and on a new
//! version of a secret signals or restarts the app as declared — also of a secret the app only
//! gets as a rendered file (`--on-change` without `--env`: its version is watched, its value
//! never read by the wrapper).
//!
//! - [`spec`]: the `--env` / `--on-change` declarations and their checks;
//! - [`policy`]: the pure decisions (exit code, reaction to a change, restart backoff);
//! - [`env`]: the declared environment from the values read;
//! - [`client`]: the socket API over HTTP/1.1;
//! - `supervise`: the process edge (spawn, signals, reaping, restarts).

pub mod client;
pub mod env;
pub mod policy;
pub mod spec;
mod supervise;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code when the declarations or the secrets do not allow starting the app.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the broker could not be used (unreachable, secrets unavailable).
pub const EXIT_UNAVAILABLE: u8 = 1;
/// Exit code when the command cannot be executed (shell convention).
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// Exit code when the command is not found (shell convention).
pub const EXIT_NOT_FOUND: u8 = 127;

/// Arguments of `keyward exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Set the environment variable NAME to the value of KEY of the secret SECRET
    /// (NAME=SECRET#KEY), or to the secret's only key (NAME=SECRET). Repeatable.
    #[arg(long = "env", value_name = "NAME=SECRET[#KEY]")]
    pub env: Vec<String>,
    /// What to do when SECRET gets a new version: none (default), restart, or signal:NAME
    /// (HUP, INT, QUIT, TERM, USR1, USR2, WINCH). Repeatable, once per secret. SECRET may be
    /// one no --env reads (the app gets it as a rendered file): only its version is watched.
    #[arg(long = "on-change", value_name = "SECRET=ACTION")]
    pub on_change: Vec<String>,
    /// The broker's socket.
    #[arg(
        long,
        env = "KEYWARD_SOCKET",
        default_value = "/run/keyward/broker.sock"
    )]
    pub socket: PathBuf,
    /// How long the app has to exit after SIGTERM on a restart before it gets SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub grace_period: Duration,
    /// Spacing between the first two restarts of a run of quick restarts; it doubles with each.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub restart_backoff: Duration,
    /// Largest spacing between restarts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub restart_backoff_max: Duration,
    /// How long the app must run for a run of quick restarts to end (the next restart is immediate).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub stable_after: Duration,
    /// How long to wait at start for the socket and the secrets to become available.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub start_timeout: Duration,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Runs `keyward exec`: the app's exit code (128 + n when signal n killed it); 2 when the
/// declarations or the secrets do not allow starting it (unknown secret, missing key, denied),
/// 1 when the broker is unavailable, 126/127 when the command cannot be run.
pub fn run(args: ExecArgs) -> ExitCode {
    let spec = match spec::build(&args.env, &args.on_change) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyward exec: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyward exec: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let settings = supervise::Settings {
        grace: args.grace_period,
        backoff: policy::Backoff {
            initial: args.restart_backoff,
            max: args.restart_backoff_max.max(args.restart_backoff),
            stable_after: args.stable_after,
        },
        start_timeout: args.start_timeout,
    };
    let client = client::Client::new(args.socket);
    ExitCode::from(rt.block_on(supervise::run(spec, client, args.command, settings)))
}
