//! `keyward audit verify|query`: over the local log's segments, or over what a reviewer
//! exported from the cluster's log pipeline (many files or stdin, raw records or pipeline
//! envelopes, interleaved from many pods).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::{ChainReport, ChainVerifier, SegmentedFile};

/// Arguments of `keyward audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chains: groups records by chain and reports, per chain, the records, the
    /// missing sequence ranges and the hash breaks; exits non-zero naming each finding.
    Verify {
        /// Audit logs or pipeline exports (none or `-`: stdin). A local log's closed segments
        /// (`FILE.000001`, ...) are read with it.
        files: Vec<PathBuf>,
        /// The newest chain must hold at least this many records: the highest
        /// `keyward_audit_last_seq` a collector saw. The chain alone cannot show that its
        /// last records were cut off; this does.
        #[arg(long, value_name = "N")]
        min_records: Option<u64>,
        /// CHAIN=SEQ: that chain must reach that sequence number (repeatable).
        #[arg(long, value_name = "CHAIN=SEQ")]
        expect: Vec<String>,
        /// The input is a recent window (the local log after rotation): a chain may begin
        /// after seq 1.
        #[arg(long)]
        window: bool,
        /// Do not report records out of order within one input (exports from a store that
        /// does not keep the order of lines).
        #[arg(long)]
        any_order: bool,
        #[command(flatten)]
        checkpoints: crate::checkpoints::CheckpointArgs,
    },
    /// Show records as a table (or JSON lines), filtered.
    Query {
        /// Audit logs or pipeline exports (none or `-`: stdin).
        files: Vec<PathBuf>,
        #[command(flatten)]
        filter: Filter,
        /// Print matching records as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write one self-contained HTML page (no network access): per-secret access over time,
    /// denials, top callers per container, chains with gaps or hash breaks, and with
    /// --checkpoints the agreement with the Vault checkpoints.
    Report {
        /// Audit logs or pipeline exports (none or `-`: stdin).
        files: Vec<PathBuf>,
        /// Where to write the page (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// As for verify: chains may begin after seq 1.
        #[arg(long)]
        window: bool,
        /// As for verify: records out of order within one input are not findings.
        #[arg(long)]
        any_order: bool,
        /// As for verify: the page shows, per chain, the last checkpoint in Vault and whether
        /// the log agrees with the checkpoints.
        #[command(flatten)]
        checkpoints: crate::checkpoints::CheckpointArgs,
    },
}

