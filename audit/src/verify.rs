//! Chain verification.
//!
//! [`verify_reader`] checks one local log exactly as the writer wrote it: every line a record in
//! its canonical form, in order, chains complete and linked. [`ChainVerifier`] checks what a
//! reviewer collects across a cluster: records from many files and pods, re-serialised and
//! wrapped by log pipelines, interleaved and possibly repeated; it groups them by chain and
//! reports, per chain, the records, the missing sequence ranges and the hash breaks.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use crate::canon::{canonical_without_hash, line_of, record_hash};
use crate::{ChainLink, GENESIS};

/// What a successful verification of one local log saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The hash of the last record (GENESIS for an empty log).
    pub head: String,
}

/// The first problem found, with its 1-based line number.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read audit log: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
}

/// The chain members of a record.
struct Head {
    chain: String,
    seq: u64,
    prev: String,
    hash: String,
    prev_chain: Option<ChainLink>,
}

fn head_of(m: &Map<String, Value>) -> Option<Head> {
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(Head {
        chain: s("chain").unwrap_or_default(),
        seq: m.get("seq")?.as_u64()?,
        prev: s("prev")?,
        hash: s("hash")?,
        prev_chain: m
            .get("prev_chain")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
    })
}

/// The `pod` member of a record: its JSON text (read in place) or its value.
#[derive(Debug)]
pub(crate) enum PodMember<'a> {
    Text(&'a str),
    Value(Value),
}

impl PodMember<'_> {
    /// `namespace`, `pod_name` and `pod_uid` (empty where absent or not strings).
    pub(crate) fn names(&self) -> [String; 3] {
        let parsed;
        let v = match self {
            PodMember::Text(t) => {
                parsed = serde_json::from_str::<Value>(t).unwrap_or(Value::Null);
                &parsed
            }
            PodMember::Value(v) => v,
        };
        ["namespace", "pod_name", "pod_uid"].map(|k| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
    }
}

/// One line's audit record as verification needs it.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    /// `None` when the record names no chain (no `chain` string).
    pub chain: Option<Cow<'a, str>>,
    pub seq: u64,
    pub prev: Cow<'a, str>,
    /// The hash the record claims.
    pub hash: Cow<'a, str>,
    pub prev_chain: Option<ChainLink>,
    pub pod: Option<PodMember<'a>>,
    /// SHA-256 of the record's canonical form: the hash its content has.
    pub content: [u8; 32],
}

impl Parsed<'_> {
    /// The record's content matches the hash it claims.
    pub(crate) fn intact(&self) -> bool {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(self.content, &mut hex).is_ok() && self.hash.as_bytes() == hex
    }
}

/// The audit record in `text` (a record or a pipeline's envelope), as
/// [`crate::extract_record`] finds it, with the hash of its canonical form: read in place when
/// the line is in the writer's form ([`crate::written`]), the general way otherwise.
pub(crate) fn parse_line(text: &str) -> Option<Parsed<'_>> {
    match crate::written::written_record(text) {
        Some(w) => Some(Parsed {
            chain: w.chain,
            seq: w.seq,
            prev: w.prev,
            hash: w.hash,
            prev_chain: w.prev_chain.and_then(|t| serde_json::from_str(t).ok()),
            pod: w.pod.map(PodMember::Text),
            content: w.content,
        }),
        None => parse_line_general(text),
    }
}

/// [`parse_line`] the general way: the record parsed into a value and canonicalised.
fn parse_line_general(text: &str) -> Option<Parsed<'static>> {
    let mut map = crate::extract_record(text)?;
    let chain = map
        .get("chain")
        .and_then(Value::as_str)
        .map(|c| Cow::Owned(c.to_owned()));
    let head = head_of(&map)?;
    let mut content = [0u8; 32];
    hex::decode_to_slice(record_hash_fast(&mut map), &mut content).ok()?;
    Some(Parsed {
        chain,
        seq: head.seq,
        prev: Cow::Owned(head.prev),
        hash: Cow::Owned(head.hash),
        prev_chain: head.prev_chain,
        pod: map.remove("pod").map(PodMember::Value),
        content,
    })
}

/// A hash as a record names it (`prev`, `hash`): 32 bytes when it is written as a hash is (64
/// lower-case hex digits), the text as it is otherwise. Two are equal exactly when their texts
/// are.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    Hash([u8; 32]),
    Other(Box<str>),
}

impl Named {
    fn new(s: &str) -> Self {
        let mut h = [0u8; 32];
        if s.len() == 64
            && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && hex::decode_to_slice(s, &mut h).is_ok()
        {
            Named::Hash(h)
        } else {
            Named::Other(s.into())
        }
    }

    fn text(&self) -> String {
        match self {
            Named::Hash(h) => hex::encode(h),
            Named::Other(s) => s.to_string(),
        }
    }
}

