//! The audit log's verification: `verify_reader` never panics on any text; a log written by
//! `AuditLog` (whatever its field values, across reopens) verifies with every record counted;
//! and any edit, removal, insertion, duplication or reordering of a line before the last is
//! named as a broken chain.
//!
//! Input: a first byte choosing the mode. Even: the rest is a log to verify as is. Odd: the
//! rest drives a generated log (values of the records, reopens) and one tampering of it.
#![no_main]

use keyward_audit::{
    verify_reader, AuditConfig, AuditLog, Caller, Decision, Peer, PodIdentity, Record, VerifyError,
    GENESIS,
};
use libfuzzer_sys::fuzz_target;

/// Reads values off the input.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn string(&mut self) -> String {
        let len = usize::from(self.byte() % 48).min(self.0.len());
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

const ACTIONS: [&str; 4] = ["secret.read", "secret.list", "proxy.inbound", "vault.login"];
const DECISIONS: [Decision; 4] = [
    Decision::Allow,
    Decision::Deny,
    Decision::Ok,
    Decision::Error,
];

fn record(b: &mut Bytes<'_>) -> Record {
    let flags = b.byte();
    let mut r = Record::new(
        ACTIONS[usize::from(flags % 4)],
        DECISIONS[usize::from((flags >> 2) % 4)],
    );
    if flags & 0x10 != 0 {
        r.caller = Some(Caller {
            pid: b.u32() as i32,
            uid: b.u32(),
            gid: b.u32(),
            comm: b.string(),
            container: b.string(),
            process_info: b.string(),
        });
    }
    if flags & 0x20 != 0 {
        r.peer = Some(Peer {
            spiffe_id: Some(b.string()),
            addr: b.string(),
        });
        r.port = Some(b.u32() as u16);
    }
    if flags & 0x40 != 0 {
        r.secret = Some(b.string());
        r.path = Some(b.string());
        r.version = Some(u64::from(b.u32()));
    }
    if flags & 0x80 != 0 {
        r.reason = Some(b.string());
    }
    r
}

fn verify(text: &str) -> Result<keyward_audit::VerifyReport, VerifyError> {
    verify_reader(text.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(report) = verify_reader(rest) {
            let lines = rest.split(|&b| b == b'\n').count() as u64;
            // `split` yields a last, empty piece after a final newline (and one for no input).
            let expected = if rest.is_empty() || rest.ends_with(b"\n") {
                lines - 1
            } else {
                lines
            };
            assert_eq!(report.records, expected);
            if report.records == 0 {
                assert_eq!(report.head, GENESIS);
            }
        }
        return;
    }

    let mut b = Bytes(rest);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.log");
    let open = || {
        AuditLog::open(AuditConfig {
            path: path.clone(),
            stdout: false,
            hmac_key: Some(b"fuzz".to_vec().into()),
            fsync: false,
        })
        .expect("open")
    };
    let mut log = open();
    let count = usize::from(b.byte() % 8) + 1;
    for _ in 0..count {
        let op = b.byte();
        if op & 0x3 == 0 {
            // Reopen: the chain continues from the file's last line.
            drop(log);
            log = open();
        }
        if op & 0x4 != 0 {
            log.set_pod(PodIdentity {
                namespace: b.string(),
                service_account: b.string(),
                pod_name: b.string(),
                pod_uid: String::new(),
            });
        }
        log.record(&record(&mut b)).expect("record");
    }
    drop(log);
    let text = std::fs::read_to_string(&path).expect("read");
    let report = verify(&text).unwrap_or_else(|e| panic!("an untouched log fails: {e}\n{text}"));
    assert_eq!(report.records, count as u64);

    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    let pick = |x: u8, below: usize| usize::from(x) % below;
    let mut tampered: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    match b.byte() % 5 {
        0 => {
            // Flip one byte of a line.
            let i = pick(b.byte(), n);
            let mut bytes = tampered[i].clone().into_bytes();
            let at = b.u32() as usize % bytes.len();
            bytes[at] ^= b.byte().max(1);
            tampered[i] = String::from_utf8_lossy(&bytes).into_owned();
        }
        // Remove a line other than the last (a truncated tail is not detectable by design).
        1 if n > 1 => {
            tampered.remove(pick(b.byte(), n - 1));
        }
        2 if n > 1 => {
            let i = pick(b.byte(), n);
            let j = pick(b.byte(), n);
            tampered.swap(i, j);
        }
        3 => {
            let i = pick(b.byte(), n);
            let line = tampered[i].clone();
            tampered.insert(pick(b.byte(), n), line);
        }
        _ => {
            let at = pick(b.byte(), n);
            tampered.insert(at, b.string());
        }
    }
    let tampered: String = tampered.iter().map(|l| format!("{l}\n")).collect();
    if tampered == text {
        return;
    }
    match verify(&tampered) {
        Err(VerifyError::Broken { line, .. }) => assert!(line >= 1 && line as usize <= n + 1),
        other => panic!("tampering not detected: {other:?}\n{tampered}"),
    }
});
