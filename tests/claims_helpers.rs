//! The harness's measuring helpers fail loudly instead of reading a dead process, or a metric
//! that is not there, as 0: otherwise `== 0` and leak checks pass vacuously.

mod support;

use std::process::{Command, Stdio};

/// The pid of a process that has exited and been reaped.
fn exited_pid() -> u32 {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    assert!(child.wait().expect("wait").success());
    pid
}

fn panic_text(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("the helper should have panicked");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn fds_and_rss_of_an_exited_process_panic_instead_of_reading_zero() {
    let pid = exited_pid();
    let msg = panic_text(move || {
        support::fds(pid);
    });
    assert!(msg.contains("process gone"), "{msg}");
    let msg = panic_text(move || {
        support::rss_kib(pid);
    });
    assert!(msg.contains("process gone"), "{msg}");
    // pid 0 is what the harnesses report once their process was reaped.
    let msg = panic_text(|| {
        support::fds(0);
    });
    assert!(msg.contains("pid 0"), "{msg}");
    // A live process reads as itself.
    let me = std::process::id();
    assert!(support::fds(me) > 0 && support::rss_kib(me) > 0);
}

#[test]
fn assert_no_panic_catches_the_panic_hooks_event() {
    // The line keyward's hook logs (keyward-telemetry), as the text formatter writes it.
    let line = format!(
        "2026-01-01T00:00:00Z ERROR {}: {} location=broker/src/server.rs:1:1 thread=\"tokio-rt-worker\" message_len=4",
        keyward_telemetry::PANIC_TARGET,
        keyward_telemetry::PANIC_EVENT
    );
    let msg = panic_text(move || support::assert_no_panic("keyward", &format!("ok\n{line}\n")));
    assert!(msg.contains("keyward panicked (1 panic events)"), "{msg}");
    support::assert_no_panic("keyward", "INFO Sidecar starting\nINFO Sidecar stopped\n");
}