/// The chain members of a local log's line that is exactly what the writer writes — a line in
/// the writer's form ([`crate::written`]) from its first byte to its last, whose content
/// matches its hash — without parsing it into a value. `None`: anything else, which
/// [`checked_head`] then checks and names.
fn written_intact(text: &str) -> Option<Head> {
    if !(text.starts_with('{') && text.ends_with('}')) {
        return None;
    }
    // Only the writer's form itself: no envelope, no other way of reading the line.
    let w = crate::written::written_record(text)?;
    let p = Parsed {
        chain: w.chain,
        seq: w.seq,
        prev: w.prev,
        hash: w.hash,
        prev_chain: w.prev_chain.and_then(|t| serde_json::from_str(t).ok()),
        pod: None,
        content: w.content,
    };
    if !p.intact() {
        return None;
    }
    // The body is the canonical text and the line ends with `,"hash":"<hex>"}`: the line is
    // `line_of(body, hash)`, as `checked_head` requires.
    Some(Head {
        chain: p.chain.map(Cow::into_owned).unwrap_or_default(),
        seq: p.seq,
        prev: p.prev.into_owned(),
        hash: p.hash.into_owned(),
        prev_chain: p.prev_chain,
    })
}

/// The chain members of a local log's line, parsed and canonicalised: the line must be a
/// record whose content matches its hash, written in the canonical form.
fn checked_head(text: &str) -> Result<Head, String> {
    let map: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not an audit record: {e}"))?;
    let head = head_of(&map).ok_or_else(|| {
        "not an audit record: no numeric seq, or no prev or hash string".to_owned()
    })?;
    let body = canonical_without_hash(&map);
    if record_hash(&map) != head.hash {
        return Err("content does not match its hash (the line was edited)".into());
    }
    if line_of(&body, &head.hash) != text {
        return Err("not in the canonical form the log writes (the line was rewritten)".into());
    }
    Ok(head)
}

/// Verifies the log file at `path`.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let file = std::fs::File::open(path)?;
    verify_reader(std::io::BufReader::new(file))
}

/// Verifies one local log read from `reader`, as written: each line a record in canonical form
/// whose hash matches; each chain starting at seq 1 from GENESIS and running on without a gap;
/// a chain after another naming where that one ended (`prev_chain`); the first chain naming no
/// chain before it (one it names is missing from the log). A rotated local log, whose oldest
/// records are gone by design, is checked with [`ChainVerifier`] (`keyward audit verify --window`).
pub fn verify_reader(reader: impl BufRead) -> Result<VerifyReport, VerifyError> {
    let mut current: Option<Head> = None;
    let mut seen = HashSet::new();
    let mut n = 0u64;
    for (i, line) in reader.split(b'\n').enumerate() {
        let lineno = i as u64 + 1;
        let broken = |reason: String| VerifyError::Broken {
            line: lineno,
            reason,
        };
        let bytes = line?;
        let text = std::str::from_utf8(&bytes).map_err(|_| broken("not UTF-8".into()))?;
        if text.is_empty() {
            return Err(broken("empty line".into()));
        }
        let head = match written_intact(text) {
            Some(head) => head,
            None => checked_head(text).map_err(broken)?,
        };
        match &current {
            Some(c) if c.chain == head.chain => {
                if head.seq != c.seq + 1 {
                    return Err(broken(format!(
                        "sequence number {} follows {} (a line was removed or reordered)",
                        head.seq, c.seq
                    )));
                }
                if head.prev != c.hash {
                    return Err(broken(
                        "prev does not match the hash of the line before (a line was removed, inserted or reordered)".into(),
                    ));
                }
            }
            _ => {
                if !seen.insert(head.chain.clone()) {
                    return Err(broken(format!(
                        "chain {} resumes after another chain began (lines reordered)",
                        head.chain
                    )));
                }
                if head.seq != 1 {
                    return Err(broken(format!(
                        "first record has sequence number {}, expected 1",
                        head.seq
                    )));
                }
                if head.prev != GENESIS {
                    return Err(broken(
                        "first record does not start the chain (lines removed before it)".into(),
                    ));
                }
                if let (None, Some(l)) = (&current, &head.prev_chain) {
                    return Err(broken(format!(
                        "this chain follows chain {} (ended at seq {}), which the log does not \
                         hold (records removed before it)",
                        l.chain, l.seq
                    )));
                }
                if let Some(c) = &current {
                    match &head.prev_chain {
                        Some(l) if l.chain == c.chain && l.seq == c.seq && l.hash == c.hash => {}
                        Some(l) => {
                            return Err(broken(format!(
                                "this chain says the one before ({}) ended at seq {}, but it \
                                 ends at seq {} of chain {} (records removed or reordered)",
                                l.chain, l.seq, c.seq, c.chain
                            )))
                        }
                        None => {
                            return Err(broken(
                                "a new chain that does not name where the one before it ended"
                                    .into(),
                            ))
                        }
                    }
                }
            }
        }
        current = Some(head);
        n += 1;
    }
    Ok(VerifyReport {
        records: n,
        head: current.map_or_else(|| GENESIS.to_owned(), |c| c.hash),
    })
}

/// Where a record was read: the input's index (in [`ChainVerifier::source`] order) and line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub source: usize,
    pub line: u64,
}

/// One problem in a chain, naming the sequence number it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The first sequence number concerned.
    pub seq: u64,
    pub what: String,
}

