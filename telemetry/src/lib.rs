//! Process-wide telemetry set-up for every `keyward` command: the tracing subscriber, and a
//! panic hook that records where a panic happened but never its message.
//!
//! A panic message is whatever text the panicking code formatted, and in a process that holds
//! secrets that text can include one (a `format!` of a value, the `Debug` of an error that carries
//! a response body). The default hook prints it to stderr, which ends up in the cluster's log
//! pipeline. The hook installed here logs the location, the thread and the message's length,
//! which is enough to find the panic site in the source, and drops the message itself.

use std::io::IsTerminal;
use std::panic::PanicHookInfo;

/// The tracing target of the event the panic hook logs for every panic.
pub const PANIC_TARGET: &str = "keyward::panic";

/// The text of the event the panic hook logs for every panic (in place of the panic's own
/// message). Tests look for it to prove that no task panicked: the hook never logs the word
/// `panicked`, which the default hook would have printed.
pub const PANIC_EVENT: &str = "panic; its message is withheld because it may contain secret data";

/// Sets up logging and the redacting panic hook. Call once, first thing in `main`.
///
/// Logs go to stderr; `KEYWARD_LOG` takes an `EnvFilter` directive (default `info`),
/// `KEYWARD_LOG_FORMAT=json` switches to one JSON object per line. Colour only on a terminal.
pub fn init() {
    init_tracing();
    install_panic_hook();
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a container log they are noise to every parser.
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("KEYWARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Replaces the default panic hook (which prints the message) with one that logs an `error`
/// event without it. A panic inside a task (one request, one connection) is caught by the
/// runtime and the process keeps serving; the event says where it happened.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(panic_hook));
}

fn panic_hook(info: &PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "unknown".to_owned());
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let payload = info.payload();
    let message_len = payload
        .downcast_ref::<&str>()
        .map(|s| s.len())
        .or_else(|| payload.downcast_ref::<String>().map(String::len));
    tracing::error!(
        target: PANIC_TARGET,
        %location,
        thread,
        message_len,
        "{PANIC_EVENT}"
    );
}
