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