/// What verification found for one chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub chain: String,
    /// `namespace/pod_name pod_uid` of the pod that wrote it, as its records say.
    pub pod: String,
    /// Distinct records read.
    pub records: u64,
    /// The same record read more than once (a pipeline delivering twice): not a finding.
    pub duplicates: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash of the highest record read.
    pub head: String,
    pub findings: Vec<Finding>,
}

struct Entry {
    seq: u64,
    prev: Named,
    hash: Named,
    intact: bool,
    at: At,
}

#[derive(Default)]
struct ChainState {
    entries: Vec<Entry>,
    pod: String,
    prev_chain: Option<ChainLink>,
    findings: Vec<Finding>,
    /// The last seq read from each input and its line, to see records out of order.
    last_in_source: HashMap<usize, (u64, u64)>,
}

/// Collects records from many inputs and verifies each chain.
#[derive(Default)]
pub struct ChainVerifier {
    sources: Vec<String>,
    chains: BTreeMap<String, ChainState>,
    /// Lines that hold no audit record (other logs on the same stream, blank lines).
    pub skipped: u64,
    /// A chain may start after seq 1 (the input is a window, such as the local log after
    /// rotation): the records before its first are not reported missing.
    pub window: bool,
    /// Do not report records read out of sequence order within one input (an export from a
    /// store that does not keep the order of lines).
    pub any_order: bool,
    expect: Vec<(String, u64)>,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an input by name; its lines are then given with its index.
    pub fn source(&mut self, name: impl Into<String>) -> usize {
        self.sources.push(name.into());
        self.sources.len() - 1
    }

    /// The name of input `i`.
    pub fn source_name(&self, i: usize) -> &str {
        self.sources.get(i).map_or("?", String::as_str)
    }

    /// `chain` must reach `seq` (from a count kept outside the pod: the metric
    /// `keyward_audit_last_seq`, a Vault checkpoint, the stdout copy).
    pub fn expect(&mut self, chain: impl Into<String>, seq: u64) {
        self.expect.push((chain.into(), seq));
    }

    /// The chains seen so far that no other chain in the input names as its predecessor.
    pub fn newest_chains(&self) -> Vec<String> {
        let continued: HashSet<&str> = self
            .chains
            .values()
            .filter_map(|c| c.prev_chain.as_ref().map(|l| l.chain.as_str()))
            .collect();
        self.chains
            .keys()
            .filter(|k| !continued.contains(k.as_str()))
            .cloned()
            .collect()
    }

    /// Reads every line of `reader` as input `source`.
    pub fn read(&mut self, source: usize, reader: impl BufRead) -> std::io::Result<()> {
        each_line(reader, |n, text| {
            self.line(source, n, text);
        })
    }

    /// Takes one line of input `source`.
    pub fn line(&mut self, source: usize, line: u64, text: &str) {
        self.take(source, line, text);
    }

