//! What `keyward exec` is asked to do: the `--env` and `--on-change` declarations, parsed and
//! checked with the config contract's rules (`keyward_config::rules`) before anything runs.
//!
//! Formats (each one command-line argument; the injector writes them as separate elements of
//! the container's exec-form `command`, so no shell quoting is involved):
//! - `--env NAME=SECRET` or `--env NAME=SECRET#KEY`: `NAME` is an environment variable name
//!   (`[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes); `SECRET` a secret name on the socket
//!   (`[A-Za-z0-9_.-]`, no `=` or `#`); `KEY` one key of its data (printable ASCII, no space,
//!   no `#`; it may contain `=`). The split is at the first `=` and then at the first `#`, so it
//!   is unambiguous. Without `#KEY` the secret must hold exactly one key.
//! - `--on-change SECRET=ACTION`, `ACTION` one of `none`, `restart`, `signal:NAME` with `NAME`
//!   one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH (with or without `SIG`). `SECRET` may be one
//!   no `--env` reads (an app that takes it from a rendered file or a certificate): the wrapper
//!   then only watches its version, it never reads its value. A secret read by `--env` without
//!   `--on-change` gets `none`.
//! - At least one `--env` or `--on-change`: with neither, the wrapper has nothing to do.

use std::collections::{BTreeMap, BTreeSet};

use keyward_config::{valid_secret_key, valid_secret_name, MAX_SECRET_KEY_LEN};
use nix::sys::signal::Signal;

/// Longest environment variable name accepted.
pub const MAX_ENV_NAME_LEN: usize = 256;

/// Signals `--on-change ...=signal:NAME` may name.
pub const RELOAD_SIGNALS: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// One `--env NAME=SECRET[#KEY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvBinding {
    /// The environment variable.
    pub var: String,
    /// The secret's name on the socket.
    pub secret: String,
    /// The key of the secret's data; `None`: the secret's only key.
    pub key: Option<String>,
}

/// What to do when a secret gets a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Nothing: the app keeps the environment it was started with.
    None,
    /// Send the app this signal.
    Signal(Signal),
    /// Stop the app (SIGTERM, grace period, SIGKILL) and start it again with the new values.
    Restart,
}

/// Everything declared on the command line, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The variables to set, in the order given.
    pub env: Vec<EnvBinding>,
    /// The action per secret; every secret named by `env` or `--on-change` has one.
    pub on_change: BTreeMap<String, OnChange>,
}

/// A declaration that is not valid; the text names the argument and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= MAX_ENV_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Shortened, printable form of user input for error messages (never a secret value: the
/// arguments hold names only).
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    format!("{cut:?}")
}

/// Parses one `--env` value.
pub fn parse_env(arg: &str) -> Result<EnvBinding, SpecError> {
    let err = |why: &str| {
        SpecError(format!(
            "--env {}: {why}; expected NAME=SECRET or NAME=SECRET#KEY",
            shown(arg)
        ))
    };
    let (var, rest) = arg.split_once('=').ok_or_else(|| err("no '='"))?;
    if !valid_env_name(var) {
        return Err(err(
            "the variable name must be [A-Za-z_][A-Za-z0-9_]*, at most 256 bytes",
        ));
    }
    let (secret, key) = match rest.split_once('#') {
        Some((s, k)) => (s, Some(k)),
        None => (rest, None),
    };
    if !valid_secret_name(secret) {
        return Err(err(
            "the secret name must be 1-128 characters of [A-Za-z0-9_.-], not . or ..",
        ));
    }
    if let Some(k) = key {
        if !valid_secret_key(k) {
            return Err(err(&format!(
                "the key must be 1-{MAX_SECRET_KEY_LEN} printable ASCII characters, no space or '#'"
            )));
        }
    }
    Ok(EnvBinding {
        var: var.to_owned(),
        secret: secret.to_owned(),
        key: key.map(str::to_owned),
    })
}

