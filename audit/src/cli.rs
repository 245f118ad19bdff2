//! `keyward audit verify|query`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Arguments of `keyward audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first bad line and exits non-zero.
    Verify {
        /// The audit log file.
        file: PathBuf,
        /// Fail unless the log holds at least this many records: the highest
        /// `keyward_audit_last_seq` a collector saw, or the last `seq` of the stdout copy. The
        /// chain alone cannot show that its last lines were cut off; this does.
        #[arg(long, value_name = "N")]
        min_records: Option<u64>,
    },
    /// Show records as a table (or JSON lines), filtered.
    Query {
        /// The audit log file.
        file: PathBuf,
        /// Only records about this secret.
        #[arg(long)]
        secret: Option<String>,
        /// Only records whose caller has this uid.
        #[arg(long)]
        uid: Option<u32>,
        /// Only records with this decision (allow, deny, ok, error).
        #[arg(long)]
        decision: Option<String>,
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only records with this action (secret.read, vault.login, conn.inbound, ...).
        #[arg(long)]
        action: Option<String>,
        /// Print matching records as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `keyward audit`.
pub fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify { file, min_records } => match crate::verify(&file) {
            Ok(r) if min_records.is_some_and(|n| r.records < n) => {
                eprintln!(
                    "FAILED: {}: the chain is intact but ends at record {}, and {} were written: \
                     the last {} were cut off",
                    file.display(),
                    r.records,
                    min_records.unwrap_or_default(),
                    min_records.unwrap_or_default() - r.records
                );
                ExitCode::FAILURE
            }
            Ok(r) => {
                println!(
                    "OK: {} records, chain intact, head {}",
                    r.records,
                    &r.head[..16]
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("FAILED: {}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        AuditCommand::Query {
            file,
            secret,
            uid,
            decision,
            since,
            action,
            json,
        } => {
            let filter = Filter {
                secret,
                uid,
                decision,
                since,
                action,
            };
            if let Some(s) = &filter.since {
                if time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .is_err()
                {
                    eprintln!(
                        "--since: expected an RFC 3339 time like 2026-01-02T03:04:05Z, got {s:?}"
                    );
                    return ExitCode::from(2);
                }
            }
            match query(&file, &filter, json, &mut std::io::stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Filters of `keyward audit query`.
#[derive(Debug, Default)]
pub struct Filter {
    pub secret: Option<String>,
    pub uid: Option<u32>,
    pub decision: Option<String>,
    pub since: Option<String>,
    pub action: Option<String>,
}

impl Filter {
    fn matches(&self, v: &serde_json::Value) -> bool {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        if let Some(want) = &self.secret {
            if s("secret") != Some(want) {
                return false;
            }
        }
        if let Some(want) = &self.decision {
            if s("decision") != Some(want) {
                return false;
            }
        }
        if let Some(want) = &self.action {
            if s("action") != Some(want) {
                return false;
            }
        }
        if let Some(want) = self.uid {
            let uid = v.pointer("/caller/uid").and_then(|x| x.as_u64());
            if uid != Some(u64::from(want)) {
                return false;
            }
        }
        if let Some(since) = &self.since {
            let parse = |t: &str| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            };
            match (s("time").and_then(parse), parse(since)) {
                (Some(t), Some(since)) if t >= since => {}
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

/// Writes the records of `file` that match `filter`; returns how many matched.
pub fn query(
    file: &std::path::Path,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let reader = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut n = 0;
    if !json {
        writeln!(
            out,
            "{:<27} {:>6} {:<18} {:<7} {:<14} {:<22} REASON",
            "TIME", "SEQ", "ACTION", "RESULT", "SECRET", "CALLER/PEER"
        )?;
    }
    for line in reader.lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if !filter.matches(&v) {
            continue;
        }
        n += 1;
        if json {
            writeln!(out, "{line}")?;
            continue;
        }
        // Every field is escaped: process names, secret names, SPIFFE IDs and reasons come
        // from callers and peers, and a raw ESC, CR or newline could hide or forge a row.
        let s = |p: &str| {
            v.pointer(p)
                .map(|x| match x {
                    serde_json::Value::String(s) => printable(s),
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
        writeln!(
            out,
            "{:<27} {:>6} {:<18} {:<7} {:<14} {:<22} {}",
            s("/time"),
            s("/seq"),
            s("/action"),
            s("/decision"),
            s("/secret"),
            who,
            s("/reason")
        )?;
    }
    Ok(n)
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