    /// Takes one line of input `source`; returns its record, if it holds one.
    pub(crate) fn take<'t>(
        &mut self,
        source: usize,
        line: u64,
        text: &'t str,
    ) -> Option<Parsed<'t>> {
        let Some(p) = parse_line(text) else {
            if !text.trim().is_empty() {
                self.skipped += 1;
            }
            return None;
        };
        let intact = p.intact();
        let id = p.chain.as_deref().unwrap_or_default();
        let chain = match self.chains.get_mut(id) {
            Some(c) => c,
            None => self.chains.entry(id.to_owned()).or_default(),
        };
        if chain.pod.is_empty() {
            if let Some(pod) = &p.pod {
                let [ns, name, uid] = pod.names();
                chain.pod = format!("{ns}/{name} {uid}").trim().to_owned();
            }
        }
        if p.seq == 1 && intact {
            chain.prev_chain.clone_from(&p.prev_chain);
        }
        let at = At { source, line };
        if !self.any_order {
            if let Some(&(last, last_line)) = chain.last_in_source.get(&source) {
                if p.seq < last {
                    chain.findings.push(Finding {
                        seq: p.seq,
                        what: format!(
                            "at {} line {line} comes after seq {last} at line {last_line} \
                             (records reordered)",
                            self.sources.get(source).map_or("?", String::as_str)
                        ),
                    });
                }
            }
            chain.last_in_source.insert(source, (p.seq, line));
        }
        chain.entries.push(Entry {
            seq: p.seq,
            prev: Named::new(&p.prev),
            hash: Named::new(&p.hash),
            intact,
            at,
        });
        Some(p)
    }

    fn place(&self, at: At) -> String {
        format!("{} line {}", self.source_name(at.source), at.line)
    }

    /// Verifies every chain read.
    pub fn finish(mut self) -> Vec<ChainReport> {
        let links: Vec<(String, ChainLink)> = self
            .chains
            .iter()
            .filter_map(|(id, c)| c.prev_chain.clone().map(|l| (id.clone(), l)))
            .collect();
        let mut reports = Vec::new();
        let chains = std::mem::take(&mut self.chains);
        for (id, mut c) in chains {
            c.entries.sort_by_key(|e| e.seq);
            let mut findings = std::mem::take(&mut c.findings);
            // Repeats of the same record are a pipeline's doing; different records under one
            // seq are not.
            let mut kept: Vec<Entry> = Vec::with_capacity(c.entries.len());
            let mut duplicates = 0;
            for e in c.entries {
                match kept.last() {
                    Some(k) if k.seq == e.seq && k.hash == e.hash && k.intact == e.intact => {
                        duplicates += 1;
                    }
                    Some(k) if k.seq == e.seq => findings.push(Finding {
                        seq: e.seq,
                        what: format!(
                            "two different records ({} and {})",
                            self.place(k.at),
                            self.place(e.at)
                        ),
                    }),
                    _ => kept.push(e),
                }
            }
            let first_seq = kept.first().map_or(0, |e| e.seq);
            let last_seq = kept.last().map_or(0, |e| e.seq);
            for e in &kept {
                if !e.intact {
                    findings.push(Finding {
                        seq: e.seq,
                        what: format!(
                            "content does not match its hash (edited) at {}",
                            self.place(e.at)
                        ),
                    });
                }
            }
            if let Some(first) = kept.first() {
                if first.seq == 0 {
                    findings.push(Finding {
                        seq: 0,
                        what: "sequence number 0 (chains start at 1)".into(),
                    });
                } else if first.seq == 1 {
                    if first.prev != Named::new(GENESIS) {
                        findings.push(Finding {
                            seq: 1,
                            what: "the first record's prev is not the chain's start".into(),
                        });
                    }
                } else if !self.window {
                    findings.push(Finding {
                        seq: 1,
                        what: missing(
                            1,
                            first.seq - 1,
                            &format!("before the first record read, at {}", self.place(first.at)),
                        ),
                    });
                }
            }
            for pair in kept.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if b.seq > a.seq + 1 {
                    findings.push(Finding {
                        seq: a.seq + 1,
                        what: missing(
                            a.seq + 1,
                            b.seq - 1,
                            &format!(
                                "removed or not collected: between {} and {}",
                                self.place(a.at),
                                self.place(b.at)
                            ),
                        ),
                    });
                } else if b.prev != a.hash {
                    findings.push(Finding {
                        seq: b.seq,
                        what: format!(
                            "prev does not match the hash of seq {} (a record was replaced) at {}",
                            a.seq,
                            self.place(b.at)
                        ),
                    });
                }
            }
            // Where the next chain says this one ended.
            for (next, link) in links.iter().filter(|(_, l)| l.chain == id) {
                match kept.iter().find(|e| e.seq == link.seq) {
                    _ if last_seq < link.seq => findings.push(Finding {
                        seq: last_seq + 1,
                        what: missing(
                            last_seq + 1,
                            link.seq,
                            &format!("cut off at the end: chain {next} began after seq {}", link.seq),
                        ),
                    }),
                    Some(e) if e.hash != Named::new(&link.hash) => findings.push(Finding {
                        seq: e.seq,
                        what: format!(
                            "hash differs from the head chain {next} recorded for it (the record was replaced)"
                        ),
                    }),
                    _ if last_seq > link.seq => findings.push(Finding {
                        seq: link.seq + 1,
                        what: format!(
                            "records after seq {}, where chain {next} says this chain ended",
                            link.seq
                        ),
                    }),
                    _ => {}
                }
            }
            for (_, want) in self.expect.iter().filter(|(c, _)| *c == id) {
                if last_seq < *want {
                    findings.push(Finding {
                        seq: last_seq + 1,
                        what: missing(
                            last_seq + 1,
                            *want,
                            &format!(
                                "cut off at the end: the chain ends at record {last_seq}, and \
                                 {want} were written: the last {} were cut off",
                                want - last_seq
                            ),
                        ),
                    });
                }
            }
            findings.sort_by_key(|f| f.seq);
            reports.push(ChainReport {
                chain: id,
                pod: c.pod,
                records: kept.len() as u64,
                duplicates,
                first_seq,
                last_seq,
                head: kept
                    .last()
                    .map_or_else(|| GENESIS.to_owned(), |e| e.hash.text()),
                findings,
            });
        }
        for (chain, want) in &self.expect {
            if !reports.iter().any(|r| &r.chain == chain) {
                reports.push(ChainReport {
                    chain: chain.clone(),
                    pod: String::new(),
                    records: 0,
                    duplicates: 0,
                    first_seq: 0,
                    last_seq: 0,
                    head: GENESIS.to_owned(),
                    findings: vec![Finding {
                        seq: 1,
                        what: missing(1, *want, "no record of this chain in the input"),
                    }],
                });
            }
        }
        reports
    }
}

/// [`record_hash`] of a record this line owns: the same hash, computed without copying the
/// record, and with the canonical text written directly when the record is in the common form
/// ([`jcs_simple`]); anything else goes through the JCS crate.
fn record_hash_fast(map: &mut Map<String, Value>) -> String {
    let hash = map.remove("hash");
    let mut text = String::with_capacity(512);
    let body = if jcs_simple(map, &mut text) {
        text
    } else {
        crate::canon::canonical(&Value::Object(map.clone()))
    };
    if let Some(h) = hash {
        map.insert("hash".into(), h);
    }
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()))
}

