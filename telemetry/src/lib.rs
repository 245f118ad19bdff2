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
/// `KEYWARD_LOG_FORMAT=json` switches to one JSON object per line (the injector sets it), each
/// with the pod's identity (`"pod":{"namespace":..,"name":..,"uid":..}` from
/// `KEYWARD_POD_NAMESPACE`, `KEYWARD_POD_NAME`, `KEYWARD_POD_UID`, the downward API variables
/// the injector sets; left out when none is set). Colour only on a terminal.
pub fn init() {
    init_tracing();
    install_panic_hook();
}

/// The `"pod":{...},` fragment every JSON line carries, from the environment; empty when no
/// pod variable is set.
fn pod_fragment(get: impl Fn(&str) -> Option<String>) -> String {
    let fields: Vec<String> = [
        ("namespace", "KEYWARD_POD_NAMESPACE"),
        ("name", "KEYWARD_POD_NAME"),
        ("uid", "KEYWARD_POD_UID"),
    ]
    .into_iter()
    .filter_map(|(key, var)| {
        let value = get(var).filter(|v| !v.is_empty())?;
        Some(format!("\"{key}\":{}", json_string(&value)))
    })
    .collect();
    if fields.is_empty() {
        String::new()
    } else {
        format!("\"pod\":{{{}}},", fields.join(","))
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The JSON event format with the pod's identity put first on every line.
struct WithPod<F> {
    inner: F,
    pod: String,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithPod<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) if !self.pod.is_empty() => write!(writer, "{{{}{rest}", self.pod),
            _ => writer.write_str(&line),
        }
    }
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
        let pod = pod_fragment(|var| std::env::var(var).ok());
        builder
            .json()
            .event_format(WithPod {
                inner: tracing_subscriber::fmt::format().json(),
                pod,
            })
            .init();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_fragment_names_what_is_set_and_escapes_it() {
        assert_eq!(pod_fragment(|_| None), "");
        let env = |v: &str| match v {
            "KEYWARD_POD_NAMESPACE" => Some("shop".to_owned()),
            "KEYWARD_POD_NAME" => Some("a\"b\\c\n".to_owned()),
            _ => None,
        };
        assert_eq!(
            pod_fragment(env),
            r#""pod":{"namespace":"shop","name":"a\"b\\c\u000a"},"#
        );
    }
}