/// Parses a signal name: `HUP` or `SIGHUP` (any case), one of [`RELOAD_SIGNALS`].
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    RELOAD_SIGNALS
        .into_iter()
        .find(|s| s.as_str().strip_prefix("SIG") == Some(bare))
}

/// Parses one `--on-change` value.
pub fn parse_on_change(arg: &str) -> Result<(String, OnChange), SpecError> {
    let err = |why: &str| {
        SpecError(format!(
            "--on-change {}: {why}; expected SECRET=none, SECRET=restart or SECRET=signal:NAME \
             (NAME one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH)",
            shown(arg)
        ))
    };
    let (secret, action) = arg.split_once('=').ok_or_else(|| err("no '='"))?;
    if !valid_secret_name(secret) {
        return Err(err(
            "the secret name must be 1-128 characters of [A-Za-z0-9_.-], not . or ..",
        ));
    }
    let action = match action {
        "none" => OnChange::None,
        "restart" => OnChange::Restart,
        other => match other.strip_prefix("signal:") {
            Some(name) => {
                OnChange::Signal(parse_signal(name).ok_or_else(|| err("unknown signal"))?)
            }
            None => return Err(err("unknown action")),
        },
    };
    Ok((secret.to_owned(), action))
}

/// Checks all declarations together: at least one `--env` or `--on-change`, no variable
/// twice, at most one `--on-change` per secret.
pub fn build(env: &[String], on_change: &[String]) -> Result<Spec, SpecError> {
    let env: Vec<EnvBinding> = env.iter().map(|a| parse_env(a)).collect::<Result<_, _>>()?;
    if env.is_empty() && on_change.is_empty() {
        return Err(SpecError(
            "no --env NAME=SECRET[#KEY] and no --on-change SECRET=ACTION given: keyward exec has \
             nothing to set or watch"
                .into(),
        ));
    }
    let mut vars = BTreeSet::new();
    for b in &env {
        if !vars.insert(b.var.as_str()) {
            return Err(SpecError(format!(
                "--env: variable {} is declared twice",
                b.var
            )));
        }
    }
    let mut actions = BTreeMap::new();
    for a in on_change {
        let (secret, action) = parse_on_change(a)?;
        if actions.insert(secret.clone(), action).is_some() {
            return Err(SpecError(format!(
                "--on-change: secret {secret} has more than one action"
            )));
        }
    }
    for b in &env {
        actions.entry(b.secret.clone()).or_insert(OnChange::None);
    }
    Ok(Spec {
        env,
        on_change: actions,
    })
}

impl Spec {
    /// Every secret declared (read by `--env` or named by `--on-change`), sorted.
    pub fn secrets(&self) -> Vec<&str> {
        self.on_change.keys().map(String::as_str).collect()
    }

    /// The distinct secrets whose values the wrapper reads (some `--env` names them), sorted.
    pub fn read(&self) -> Vec<&str> {
        let read: BTreeSet<&str> = self.env.iter().map(|b| b.secret.as_str()).collect();
        read.into_iter().collect()
    }

    /// The secrets named only by `--on-change` (the app gets them some other way, a rendered
    /// file for example): the wrapper watches their version and never reads their value.
    pub fn watch_only(&self) -> Vec<&str> {
        self.on_change
            .keys()
            .filter(|s| !self.env.iter().any(|b| &b.secret == *s))
            .map(String::as_str)
            .collect()
    }