/// Writes the RFC 8785 text of `map` into `out` when every member name is ASCII (so sorting by
/// bytes is sorting by UTF-16 code units) and every number an integer (printed the same by
/// ECMAScript up to 2^53, and written so by the log; larger ones fall back); strings are
/// escaped as JCS prescribes. Returns false, with `out` unspecified, for anything else.
fn jcs_simple(map: &Map<String, Value>, out: &mut String) -> bool {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = std::fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn value(v: &Value, out: &mut String) -> bool {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => {
                const MAX_SAFE: u64 = (1 << 53) - 1;
                match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) if u <= MAX_SAFE => out.push_str(&u.to_string()),
                    (None, Some(i)) if i.unsigned_abs() <= MAX_SAFE => {
                        out.push_str(&i.to_string());
                    }
                    _ => return false,
                }
            }
            Value::String(s) => string(s, out),
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !value(x, out) {
                        return false;
                    }
                }
                out.push(']');
            }
            Value::Object(m) => return jcs_simple(m, out),
        }
        true
    }
    if !map.keys().all(|k| k.is_ascii()) {
        return false;
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(k, out);
        out.push(':');
        if !map.get(k).is_some_and(|v| value(v, out)) {
            return false;
        }
    }
    out.push('}');
    true
}

/// Calls `each` with every line of `reader` (without its `\n`) and its 1-based number, as
/// text: lines that are not UTF-8 with the invalid bytes replaced (U+FFFD). One buffer for all
/// lines.
pub(crate) fn each_line(
    mut reader: impl BufRead,
    mut each: impl FnMut(u64, &str),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        n += 1;
        match std::str::from_utf8(&buf) {
            Ok(text) => each(n, text),
            Err(_) => each(n, &String::from_utf8_lossy(&buf)),
        }
    }
}

