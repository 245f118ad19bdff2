//! The sinks' own contract, through the public trait objects.

use keyward_audit::{AuditSink, FileSink, RecordSink, StdoutSink};

#[test]
fn file_sink_creates_missing_parent_directories_and_names_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("var/log/keyward/audit.log");
    let mut sink = FileSink::open(&path, true).expect("open under missing directories");
    assert_eq!(sink.location(), path);
    sink.append(b"{\"seq\":1}\n").expect("append");
    assert_eq!(std::fs::read(&path).expect("read"), b"{\"seq\":1}\n");
}

#[test]
fn last_line_is_found_when_it_is_longer_than_a_kib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    let long = format!("{{\"seq\":2,\"reason\":\"{}\"}}", "r".repeat(4000));
    std::fs::write(&path, format!("{{\"seq\":1}}\n{long}\n\n")).expect("write");
    let mut sink = FileSink::open(&path, false).expect("open");
    assert_eq!(sink.last_line().expect("tail"), Some(long));
}

#[test]
fn stdout_sink_is_named_stdout() {
    assert_eq!(StdoutSink.kind(), "stdout");
}

/// Run in a child process by `a_line_cut_off_by_the_file_size_limit_is_removed_whole`, under
/// `ulimit -f` with SIGXFSZ ignored: the first line fits, the second is cut off part-way.
#[test]
fn child_appends_past_the_file_size_limit() {
    let Some(path) = std::env::var_os("KEYWARD_AUDIT_FSIZE_CHILD") else {
        return;
    };
    let mut sink = FileSink::open(std::path::Path::new(&path), false).expect("open");
    sink.append(b"{\"seq\":1}\n").expect("the first line fits");
    let long = format!("{{\"seq\":2,\"reason\":\"{}\"}}\n", "r".repeat(8192));
    assert!(sink.append(long.as_bytes()).is_err(), "EFBIG");
}

#[test]
fn a_line_cut_off_by_the_file_size_limit_is_removed_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    let exe = std::env::current_exe().expect("test binary");
    // `ulimit -f 2`: 1 or 2 KiB depending on the shell's block size, either way between the two
    // lines' ends. An ignored signal stays ignored across exec.
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 2 && exec \"$0\" --exact child_appends_past_the_file_size_limit --nocapture",
        ])
        .arg(&exe)
        .env("KEYWARD_AUDIT_FSIZE_CHILD", &path)
        .output()
        .expect("run child");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"{\"seq\":1}\n",
        "the partial second line was cut back to the end of the first"
    );
}
