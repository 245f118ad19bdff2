//! The panic hook keeps a panic's message out of the logs: a child process (this test binary,
//! re-run with `KEYWARD_PANIC_CHILD` set) installs the real logging set-up, panics in a worker
//! thread with a canary in the message, and carries on; the parent reads the child's real stderr.

use std::process::Command;

const CANARY: &str = "canary-panic-7f3d9a1c-s3cr3t";
const CHILD: &str = "KEYWARD_PANIC_CHILD";

/// The child's part: the process set-up `main` does, then a panic carrying the canary (formatted
/// the way a careless `expect` on a value would), caught at the thread boundary as a runtime
/// catches a task's panic.
fn child() {
    keyward_telemetry::init();
    let secret = format!("password={CANARY}");
    let worker = std::thread::Builder::new()
        .name("request-worker".into())
        .spawn(move || -> () { panic!("could not parse the secret {secret:?}") })
        .expect("spawn");
    assert!(worker.join().is_err(), "the worker panicked");
    // A &str payload too (no formatting), on this thread, caught.
    let caught = std::panic::catch_unwind(|| -> () { panic!("{}", CANARY) });
    assert!(caught.is_err());
    tracing::info!("still serving after the panics");
}

#[test]
fn panic_messages_never_reach_the_logs() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "panic_messages_never_reach_the_logs",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("KEYWARD_LOG", "trace")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains(CANARY) && !stdout.contains(CANARY),
        "the canary leaked:\n{stdout}\n{stderr}"
    );
    // Both panics are recorded, with where they happened, and the process went on.
    let events: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panic; its message is withheld"))
        .collect();
    assert_eq!(events.len(), 2, "one event per panic:\n{stderr}");
    assert!(
        events[0].contains("thread=\"request-worker\"")
            && events[0].contains("telemetry/tests/panic_hook.rs:"),
        "the event names the thread and the location: {}",
        events[0]
    );
    assert!(events.iter().all(|e| e.contains("message_len=")));
    assert!(
        stderr.contains("still serving after the panics"),
        "{stderr}"
    );
}