fn missing(from: u64, to: u64, why: &str) -> String {
    if from == to {
        format!("seq {from} missing ({why})")
    } else {
        format!("seq {from}-{to} missing ({why})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditConfig, AuditLog, Decision, Record};

    fn log_at(path: &Path) -> AuditLog {
        AuditLog::open(AuditConfig {
            path: path.to_owned(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("open")
    }

    fn write(log: &AuditLog, from: usize, n: usize) {
        for i in from..from + n {
            let mut r = Record::new("secret.read", Decision::Allow);
            r.secret = Some(format!("s{i}"));
            log.record(&r).expect("write");
        }
    }

    fn sample(n: usize) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        write(&log_at(&path), 0, n);
        read_lines(&path)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn check(lines: &[String]) -> Result<VerifyReport, VerifyError> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        verify_reader(text.as_bytes())
    }

    fn reason(lines: &[String]) -> (u64, String) {
        match check(lines) {
            Err(VerifyError::Broken { line, reason }) => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    fn broken_line(lines: &[String]) -> u64 {
        reason(lines).0
    }

    #[test]
    fn the_fast_record_hash_is_the_canonical_hash() {
        let mut strings: Vec<String> = (0u32..0x80)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        strings.extend(
            [
                "",
                "\u{7f}",
                "\u{2028}\u{2029}",
                "é ü €",
                "\u{1f600}",
                "\u{fb33}",
                "\\\"/",
            ]
            .map(String::from),
        );
        let mut values: Vec<Value> = strings
            .iter()
            .map(|s| serde_json::json!({"s": s, "k": [s, {"x": s}]}))
            .collect();
        values.extend([
            serde_json::json!({"n": 0, "m": -1, "big": 9007199254740991_u64, "neg": -9007199254740991_i64}),
            serde_json::json!({"over": 9007199254740992_u64, "min": i64::MIN, "max": u64::MAX}),
            serde_json::json!({"f": 4.5, "e": 1e30, "t": true, "u": false, "z": null}),
            serde_json::json!({"b": {}, "a": [], "c": [[1, [2, {"y": null}]]], "B": 1, "_": 2, "1": 3}),
            serde_json::json!({"é": 1, "\u{20ac}": 2, "\r": 3, "\u{1f600}": 4, "\u{fb33}": 5}),
            serde_json::from_str(r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#).expect("RFC 8785 example"),
        ]);
        for line in sample(3) {
            values.push(serde_json::from_str(&line).expect("record"));
        }
        for v in values {
            let Value::Object(mut m) = v else {
                unreachable!("objects")
            };
            m.insert("hash".into(), "x".into());
            let want = record_hash(&m);
            let before = m.clone();
            assert_eq!(record_hash_fast(&mut m), want, "{before:?}");
            assert_eq!(m, before, "the record is given back whole");
        }
    }

    /// Lines the writer writes, with every kind of value a record holds: escapes, control
    /// characters, non-ASCII, a second chain's `prev_chain`, a pod, a caller, a summary.
    fn varied_lines() -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        for start in 0..2 {
            let log = log_at(&path);
            log.set_pod(crate::PodIdentity {
                namespace: "shop".into(),
                service_account: "sa \"x\"".into(),
                pod_name: "orders-\u{e9}".into(),
                pod_uid: format!("uid-{start}"),
            });
            let mut r = Record::new("secret.read", Decision::Deny).reason(
                "ctl \u{1} \u{8}\u{9}\u{a}\u{c}\u{d}\u{1f}\u{7f} \\ \" / \u{2028} \u{1f600} é",
            );
            r.secret = Some("db\"</script>".into());
            r.caller = Some(crate::Caller {
                pid: -3,
                uid: u32::MAX,
                gid: 0,
                comm: "a\u{0}b".into(),
                container: "app".into(),
                process_info: String::new(),
            });
            r.version = Some(9_007_199_254_740_991);
            r.summary = Some(crate::Summary {
                count: 0,
                from: "2026-12-01T00:00:00Z".into(),
                to: String::new(),
            });
            log.record(&r).expect("write");
            write(&log, 0, 2);
        }
        read_lines(&path)
    }

    /// `parse_line`'s fast path and the general way give the same record from `line`; returns
    /// whether the fast path read it.
    fn same_both_ways(line: &str) -> bool {
        let general = parse_line_general(line);
        let Some(w) = crate::written::written_record(line) else {
            return false;
        };
        let g = general.unwrap_or_else(|| panic!("read in place but not the general way: {line}"));
        assert_eq!(w.chain, g.chain, "{line}");
        assert_eq!(
            (w.seq, &w.prev, &w.hash),
            (g.seq, &g.prev, &g.hash),
            "{line}"
        );
        assert_eq!(
            w.prev_chain
                .and_then(|t| serde_json::from_str::<ChainLink>(t).ok()),
            g.prev_chain,
            "{line}"
        );
        let pod = w
            .pod
            .map(|t| serde_json::from_str::<Value>(t).expect("pod is JSON"));
        let g_pod = match g.pod {
            Some(PodMember::Value(v)) => Some(v),
            Some(PodMember::Text(t)) => Some(serde_json::from_str(t).expect("json")),
            None => None,
        };
        assert_eq!(pod, g_pod, "{line}");
        assert_eq!(hex::encode(w.content), hex::encode(g.content), "{line}");
        true
    }

    /// What `crate::written` promises: a line read in place gives the same record, chain
    /// members and hash as parsing it and canonicalising it through the JCS crate; the writer's
    /// lines are all read in place; and no change to a line (each byte changed, characters
    /// put in or taken out) makes the two ways disagree. The same for the local log's check
    /// (`verify_reader`): what it accepts without parsing, the full check accepts.
    #[test]
    fn the_written_form_reads_as_the_general_way() {
        let written = varied_lines();
        for l in &written {
            assert!(same_both_ways(l), "the writer's line is read in place: {l}");
            let prefixed = format!("2026-12-02T03:04:05.123456789Z stdout F {l}\r\n \t");
            assert!(same_both_ways(&prefixed), "{prefixed}");
        }
        let first = written[0].clone();
        let swap = |from: &str, to: &str| first.replacen(from, to, 1);
        let hash_at = first.rfind(",\"hash\"").expect("hash");
        let mut variants =
            vec![
            // Rewritten as a pipeline might: each goes the general way, to the same hash.
            first.replacen("{", "{ ", 1),
            swap("\\u0001", "\\u0001 "),
            swap("\\u001f", "\\u001F"),
            swap("\\b", "\\u0008"),
            swap("\\t", "\\u0009"),
            swap("\\n", "\\u000a"),
            swap("\\f", "\\u000c"),
            swap("\\r", "\\u000d"),
            swap("\\u0001", "\\u0001\\u0080"),
            swap("\"action\":\"secret.read\"", "\"action\":\"x\",\"action\":\"secret.read\""),
            swap("\"comm\":", "\"comm\":\"x\",\"comm\":"),
            // Member names sorted as escaped text or as UTF-8, not as JCS sorts them.
            swap("{\"action\"", "{\"Z\":1,\"\\n\":2,\"action\""),
            swap("\"comm\"", "\"\\n\":1,\"comm\""),
            format!(
                "{},\"zz\":{{\"\u{fb33}\":1,\"\u{1f600}\":2}}{}",
                &first[..hash_at],
                &first[hash_at..]
            ),
            // A member a pipeline keeps the line in, holding another record: that one is the
            // record (`extract_record` looks there first).
            swap(
                "\"pod\":",
                &format!(
                    "\"log\":{},\"pod\":",
                    serde_json::to_string(&written[1]).expect("quoted")
                ),
            ),
            swap("/", "\\/"),
            swap("é", "\\u00e9"),
            swap("\u{7f}", "\\u007f"),
            swap("\"seq\":1", "\"seq\":1.0"),
            swap("\"seq\":1", "\"seq\":1e0"),
            swap("\"seq\":1", "\"seq\":-1"),
            swap("\"seq\":1", "\"seq\":\"1\""),
            swap("\"seq\":1", "\"seq\":01"),
            swap("\"gid\":0", "\"gid\":-0"),
            swap("\"version\":9007199254740991", "\"version\":9007199254740992"),
            swap("\"version\":9007199254740991", "\"version\":-9007199254740991"),
            swap("\"version\":9007199254740991", "\"version\":12345678901234567890"),
            swap("\"action\"", "\"\\u0061ction\""),
            swap("\"action\"", "\"\u{e9}ction\""),
            swap("\"action\"", "\"zaction\""),
            swap("\"action\"", "\"caller\""),
            swap("\"action\"", "\"log\""),
            swap("\"action\"", "\"message\""),
            swap("\"chain\":", "\"chain\":7,\"chain_\":"),
            swap("\"prev\":", "\"prev\":7,\"prev_\":"),
            swap("\"pod\":{", "\"pod\":[{").replacen("},\"prev\"", "}],\"prev\"", 1),
            format!("{},\"hash\":\"x\"}}", &first[..hash_at]),
            format!("{},\"hash\":\"a\",\"hash\":\"b\"}}", &first[..hash_at]),
            format!("{},\"hash\":7}}", &first[..hash_at]),
            format!("{},\"hash\":\"{}\",\"z\":1}}", &first[..hash_at], "a".repeat(64)),
            format!("{{\"hash\":\"x\",{}", &first[1..]),
            format!("{first}x"),
            format!("{first} "),
            format!("{first}\r"),
            format!("{first}\u{b}"),
            format!("{first}}}"),
            format!("x{{{first}"),
            first.replacen("\"caller\":{", &format!("\"caller\":{}", "[".repeat(70)), 1),
            format!(
                "{{\"log\":{}}}",
                serde_json::to_string(&first).expect("quoted")
            ),
            r#"{"chain":"c","hash":"h","prev":"p","seq":1}"#.to_owned(),
            r#"{"chain":"c","prev":"p","seq":1,"hash":"h"}"#.to_owned(),
            r#"{"a":[],"b":{},"c":[true,false,null,{"d":[1,-2]}],"prev":"p","seq":0,"hash":"h"}"#
                .to_owned(),
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3],"prev":"p","seq":3,"hash":"h"}"#
                .to_owned(),
        ];
        // Every byte of each written line changed, a character put in or taken out.
        for l in &written {
            for at in 0..l.len() {
                let mut cut = l.clone().into_bytes();
                cut.remove(at);
                variants.push(String::from_utf8_lossy(&cut).into_owned());
                for mask in [0x01u8, 0x02, 0x08, 0x20, 0x40, 0x80] {
                    let mut b = l.clone().into_bytes();
                    b[at] ^= mask;
                    variants.push(String::from_utf8_lossy(&b).into_owned());
                }
                for c in [b' ', b'\\', b'"', b',', b'}', b'0', b'-', b'e'] {
                    let mut b = l.clone().into_bytes();
                    b.insert(at, c);
                    variants.push(String::from_utf8_lossy(&b).into_owned());
                }
            }
        }
        let mut read_in_place = 0;
        for l in &written {
            assert!(written_intact(l).is_some(), "the local log's own line: {l}");
        }
        for v in &variants {
            read_in_place += usize::from(same_both_ways(v));
            // The local log's check without parsing accepts only what the full check accepts.
            if let Some(h) = written_intact(v) {
                let full = checked_head(v).unwrap_or_else(|e| panic!("{e}: {v}"));
                assert_eq!(
                    (&h.chain, h.seq, &h.prev, &h.hash, &h.prev_chain),
                    (
                        &full.chain,
                        full.seq,
                        &full.prev,
                        &full.hash,
                        &full.prev_chain
                    ),
                    "{v}"
                );
            }
            // Whatever way it is read, the verifier takes the same record.
            assert_eq!(
                parse_line(v).map(|p| (p.seq, p.content)),
                parse_line_general(v).map(|p| (p.seq, p.content)),
                "{v}"
            );
        }
        // Some changes keep the writer's form (a letter changed): those are read in place,
        // and their hash no longer matches.
        assert!(read_in_place > 100, "{read_in_place}");
    }

    #[test]
    fn intact_log_verifies() {
        let lines = sample(5);
        let r = check(&lines).expect("valid");
        assert_eq!(r.records, 5);
        let e = check(&[]).expect("empty");
        assert_eq!((e.records, e.head.as_str()), (0, GENESIS));
    }

    #[test]
    fn every_edit_is_found_at_its_line() {
        let lines = sample(5);
        for i in 0..5 {
            let mut l = lines.clone();
            l[i] = l[i].replace(&format!("\"s{i}\""), "\"sX\"");
            assert_eq!(broken_line(&l), i as u64 + 1, "edit of line {i}");
        }
    }

    #[test]
    fn a_rewritten_line_with_the_same_content_is_found_in_the_local_log() {
        let lines = sample(2);
        let mut l = lines.clone();
        l[1] = l[1].replacen("{", "{ ", 1);
        let (line, why) = reason(&l);
        assert_eq!(line, 2);
        assert!(why.contains("canonical form"), "{why}");
    }

    /// What `fuzz/fuzz_targets/audit_verify.rs` claims, exhaustively on a small log: any byte of
    /// any line changed is found, even where the value parses back the same (`\u001f` written
    /// `\u001F`): the local log must be exactly the canonical text.
    #[test]
    fn every_changed_byte_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let log = log_at(&path);
        let mut r = Record::new("secret.read", Decision::Allow);
        r.reason = Some("ctl \u{1f} é /".into());
        log.record(&r).expect("write");
        write(&log, 0, 2);
        drop(log);
        let lines = read_lines(&path);
        assert!(lines[0].contains("\\u001f"), "{}", lines[0]);
        for i in 0..lines.len() {
            for at in 0..lines[i].len() {
                for mask in [0x01u8, 0x20, 0x80] {
                    let mut bytes = lines[i].clone().into_bytes();
                    bytes[at] ^= mask;
                    let mut l = lines.clone();
                    l[i] = String::from_utf8_lossy(&bytes).into_owned();
                    if l[i] == lines[i] {
                        continue;
                    }
                    assert!(
                        check(&l).is_err(),
                        "line {i} byte {at} ^ {mask:#x} not found: {}",
                        l[i]
                    );
                }
            }
        }
    }

    #[test]
    fn every_deletion_is_found() {
        let lines = sample(5);
        for i in 0..4 {
            let mut l = lines.clone();
            l.remove(i);
            assert_eq!(broken_line(&l), i as u64 + 1, "deletion of line {i}");
        }
    }

    #[test]
    fn reordering_is_found() {
        let lines = sample(5);
        for i in 0..4 {
            let mut l = lines.clone();
            l.swap(i, i + 1);
            assert_eq!(broken_line(&l), i as u64 + 1, "swap at {i}");
        }
    }

    #[test]
    fn rehashing_an_edited_line_still_breaks_the_next_one() {
        let lines = sample(3);
        let mut l = lines.clone();
        let mut m: Map<String, Value> = serde_json::from_str(&l[1]).expect("json");
        m.insert("secret".into(), "sX".into());
        let h = record_hash(&m);
        l[1] = line_of(&canonical_without_hash(&m), &h);
        assert_eq!(broken_line(&l), 3);
    }

    #[test]
    fn a_restart_begins_a_new_chain_linked_to_the_last_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        write(&log_at(&path), 0, 2);
        write(&log_at(&path), 2, 2);
        let lines = read_lines(&path);
        let r = check(&lines).expect("two linked chains verify");
        assert_eq!(r.records, 4);
        let v: Value = serde_json::from_str(&lines[2]).expect("json");
        let first: Value = serde_json::from_str(&lines[1]).expect("json");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], GENESIS);
        assert_eq!(v["prev_chain"]["chain"], first["chain"]);
        assert_eq!(v["prev_chain"]["seq"], 2);
        assert_eq!(v["prev_chain"]["hash"], first["hash"]);
        assert_ne!(v["chain"], first["chain"]);
        // The first chain's last record removed: the second chain's link shows it.
        let mut l = lines.clone();
        l.remove(1);
        let (line, why) = reason(&l);
        assert_eq!(line, 2);
        assert!(why.contains("ended at seq 2"), "{why}");
        // The whole first chain removed: the second names a chain the log does not hold.
        let (line, why) = reason(&lines[2..]);
        assert_eq!(line, 1);
        assert!(why.contains("does not hold"), "{why}");
    }

    #[test]
    fn empty_non_utf8_and_garbage_lines_are_named() {
        let lines = sample(2);
        let mut l = lines.clone();
        l.insert(1, String::new());
        assert_eq!(reason(&l), (2, "empty line".to_owned()));
        let mut bytes = format!("{}\n", lines[0]).into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        match verify_reader(bytes.as_slice()) {
            Err(VerifyError::Broken { line: 2, reason }) => assert_eq!(reason, "not UTF-8"),
            other => panic!("{other:?}"),
        }
        let mut l = lines.clone();
        l.insert(1, "not json".into());
        let (line, why) = reason(&l);
        assert_eq!(line, 2);
        assert!(why.contains("not an audit record"), "{why}");
    }

    fn verify_many(inputs: &[&str], window: bool) -> Vec<ChainReport> {
        let mut v = ChainVerifier::new();
        v.window = window;
        for (i, text) in inputs.iter().enumerate() {
            let s = v.source(format!("in{i}"));
            v.read(s, text.as_bytes()).expect("read");
        }
        v.finish()
    }

    #[test]
    fn the_chain_verifier_names_gaps_breaks_and_duplicates() {
        let lines = sample(6);
        let all = lines.join("\n");
        let r = verify_many(&[&all], false);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].records, r[0].first_seq, r[0].last_seq), (6, 1, 6));
        assert!(r[0].findings.is_empty(), "{:?}", r[0].findings);

        // Split across two inputs, one repeated: still whole.
        let a = lines[..4].join("\n");
        let b = lines[2..].join("\n");
        let r = verify_many(&[&a, &b], false);
        assert!(r[0].findings.is_empty(), "{:?}", r[0].findings);
        assert_eq!(r[0].duplicates, 2);

        let without = |skip: &[usize]| {
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let r = verify_many(&[&without(&[2, 3])], false);
        assert_eq!(r[0].findings.len(), 1, "{:?}", r[0].findings);
        assert_eq!(r[0].findings[0].seq, 3);
        assert!(r[0].findings[0].what.starts_with("seq 3-4 missing"));
        let r = verify_many(&[&without(&[0])], false);
        assert!(r[0].findings[0].what.starts_with("seq 1 missing"));
        assert!(
            verify_many(&[&without(&[0])], true)[0].findings.is_empty(),
            "a window may start later"
        );
    }
}