/// Runs `keyward audit`.
pub fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify {
            files,
            min_records,
            expect,
            window,
            any_order,
            checkpoints,
        } => {
            let anchored = checkpoints.checkpoints;
            let mut seen = crate::checkpoints::Seen::default();
            let mut v = ChainVerifier::new();
            v.window = window;
            v.any_order = any_order;
            for e in &expect {
                match e.split_once('=').map(|(c, n)| (c, n.parse::<u64>())) {
                    Some((c, Ok(n))) if !c.is_empty() => v.expect(c, n),
                    _ => {
                        eprintln!("--expect: expected CHAIN=SEQ, got {e:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            if let Err(e) = read_inputs(&files, |name, reader| {
                let s = v.source(name);
                if anchored {
                    return seen.read_into(&mut v, s, reader);
                }
                v.read(s, reader)
            }) {
                eprintln!("FAILED: {e}");
                return ExitCode::FAILURE;
            }
            if let Some(n) = min_records {
                match v.newest_chains().as_slice() {
                    [] => {}
                    [one] => v.expect(one.clone(), n),
                    many => {
                        eprintln!(
                            "--min-records: the input holds {} newest chains ({}); name each \
                             with --expect CHAIN=SEQ",
                            many.len(),
                            many.join(", ")
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            let skipped = v.skipped;
            let reports = v.finish();
            let code = print_verify(&reports, skipped);
            if anchored && !crate::checkpoints::run(&checkpoints, &seen, window) {
                return ExitCode::FAILURE;
            }
            code
        }
        AuditCommand::Query {
            files,
            filter,
            json,
        } => {
            for (name, t) in [("--since", &filter.since), ("--until", &filter.until)] {
                if let Some(t) = t {
                    if parse_time(t).is_none() {
                        eprintln!(
                            "{name}: expected an RFC 3339 time like 2026-01-02T03:04:05Z, got {t:?}"
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            let mut out = std::io::stdout().lock();
            let mut q = Query::new(&filter, json);
            let result = q
                .header(&mut out)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    read_inputs(&files, |_, reader| q.read(reader, &mut out).map(|_| ()))
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Report {
            files,
            out,
            window,
            any_order,
            checkpoints,
        } => crate::report::run(&files, out.as_deref(), window, any_order, &checkpoints),
    }
}

/// Inputs are read in blocks of this size (exports run to gigabytes).
const READ_BUFFER: usize = 1 << 20;

/// Each input in turn: stdin for none or `-`, each file with its closed segments before it.
pub(crate) fn read_inputs(
    files: &[PathBuf],
    mut each: impl FnMut(String, &mut dyn BufRead) -> std::io::Result<()>,
) -> Result<(), String> {
    if files.is_empty() || files.iter().any(|f| f.as_os_str() == "-") {
        let stdin = std::io::stdin();
        let mut stdin = std::io::BufReader::with_capacity(READ_BUFFER, stdin.lock());
        each("stdin".into(), &mut stdin).map_err(|e| format!("stdin: {e}"))?;
    }
    let mut seen = std::collections::HashSet::new();
    for f in files.iter().filter(|f| f.as_os_str() != "-") {
        let mut paths = SegmentedFile::closed_segments(f)
            .map(|c| c.into_iter().map(|(_, p)| p).collect::<Vec<_>>())
            .unwrap_or_default();
        paths.push(f.clone());
        for p in paths {
            if !seen.insert(p.clone()) {
                continue;
            }
            let file = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            each(
                p.display().to_string(),
                &mut std::io::BufReader::with_capacity(READ_BUFFER, file),
            )
            .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// Prints the verdict per chain; the exit code says whether anything was found.
fn print_verify(reports: &[ChainReport], skipped: u64) -> ExitCode {
    let findings: usize = reports.iter().map(|r| r.findings.len()).sum();
    let records: u64 = reports.iter().map(|r| r.records).sum();
    if reports.is_empty() {
        eprintln!("FAILED: no audit records in the input ({skipped} other lines)");
        return ExitCode::FAILURE;
    }
    let heads: Vec<&str> = reports
        .iter()
        .map(|r| &r.head[..r.head.len().min(16)])
        .collect();
    if findings == 0 {
        println!(
            "OK: {records} records in {} chain{}, chains intact, head {}",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" },
            heads.join(" ")
        );
    } else {
        eprintln!(
            "FAILED: {findings} finding{} in {} of {} chains",
            if findings == 1 { "" } else { "s" },
            reports.iter().filter(|r| !r.findings.is_empty()).count(),
            reports.len()
        );
    }
    for r in reports {
        let line = format!(
            "chain {} ({}): {} records, seq {}-{}, head {}{}: {}",
            r.chain,
            if r.pod.is_empty() {
                "pod unknown"
            } else {
                &r.pod
            },
            r.records,
            r.first_seq,
            r.last_seq,
            &r.head[..r.head.len().min(16)],
            if r.duplicates > 0 {
                format!(", {} repeated", r.duplicates)
            } else {
                String::new()
            },
            if r.findings.is_empty() {
                "OK"
            } else {
                "FAILED"
            }
        );
        if findings == 0 {
            println!("{}", printable(&line));
        } else {
            eprintln!("{}", printable(&line));
        }
        for f in &r.findings {
            eprintln!(
                "FAILED: chain {}: seq {}: {}",
                printable(&r.chain),
                f.seq,
                printable(&f.what)
            );
        }
    }
    if skipped > 0 {
        eprintln!("({skipped} lines held no audit record and were skipped)");
    }
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_time(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// Filters of `keyward audit query`; all given must match.
#[derive(Debug, Default, Clone, Args)]
pub struct Filter {
    /// Only records of pods in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only records of this pod (its name or uid).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only records whose caller is in this container (records that name one).
    #[arg(long)]
    pub container: Option<String>,
    /// Only records of this chain.
    #[arg(long)]
    pub chain: Option<String>,
    /// Only records about this secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// Only records whose caller has this uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Only records with this decision (allow, deny, ok, error).
    #[arg(long)]
    pub decision: Option<String>,
    /// Only records with this action (secret.read, vault.login, conn.inbound, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// Only records at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
}

impl Filter {
    /// The strings a matching record must hold as string values, for [`Filter::may_match`]:
    /// the string filters whose text JSON never needs to escape.
    fn needles(&self) -> Vec<&str> {
        [
            &self.namespace,
            &self.pod,
            &self.container,
            &self.chain,
            &self.secret,
            &self.decision,
            &self.action,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|n| {
            !n.chars().any(|c| {
                c == '"' || c == '\\' || c.is_control() || c == char::REPLACEMENT_CHARACTER
            })
        })
        .collect()
    }

    /// False only when `line` cannot hold a matching record, without parsing it: a line with
    /// no backslash has no escapes, so each of its strings is written as its own text, and a
    /// string equal to a needle appears in the line as it is. Lines with a backslash (escapes,
    /// a record quoted in a pipeline's envelope) or not UTF-8 are always parsed.
    fn may_match(needles: &[&str], line: &[u8]) -> bool {
        if needles.is_empty() || line.contains(&b'\\') {
            return true;
        }
        match std::str::from_utf8(line) {
            Ok(text) => needles.iter().all(|n| text.contains(n)),
            Err(_) => true,
        }
    }

    fn matches(&self, v: &Value) -> bool {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        let is = |want: &Option<String>, got: Option<&str>| {
            want.as_ref().is_none_or(|w| got == Some(w.as_str()))
        };
        if !(is(&self.secret, s("/secret"))
            && is(&self.decision, s("/decision"))
            && is(&self.action, s("/action"))
            && is(&self.chain, s("/chain"))
            && is(&self.namespace, s("/pod/namespace")))
        {
            return false;
        }
        if let Some(want) = &self.pod {
            if s("/pod/pod_name") != Some(want) && s("/pod/pod_uid") != Some(want) {
                return false;
            }
        }
        if let Some(want) = &self.container {
            if s("/caller/container").or(s("/container")) != Some(want) {
                return false;
            }
        }
        if let Some(want) = self.uid {
            if v.pointer("/caller/uid").and_then(Value::as_u64) != Some(u64::from(want)) {
                return false;
            }
        }
        let t = s("/time").and_then(parse_time);
        if let Some(since) = &self.since {
            match (t, parse_time(since)) {
                (Some(t), Some(since)) if t >= since => {}
                _ => return false,
            }
        }
        if let Some(until) = &self.until {
            match (t, parse_time(until)) {
                (Some(t), Some(until)) if t < until => {}
                _ => return false,
            }
        }
        true
    }
}

/// `s` safe to print on a terminal: control characters (C0, DEL, C1), bidirectional overrides
/// and the backslash itself are written as `\u{..}` / `\\` escapes, so a record cannot move
/// the cursor, recolour, reorder or break a row.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A record for `query`: any object with string `action` and `decision` (the local log's lines,
/// or a record in a pipeline's envelope).
fn query_record(line: &str) -> Option<Map<String, Value>> {
    if let Some(m) = crate::extract_record(line) {
        return Some(m);
    }
    let start = line.find('{')?;
    let m: Map<String, Value> = serde_json::from_str(line[start..].trim_end()).ok()?;
    (m.get("action").is_some_and(Value::is_string)
        && m.get("decision").is_some_and(Value::is_string))
    .then_some(m)
}

/// `keyward audit query` over any number of inputs.
pub struct Query<'a> {
    filter: &'a Filter,
    json: bool,
    /// Records printed so far.
    pub matched: usize,
}

impl<'a> Query<'a> {
    pub fn new(filter: &'a Filter, json: bool) -> Self {
        Self {
            filter,
            json,
            matched: 0,
        }
    }

    /// The table's header (nothing for JSON lines).
    pub fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.json {
            writeln!(
                out,
                "{:<27} {:>6} {:<24} {:<18} {:<7} {:<14} {:<22} REASON",
                "TIME", "SEQ", "POD", "ACTION", "RESULT", "SECRET", "CALLER/PEER"
            )?;
        }
        Ok(())
    }

    /// Prints the matching records of `reader`; returns how many matched.
    pub fn read(&mut self, reader: impl BufRead, out: &mut impl Write) -> std::io::Result<usize> {
        let mut n = 0;
        let needles = self.filter.needles();
        for line in reader.split(b'\n') {
            let line = line?;
            if !Filter::may_match(&needles, &line) {
                continue;
            }
            let Some(m) = query_record(&String::from_utf8_lossy(&line)) else {
                continue;
            };
            let v = Value::Object(m);
            if !self.filter.matches(&v) {
                continue;
            }
            n += 1;
            if self.json {
                writeln!(out, "{v}")?;
            } else {
                row(&v, out)?;
            }
        }
        self.matched += n;
        Ok(n)
    }
}

/// Writes the records of `file` (and its closed segments) that match `filter`; returns how
/// many matched.
pub fn query(
    file: &Path,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut q = Query::new(filter, json);
    q.header(out)?;
    let mut paths: Vec<PathBuf> = SegmentedFile::closed_segments(file)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    paths.push(file.to_owned());
    for p in paths {
        q.read(std::io::BufReader::new(std::fs::File::open(p)?), out)?;
    }
    Ok(q.matched)
}

/// One table row. Every field is escaped: process names, secret names, SPIFFE IDs and reasons
/// come from callers and peers, and a raw ESC, CR or newline could hide or forge a row.
fn row(v: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| match x {
                Value::String(s) => printable(s),
                other => printable(&other.to_string()),
            })
            .unwrap_or_default()
    };
    let who = if v.get("caller").is_some() {
        format!(
            "uid={} pid={} {}",
            s("/caller/uid"),
            s("/caller/pid"),
            s("/caller/comm")
        )
    } else if v.get("peer").is_some() {
        let id = s("/peer/spiffe_id");
        if id.is_empty() {
            s("/peer/addr")
        } else {
            id
        }
    } else {
        String::new()
    };
    let pod = match (s("/pod/namespace"), s("/pod/pod_name")) {
        (ns, name) if ns.is_empty() && name.is_empty() => String::new(),
        (ns, name) => format!("{ns}/{name}"),
    };
    let mut reason = s("/reason");
    if v.get("summary").is_some() {
        reason = format!(
            "{} more from {} to {}{}{}",
            s("/summary/count"),
            s("/summary/from"),
            s("/summary/to"),
            if reason.is_empty() { "" } else { "; " },
            reason
        );
    }
    writeln!(
        out,
        "{:<27} {:>6} {:<24} {:<18} {:<7} {:<14} {:<22} {}",
        s("/time"),
        s("/seq"),
        pod,
        s("/action"),
        s("/decision"),
        s("/secret"),
        who,
        reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_could_forge_a_row() {
        assert_eq!(printable("orders-api"), "orders-api");
        assert_eq!(printable("a\nb"), "a\\u{a}b");
        assert_eq!(printable("\u{1b}[2K\rok"), "\\u{1b}[2K\\u{d}ok");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(printable("\u{9b}"), "\\u{9b}");
        assert_eq!(
            printable("\\u{a}"),
            "\\\\u{a}",
            "a literal escape stays distinguishable"
        );
    }

    #[test]
    fn query_skips_without_parsing_only_lines_that_cannot_match() {
        let filter = Filter {
            secret: Some("db".into()),
            decision: Some("deny".into()),
            ..Filter::default()
        };
        let needles = filter.needles();
        assert!(Filter::may_match(
            &needles,
            br#"{"decision":"deny","secret":"db"}"#
        ));
        assert!(!Filter::may_match(
            &needles,
            br#"{"decision":"deny","secret":"api"}"#
        ));
        // A pipeline may write any character as an escape, or quote the record in an envelope:
        // such lines are parsed.
        let escaped = br#"{"decision":"d\u0065ny","secret":"\u0064b"}"#;
        let quoted = br#"{"log":"{\"decision\":\"deny\",\"secret\":\"db\"}"}"#;
        assert!(Filter::may_match(&needles, escaped));
        assert!(Filter::may_match(&needles, quoted));
        assert!(Filter::may_match(&needles, b"{\"secret\":\"\xff\"}"));
        // A needle JSON must escape is not used to skip lines.
        let quote = Filter {
            secret: Some("a\"b".into()),
            ..Filter::default()
        };
        assert!(quote.needles().is_empty());
        assert!(Filter::default().needles().is_empty());
        // And the escaped records are still found by the query.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.log");
        let rec = |secret: &str| {
            format!(
                r#"{{"time":"2026-12-01T00:00:00Z","seq":1,"action":"secret.read","decision":"deny","secret":"{secret}"}}"#
            )
        };
        std::fs::write(
            &file,
            format!("{}\n{}\n{}\n", rec("db"), rec(r"\u0064b"), rec("api")),
        )
        .expect("write");
        let mut out = Vec::new();
        let n = query(&file, &filter, true, &mut out).expect("query");
        assert_eq!(n, 2, "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn query_table_rows_cannot_be_forged_by_a_process_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.log");
        let forged = "curl\n2026-01-01T00:00:00Z      1 secret.read        allow   db";
        let line = serde_json::json!({
            "time": "2026-12-01T00:00:00Z", "seq": 7, "action": "secret.read",
            "decision": "deny", "secret": "db\u{1b}[8m",
            "caller": {"uid": 1000, "pid": 42, "comm": forged},
            "reason": "uid 1000 is not allowed\r",
        });
        std::fs::write(&file, format!("{line}\n")).expect("write");
        let mut out = Vec::new();
        let n = query(&file, &Filter::default(), false, &mut out).expect("query");
        assert_eq!(n, 1);
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(out.lines().count(), 2, "header and one row:\n{out}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("curl\\u{a}2026"), "{out}");
    }
}