    /// The secrets that need watching (their action is not `none`).
    pub fn watched(&self) -> Vec<&str> {
        self.on_change
            .iter()
            .filter(|(_, a)| **a != OnChange::None)
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn env_declarations_split_at_the_first_equals_then_the_first_hash() {
        assert_eq!(
            parse_env("DB_PASS=db#password").expect("valid"),
            EnvBinding {
                var: "DB_PASS".into(),
                secret: "db".into(),
                key: Some("password".into())
            }
        );
        assert_eq!(
            parse_env("_X=app.v2").expect("valid"),
            EnvBinding {
                var: "_X".into(),
                secret: "app.v2".into(),
                key: None
            }
        );
        // A key may hold '=' (printable, not '#').
        assert_eq!(
            parse_env("K=s#a=b").expect("valid").key.as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn malformed_env_declarations_are_refused_naming_the_argument() {
        for bad in [
            "",
            "NAME",
            "=db",
            "1X=db",
            "A-B=db",
            "A B=db",
            "X=",
            "X=..",
            "X=a/b",
            "X=a b",
            "X=db#",
            "X=db#a#b",
            "X=db#a b",
            "X=db#\u{e9}",
        ] {
            let e = parse_env(bad).expect_err(bad);
            assert!(e.0.starts_with("--env "), "{bad}: {e}");
        }
        let long = format!("{}=db", "A".repeat(MAX_ENV_NAME_LEN + 1));
        assert!(parse_env(&long).is_err());
        let ok = format!("{}=db", "A".repeat(MAX_ENV_NAME_LEN));
        assert!(parse_env(&ok).is_ok());
    }

    #[test]
    fn on_change_actions_and_signal_names() {
        assert_eq!(
            parse_on_change("db=restart").expect("ok"),
            ("db".into(), OnChange::Restart)
        );
        assert_eq!(parse_on_change("db=none").expect("ok").1, OnChange::None);
        for name in ["HUP", "SIGHUP", "hup", "sighup"] {
            assert_eq!(
                parse_on_change(&format!("db=signal:{name}")).expect(name).1,
                OnChange::Signal(Signal::SIGHUP)
            );
        }
        assert_eq!(
            parse_on_change("db=signal:USR2").expect("ok").1,
            OnChange::Signal(Signal::SIGUSR2)
        );
        for bad in [
            "db",
            "db=",
            "db=reload",
            "db=signal:",
            "db=signal:KILL",
            "db=signal:STOP",
            "db=signal:CHLD",
            "db=signal:1",
            "d b=restart",
            "db=Restart",
        ] {
            let e = parse_on_change(bad).expect_err(bad);
            assert!(e.0.starts_with("--on-change "), "{bad}: {e}");
        }
    }

    #[test]
    fn declarations_are_checked_together() {
        let spec = build(
            &s(&["A=db#user", "B=db#password", "C=app"]),
            &s(&["db=signal:HUP"]),
        )
        .expect("valid");
        assert_eq!(spec.secrets(), vec!["app", "db"]);
        assert_eq!(spec.on_change["app"], OnChange::None);
        assert_eq!(spec.watched(), vec!["db"]);

        assert_eq!(spec.read(), vec!["app", "db"]);
        assert!(spec.watch_only().is_empty());

        let e = build(&[], &[]).expect_err("nothing to set");
        assert!(
            e.0.contains("no --env") && e.0.contains("no --on-change"),
            "{e}"
        );
        let e = build(&s(&["A=db", "A=app"]), &[]).expect_err("twice");
        assert!(e.0.contains("A is declared twice"), "{e}");
        let e = build(&s(&["A=db"]), &s(&["db=restart", "db=none"])).expect_err("two");
        assert!(e.0.contains("more than one action"), "{e}");
    }

    #[test]
    fn on_change_may_name_a_secret_no_env_reads_and_it_is_watched_not_read() {
        // A file-only app: no --env at all.
        let spec = build(&[], &s(&["dsn=restart", "tls=signal:HUP"])).expect("valid");
        assert!(spec.env.is_empty());
        assert!(spec.read().is_empty(), "no value is read");
        assert_eq!(spec.watch_only(), vec!["dsn", "tls"]);
        assert_eq!(spec.watched(), vec!["dsn", "tls"]);
        assert_eq!(spec.on_change["dsn"], OnChange::Restart);
        // Mixed: env reads db, the file's secret is watched only.
        let spec = build(&s(&["U=db#user"]), &s(&["db=restart", "dsn=restart"])).expect("valid");
        assert_eq!(spec.read(), vec!["db"]);
        assert_eq!(spec.watch_only(), vec!["dsn"]);
        assert_eq!(spec.secrets(), vec!["db", "dsn"]);
    }
}
