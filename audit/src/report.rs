//! `keyward audit report`: one self-contained HTML page for a reviewer — per-secret access over
//! time, denials, top callers per container, chains with gaps or hash breaks (the findings of
//! [`ChainVerifier`](crate::ChainVerifier)) and checkpoint agreement, drawn as inline SVG.
//!
//! Pure: records and findings in ([`ReportData`]), an HTML string out ([`render`]). The page
//! loads nothing (no script, no stylesheet, font or image from elsewhere; a Content Security
//! Policy of `default-src 'none'` says so to the browser), and every text that comes from a
//! record — secret, process and pod names, reasons, chain ids — is escaped twice over: control
//! characters and bidirectional overrides as visible `\u{..}` escapes ([`printable`]), then
//! HTML's special characters as entities, so a name like `<script>` is shown, never run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;

use serde_json::{Map, Value};

use crate::checkpoints::{ChainVerdict, CheckpointArgs, Seen};
use crate::cli::printable;
use crate::ChainReport;

/// Time buckets of the per-secret charts.
pub const BUCKETS: usize = 48;
/// Secrets drawn (the most accessed); the others are counted in one line.
pub const MAX_SECRETS: usize = 60;
/// Denial rows shown (the latest); the others are counted.
pub const MAX_DENIALS: usize = 500;
/// Callers listed per container.
pub const TOP_CALLERS: usize = 10;

/// One denial, as shown in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub time: String,
    pub pod: String,
    pub container: String,
    pub caller: String,
    pub action: String,
    pub secret: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
struct SecretStats {
    reads: u64,
    denied: u64,
    /// Other records naming the secret (Vault fetches, renewals...; a summary counts its
    /// repeats).
    other: u64,
    /// (time in µs since the epoch, denied) of each read or denial with a parseable time.
    times: Vec<(i64, bool)>,
}

#[derive(Debug, Default, Clone)]
struct CallerStats {
    records: u64,
    denied: u64,
}

/// Everything the page shows, gathered from the records (one pass, bounded per record) and
/// from verification.
#[derive(Debug, Default)]
pub struct ReportData {
    /// Audit records read.
    pub records: u64,
    /// Lines that held no audit record.
    pub skipped: u64,
    /// The inputs' names, as given.
    pub inputs: Vec<String>,
    secrets: BTreeMap<String, SecretStats>,
    denials: Vec<Denial>,
    denials_total: u64,
    /// (pod, container) -> caller -> counts.
    callers: BTreeMap<(String, String), BTreeMap<String, CallerStats>>,
    first_us: Option<i64>,
    last_us: Option<i64>,
    /// The verify engine's per-chain reports (set by [`ReportData::chains`]).
    pub chains: Vec<ChainReport>,
    /// Per chain, the Vault checkpoints compared with the records read (the verdicts of
    /// `keyward audit verify --checkpoints`); `None`: no checkpoints were asked for.
    pub checkpoints: Option<Vec<ChainVerdict>>,
}

fn micros(t: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

impl ReportData {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one line of input (a record, or a record in a pipeline's envelope; other lines
    /// are counted as skipped).
    pub fn line(&mut self, text: &str) {
        match crate::extract_record(text) {
            Some(m) => self.record(&m),
            None if !text.trim().is_empty() => self.skipped += 1,
            None => {}
        }
    }

    /// Reads every line of `reader`.
    pub fn read(&mut self, reader: impl BufRead) -> std::io::Result<()> {
        for line in reader.split(b'\n') {
            self.line(&String::from_utf8_lossy(&line?));
        }
        Ok(())
    }

    /// Takes one record.
    pub fn record(&mut self, m: &Map<String, Value>) {
        let s = |p: &str| {
            let mut v = Some(m);
            let mut last = None;
            for part in p.split('/') {
                last = v.and_then(|o| o.get(part));
                v = last.and_then(Value::as_object);
            }
            last.and_then(Value::as_str).unwrap_or_default().to_owned()
        };
        self.records += 1;
        let action = s("action");
        let decision = s("decision");
        let denied = decision == "deny";
        let time = s("time");
        let us = micros(&time);
        if let Some(t) = us {
            self.first_us = Some(self.first_us.map_or(t, |f| f.min(t)));
            self.last_us = Some(self.last_us.map_or(t, |l| l.max(t)));
        }
        let repeats = m
            .get("summary")
            .and_then(|x| x.get("count"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let secret = s("secret");
        if !secret.is_empty() {
            let st = self.secrets.entry(secret.clone()).or_default();
            if denied {
                st.denied += 1;
            } else if action == "secret.read" {
                st.reads += 1;
            } else {
                st.other += 1 + repeats;
            }
            if denied || action == "secret.read" {
                if let Some(t) = us {
                    st.times.push((t, denied));
                }
            }
        }
        let pod = {
            let (ns, name) = (s("pod/namespace"), s("pod/pod_name"));
            if ns.is_empty() && name.is_empty() {
                String::new()
            } else {
                format!("{ns}/{name}")
            }
        };
        let container = {
            let c = s("caller/container");
            if c.is_empty() {
                s("container")
            } else {
                c
            }
        };
        let caller = if let Some(c) = m.get("caller") {
            let uid = c.get("uid").map(Value::to_string).unwrap_or_default();
            let comm = c.get("comm").and_then(Value::as_str).unwrap_or_default();
            if comm.is_empty() {
                format!("uid {uid}")
            } else {
                format!("uid {uid} {comm}")
            }
        } else if m.get("peer").is_some() {
            let id = s("peer/spiffe_id");
            if id.is_empty() {
                s("peer/addr")
            } else {
                id
            }
        } else {
            String::new()
        };
        if !caller.is_empty() {
            let st = self
                .callers
                .entry((pod.clone(), container.clone()))
                .or_default()
                .entry(caller.clone())
                .or_default();
            st.records += 1;
            if denied {
                st.denied += 1;
            }
        }
        if denied {
            self.denials_total += 1;
            self.denials.push(Denial {
                time,
                pod,
                container,
                caller,
                action,
                secret,
                reason: s("reason"),
            });
            // Keep the latest: drop the earliest half once over twice the limit.
            if self.denials.len() >= 2 * MAX_DENIALS {
                self.denials.sort_by(|a, b| a.time.cmp(&b.time));
                self.denials.drain(..MAX_DENIALS);
            }
        }
    }
}

/// Text from a record, safe inside HTML text and attribute values.
pub fn esc(s: &str) -> String {
    let shown = printable(s);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The first `n` characters (record text: never cut inside a character).
fn prefix(h: &str, n: usize) -> &str {
    h.char_indices().nth(n).map_or(h, |(i, _)| &h[..i])
}

fn short(h: &str) -> &str {
    prefix(h, 16)
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:2px 8px;\
text-align:left;vertical-align:top}th{background:#f3f4f6}td.n{text-align:right}\
.bad{color:#b42318;font-weight:600}.ok{color:#067647;font-weight:600}\
.muted{color:#667085}svg{display:block}code{font-family:monospace}\
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}";

/// The page.
pub fn render(data: &ReportData, generated: &str) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let findings: usize = data.chains.iter().map(|c| c.findings.len()).sum();
    let cp_bad: usize = data
        .checkpoints
        .as_ref()
        .map_or(0, |c| c.iter().map(|v| v.findings.len()).sum());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\
         <title>keyward audit report</title><style>{STYLE}</style></head><body>\n\
         <h1>keyward audit report</h1>\n<p id=\"summary\">{} records in {} chains from {} \
         input{}; {} line{} held no record. Generated {}.</p>\n",
        data.records,
        data.chains.len(),
        data.inputs.len(),
        if data.inputs.len() == 1 { "" } else { "s" },
        data.skipped,
        if data.skipped == 1 { "" } else { "s" },
        esc(generated),
    );
    let _ = writeln!(
        h,
        "<p id=\"verdict\" class=\"{}\">{}</p>",
        if findings + cp_bad == 0 { "ok" } else { "bad" },
        if findings + cp_bad == 0 {
            "Chains intact.".to_owned()
        } else {
            format!(
                "{findings} finding{} in {} chain{}; {cp_bad} checkpoint finding{}.",
                if findings == 1 { "" } else { "s" },
                data.chains
                    .iter()
                    .filter(|c| !c.findings.is_empty())
                    .count(),
                if data.chains.len() == 1 { "" } else { "s" },
                if cp_bad == 1 { "" } else { "s" },
            )
        }
    );
    if !data.inputs.is_empty() {
        h.push_str("<p class=\"muted\">Inputs: ");
        for (i, name) in data.inputs.iter().enumerate() {
            if i > 0 {
                h.push_str(", ");
            }
            let _ = write!(h, "<code>{}</code>", esc(name));
        }
        h.push_str("</p>\n");
    }
    chains_section(&mut h, data);
    checkpoints_section(&mut h, data);
    secrets_section(&mut h, data);
    denials_section(&mut h, data);
    callers_section(&mut h, data);
    h.push_str("</body></html>\n");
    h
}

fn chains_section(h: &mut String, data: &ReportData) {
    h.push_str("<h2 id=\"chains\">Chains</h2>\n");
    if data.chains.is_empty() {
        h.push_str("<p>No chains in the input.</p>\n");
        return;
    }
    h.push_str(
        "<p class=\"muted\">One bar per chain, from seq 1 to its last record read; red marks are \
         findings (gaps, hash breaks, reordering) at their sequence number.</p>\n",
    );
    let max_seq = data
        .chains
        .iter()
        .map(|c| c.last_seq)
        .max()
        .unwrap_or(1)
        .max(1);
    let (w, row) = (900.0_f64, 18.0_f64);
    let height = row * data.chains.len() as f64 + 4.0;
    let _ = writeln!(
        h,
        "<svg id=\"chain-chart\" width=\"{w}\" height=\"{height}\" role=\"img\" \
         aria-label=\"chains\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for (i, c) in data.chains.iter().enumerate() {
        let y = row * i as f64 + 2.0;
        let x = |seq: u64| w * (seq.saturating_sub(1)) as f64 / max_seq as f64;
        let bar_w = (x(c.last_seq + 1) - x(c.first_seq.max(1))).max(1.0);
        let fill = if c.findings.is_empty() {
            "#2e90fa"
        } else {
            "#f79009"
        };
        let _ = writeln!(
            h,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{fill}\">\
             <title>{} {}: seq {}-{}</title></rect>",
            x(c.first_seq.max(1)),
            row - 6.0,
            esc(short(&c.chain)),
            esc(&c.pod),
            c.first_seq,
            c.last_seq
        );
        let label_x = (x(c.first_seq.max(1)) + bar_w + 4.0).min(w - 120.0);
        let _ = writeln!(
            h,
            "<text x=\"{label_x:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#344054\">{} {}</text>",
            y + row - 8.0,
            esc(prefix(&c.chain, 8)),
            esc(&c.pod)
        );
        for f in &c.findings {
            let _ = writeln!(
                h,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"3\" height=\"{row:.1}\" fill=\"#d92d20\">\
                 <title>seq {}: {}</title></rect>",
                x(f.seq.max(1)).min(w - 3.0),
                y - 2.0,
                f.seq,
                esc(&f.what)
            );
        }
    }
    h.push_str("</svg>\n");
    h.push_str(
        "<table id=\"chain-table\"><thead><tr><th>chain</th><th>pod</th><th>records</th>\
         <th>seq</th><th>repeated</th><th>head</th><th>findings</th></tr></thead><tbody>\n",
    );
    for c in &data.chains {
        let _ = write!(
            h,
            "<tr class=\"chain {}\" data-chain=\"{}\"><td><code>{}</code></td><td>{}</td>\
             <td class=\"n\">{}</td><td>{}-{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td>",
            if c.findings.is_empty() { "intact" } else { "broken" },
            esc(&c.chain),
            esc(&c.chain),
            if c.pod.is_empty() {
                "<span class=\"muted\">pod unknown</span>".to_owned()
            } else {
                esc(&c.pod)
            },
            c.records,
            c.first_seq,
            c.last_seq,
            c.duplicates,
            esc(short(&c.head)),
        );
        if c.findings.is_empty() {
            h.push_str("<span class=\"ok\">intact</span>");
        } else {
            h.push_str("<ul>");
            for f in &c.findings {
                let _ = write!(
                    h,
                    "<li class=\"finding bad\">seq {}: {}</li>",
                    f.seq,
                    esc(&f.what)
                );
            }
            h.push_str("</ul>");
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</tbody></table>\n");
}

fn checkpoints_section(h: &mut String, data: &ReportData) {
    h.push_str("<h2 id=\"checkpoints\">Vault checkpoints</h2>\n");
    let Some(verdicts) = &data.checkpoints else {
        h.push_str(
            "<p id=\"no-checkpoints\">No checkpoints given: the chains above were checked \
             against each other only. A consistent rewrite of a whole chain is detected only \
             against the checkpoints the sidecars wrote to Vault (<code>--checkpoints</code>).\
             </p>\n",
        );
        return;
    };
    if verdicts.is_empty() {
        h.push_str("<p id=\"checkpoint-none\">No chains to compare.</p>\n");
        return;
    }
    h.push_str(
        "<p class=\"muted\">Per chain: the last checkpoint its sidecar wrote to Vault (the \
         highest seq, its head hash, the KV version and when Vault stored it), the last one the \
         records read agree with, and whether the log agrees with every checkpoint \
         (the same comparison as <code>keyward audit verify --checkpoints</code>).</p>\n\
         <table id=\"checkpoint-table\"><thead><tr><th>chain</th><th>pod</th>\
         <th>last checkpoint: seq</th><th>head</th><th>version, stored</th>\
         <th>anchored up to</th><th>log agrees</th></tr></thead><tbody>\n",
    );
    for v in verdicts {
        let agrees = v.findings.is_empty();
        let _ = write!(
            h,
            "<tr class=\"checkpoint {}\" data-chain=\"{}\"><td><code>{}</code></td><td>{}</td>",
            if agrees { "agrees" } else { "mismatch" },
            esc(&v.chain),
            esc(&v.chain),
            esc(&v.pod),
        );
        match &v.last {
            Some(c) => {
                let _ = write!(
                    h,
                    "<td class=\"n last-seq\">{}</td><td><code class=\"last-head\">{}</code></td>\
                     <td>{} ({})</td>",
                    c.seq,
                    esc(short(&c.head)),
                    c.version,
                    esc(&c.created)
                );
            }
            None => h.push_str(
                "<td class=\"n last-seq\"><span class=\"muted\">none</span></td><td></td><td></td>",
            ),
        }
        match &v.anchored {
            Some(a) => {
                let _ = write!(h, "<td class=\"n anchored\">{}</td>", a.seq);
            }
            None => h.push_str("<td class=\"n anchored\"><span class=\"muted\">-</span></td>"),
        }
        h.push_str("<td>");
        if agrees {
            h.push_str("<span class=\"ok\">yes</span>");
        } else {
            h.push_str("<span class=\"bad\">no</span>");
        }
        if !v.findings.is_empty() || !v.notes.is_empty() {
            h.push_str("<ul>");
            for f in &v.findings {
                let _ = write!(h, "<li class=\"checkpoint-finding bad\">{}</li>", esc(f));
            }
            for n in &v.notes {
                let _ = write!(h, "<li class=\"checkpoint-note muted\">{}</li>", esc(n));
            }
            h.push_str("</ul>");
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</tbody></table>\n");
}

fn secrets_section(h: &mut String, data: &ReportData) {
    h.push_str("<h2 id=\"secrets\">Secrets: access over time</h2>\n");
    if data.secrets.is_empty() {
        h.push_str("<p>No record names a secret.</p>\n");
        return;
    }
    let (first, last) = (
        data.first_us.unwrap_or(0),
        data.last_us.unwrap_or(0).max(data.first_us.unwrap_or(0)),
    );
    let span = (last - first).max(1);
    let _ = writeln!(
        h,
        "<p class=\"muted\">App reads (<code>secret.read</code>) and denials per secret, in {BUCKETS} \
         intervals from {} to {}.<span class=\"legend\"><span style=\"background:#2e90fa\"></span>\
         read<span style=\"background:#d92d20\"></span>denied</span></p>",
        esc(&rfc3339(first)),
        esc(&rfc3339(last))
    );
    let mut order: Vec<(&String, &SecretStats)> = data.secrets.iter().collect();
    order.sort_by(|a, b| {
        (b.1.reads + b.1.denied + b.1.other)
            .cmp(&(a.1.reads + a.1.denied + a.1.other))
            .then(a.0.cmp(b.0))
    });
    h.push_str(
        "<table id=\"secret-table\"><thead><tr><th>secret</th><th>reads</th><th>denied</th>\
         <th>other records</th><th>over time</th></tr></thead><tbody>\n",
    );
    let (w, ht) = (BUCKETS as f64 * 6.0, 28.0_f64);
    for (name, st) in order.iter().take(MAX_SECRETS) {
        let mut buckets = [(0u64, 0u64); BUCKETS];
        for &(t, denied) in &st.times {
            let i = (i128::from(t - first) * BUCKETS as i128 / i128::from(span + 1)) as usize;
            let b = &mut buckets[i.min(BUCKETS - 1)];
            if denied {
                b.1 += 1;
            } else {
                b.0 += 1;
            }
        }
        let peak = buckets.iter().map(|b| b.0 + b.1).max().unwrap_or(0).max(1);
        let _ = write!(
            h,
            "<tr class=\"secret\" data-secret=\"{}\"><td class=\"name\">{}</td>\
             <td class=\"n reads\">{}</td><td class=\"n denied\">{}</td><td class=\"n other\">{}</td>\
             <td><svg class=\"spark\" width=\"{w}\" height=\"{ht}\" role=\"img\" \
             aria-label=\"reads over time\" xmlns=\"http://www.w3.org/2000/svg\">",
            esc(name),
            esc(name),
            st.reads,
            st.denied,
            st.other,
        );
        for (i, &(r, d)) in buckets.iter().enumerate() {
            let x = i as f64 * 6.0;
            let hr = ht * r as f64 / peak as f64;
            let hd = ht * d as f64 / peak as f64;
            if r > 0 {
                let _ = write!(
                    h,
                    "<rect x=\"{x}\" y=\"{:.1}\" width=\"5\" height=\"{hr:.1}\" fill=\"#2e90fa\">\
                     <title>{r} reads</title></rect>",
                    ht - hr
                );
            }
            if d > 0 {
                let _ = write!(
                    h,
                    "<rect x=\"{x}\" y=\"{:.1}\" width=\"5\" height=\"{hd:.1}\" fill=\"#d92d20\">\
                     <title>{d} denied</title></rect>",
                    ht - hr - hd
                );
            }
        }
        h.push_str("</svg></td></tr>\n");
    }
    h.push_str("</tbody></table>\n");
    if order.len() > MAX_SECRETS {
        let _ = writeln!(
            h,
            "<p class=\"muted\">{} more secrets not drawn.</p>",
            order.len() - MAX_SECRETS
        );
    }
}

fn denials_section(h: &mut String, data: &ReportData) {
    let _ = writeln!(
        h,
        "<h2 id=\"denials\">Denials</h2>\n<p id=\"denial-count\">{} denial{}.</p>",
        data.denials_total,
        if data.denials_total == 1 { "" } else { "s" }
    );
    if data.denials.is_empty() {
        return;
    }
    let mut rows = data.denials.clone();
    rows.sort_by(|a, b| b.time.cmp(&a.time));
    rows.truncate(MAX_DENIALS);
    if data.denials_total > rows.len() as u64 {
        let _ = writeln!(h, "<p class=\"muted\">The latest {} shown.</p>", rows.len());
    }
    h.push_str(
        "<table id=\"denial-table\"><thead><tr><th>time</th><th>pod</th><th>container</th>\
         <th>caller</th><th>action</th><th>secret</th><th>reason</th></tr></thead><tbody>\n",
    );
    for d in &rows {
        let _ = writeln!(
            h,
            "<tr class=\"denial\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"secret\">{}</td><td class=\"reason\">{}</td></tr>",
            esc(&d.time),
            esc(&d.pod),
            esc(&d.container),
            esc(&d.caller),
            esc(&d.action),
            esc(&d.secret),
            esc(&d.reason)
        );
    }
    h.push_str("</tbody></table>\n");
}

fn callers_section(h: &mut String, data: &ReportData) {
    h.push_str("<h2 id=\"callers\">Top callers per container</h2>\n");
    if data.callers.is_empty() {
        h.push_str("<p>No record names a caller.</p>\n");
        return;
    }
    for ((pod, container), callers) in &data.callers {
        let mut top: Vec<(&String, &CallerStats)> = callers.iter().collect();
        top.sort_by(|a, b| b.1.records.cmp(&a.1.records).then(a.0.cmp(b.0)));
        let peak = top.first().map_or(1, |t| t.1.records.max(1));
        let _ = writeln!(
            h,
            "<h3 class=\"container\">{} <span class=\"muted\">container</span> {}</h3>",
            if pod.is_empty() {
                "pod unknown".to_owned()
            } else {
                esc(pod)
            },
            if container.is_empty() {
                "<span class=\"muted\">not named</span>".to_owned()
            } else {
                esc(container)
            }
        );
        h.push_str(
            "<table class=\"callers\"><thead><tr><th>caller</th><th>records</th><th>denied</th>\
             <th></th></tr></thead><tbody>\n",
        );
        for (name, st) in top.iter().take(TOP_CALLERS) {
            let bw = 200.0 * st.records as f64 / peak as f64;
            let dw = 200.0 * st.denied as f64 / peak as f64;
            let _ = writeln!(
                h,
                "<tr class=\"caller\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td><svg width=\"200\" height=\"12\" xmlns=\"http://www.w3.org/2000/svg\">\
                 <rect width=\"{bw:.1}\" height=\"12\" fill=\"#2e90fa\"></rect>\
                 <rect width=\"{dw:.1}\" height=\"12\" fill=\"#d92d20\"></rect></svg></td></tr>",
                esc(name),
                st.records,
                st.denied
            );
        }
        h.push_str("</tbody></table>\n");
        if top.len() > TOP_CALLERS {
            let _ = writeln!(
                h,
                "<p class=\"muted\">{} more callers.</p>",
                top.len() - TOP_CALLERS
            );
        }
    }
}

/// Runs `keyward audit report`: reads the inputs once, verifies the chains with the verify
/// engine, and writes the page to `out` (stdout when `None`). Exit 0 once the page is written,
/// whatever it shows (it says what was found); 1 when an input cannot be read or the page
/// cannot be written.
pub fn run(
    files: &[std::path::PathBuf],
    out: Option<&std::path::Path>,
    window: bool,
    any_order: bool,
    checkpoints: &CheckpointArgs,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut v = crate::ChainVerifier::new();
    v.window = window;
    v.any_order = any_order;
    let mut data = ReportData::new();
    let mut seen = Seen::default();
    let read = crate::cli::read_inputs(files, |name, reader| {
        let s = v.source(name.clone());
        data.inputs.push(name);
        crate::verify::each_line(reader, |n, text| {
            if let Some(p) = v.take(s, n, text) {
                if checkpoints.checkpoints {
                    seen.record(&p);
                }
            }
            data.line(text);
        })
    });
    if let Err(e) = read {
        eprintln!("FAILED: {e}");
        return ExitCode::FAILURE;
    }
    data.chains = v.finish();
    if checkpoints.checkpoints {
        // Asked for and not read: no page that could pass for one checked against Vault.
        match crate::checkpoints::verdicts(checkpoints, &seen, window) {
            Ok(verdicts) => data.checkpoints = Some(verdicts),
            Err(e) => {
                eprintln!("FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let html = render(&data, &now);
    let written = match out {
        Some(p) => std::fs::write(p, html.as_bytes()).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(html.as_bytes())
                .map_err(|e| format!("stdout: {e}"))
        }
    };
    if let Err(e) = written {
        eprintln!("FAILED: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    let findings: usize = data.chains.iter().map(|c| c.findings.len()).sum();
    let cp = data.checkpoints.as_ref().map_or(String::new(), |c| {
        let n: usize = c.iter().map(|v| v.findings.len()).sum();
        format!(", {n} checkpoint finding{}", if n == 1 { "" } else { "s" })
    });
    eprintln!(
        "report: {} records in {} chains, {} finding{}{cp}, {} denial{}{}",
        data.records,
        data.chains.len(),
        findings,
        if findings == 1 { "" } else { "s" },
        data.denials_total,
        if data.denials_total == 1 { "" } else { "s" },
        out.map(|p| format!(" -> {}", p.display()))
            .unwrap_or_default()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Finding;

    fn rec(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn ids_are_shortened_without_cutting_a_character() {
        assert_eq!(short("0123456789abcdef0123"), "0123456789abcdef");
        assert_eq!(prefix("ééééé", 2), "éé");
        assert_eq!(prefix("ab", 8), "ab");
        let mut d = ReportData::new();
        d.chains.push(ChainReport {
            chain: "é".repeat(20),
            pod: String::new(),
            records: 1,
            duplicates: 0,
            first_seq: 1,
            last_seq: 1,
            head: "é".repeat(40),
            findings: vec![],
        });
        assert!(render(&d, "now").contains(&"é".repeat(16)));
    }

    #[test]
    fn record_text_is_escaped_in_html() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("a\u{202e}b\n"), "a\\u{202e}b\\u{a}");
    }

    #[test]
    fn names_with_markup_render_as_text_everywhere() {
        let canary = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
        let mut d = ReportData::new();
        d.record(&rec(serde_json::json!({
            "time": "2026-12-01T00:00:00Z", "action": "secret.read", "decision": "deny",
            "secret": canary, "reason": canary,
            "pod": {"namespace": canary, "pod_name": "p"},
            "caller": {"uid": 1, "pid": 0, "gid": 1, "comm": canary, "container": canary},
        })));
        d.chains.push(ChainReport {
            chain: canary.into(),
            pod: canary.into(),
            records: 1,
            duplicates: 0,
            first_seq: 2,
            last_seq: 2,
            head: canary.into(),
            findings: vec![Finding {
                seq: 1,
                what: canary.into(),
            }],
        });
        d.inputs.push(canary.into());
        let cp = crate::checkpoints::Checkpoint {
            version: 1,
            created: canary.into(),
            chain: canary.into(),
            seq: 1,
            head: canary.into(),
            time: canary.into(),
        };
        d.checkpoints = Some(vec![ChainVerdict {
            chain: canary.into(),
            pod: canary.into(),
            last: Some(cp.clone()),
            anchored: Some(cp),
            findings: vec![canary.into()],
            notes: vec![canary.into()],
        }]);
        let html = render(&d, canary);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;document.title=&#39;pwned&#39;"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let mut d = ReportData::new();
        d.line(r#"{"time":"2026-12-01T00:00:00Z","action":"secret.read","decision":"allow","secret":"db","seq":1,"prev":"0","hash":"h","caller":{"uid":1}}"#);
        let html = render(&d, "now");
        for bad in ["src=", "href=", "@import", "url(", "<script", "<link"] {
            assert!(!html.contains(bad), "{bad} in the page");
        }
        assert!(html.contains("default-src 'none'"));
    }

    #[test]
    fn counts_per_secret_and_denials_and_callers() {
        let mut d = ReportData::new();
        for (i, (secret, decision, comm)) in [
            ("db", "allow", "app"),
            ("db", "allow", "app"),
            ("db", "deny", "curl"),
            ("api", "allow", "app"),
        ]
        .into_iter()
        .enumerate()
        {
            d.record(&rec(serde_json::json!({
                "time": format!("2026-12-01T00:00:0{i}Z"), "action": "secret.read",
                "decision": decision, "secret": secret,
                "caller": {"uid": 1000, "comm": comm, "container": "web"},
                "pod": {"namespace": "shop", "pod_name": "orders"},
            })));
        }
        d.record(&rec(serde_json::json!({
            "time": "2026-12-01T00:00:09Z", "action": "vault.fetch", "decision": "ok",
            "secret": "db", "summary": {"count": 5, "from": "a", "to": "b"},
        })));
        let db = &d.secrets["db"];
        assert_eq!((db.reads, db.denied, db.other), (2, 1, 6));
        assert_eq!(d.denials_total, 1);
        assert_eq!(d.denials[0].caller, "uid 1000 curl");
        let web = &d.callers[&("shop/orders".to_owned(), "web".to_owned())];
        assert_eq!(web["uid 1000 app"].records, 3);
        assert_eq!(web["uid 1000 curl"].denied, 1);
        let html = render(&d, "now");
        assert!(html.contains("<p id=\"no-checkpoints\">"), "{html}");
        assert!(
            html.contains("<p id=\"denial-count\">1 denial.</p>"),
            "{html}"
        );
    }

    /// The checkpoint section shows, per chain, the last checkpoint (seq, head, version, when
    /// stored), how far the records agree, and the comparison's findings, from the same
    /// comparison `verify --checkpoints` makes.
    #[test]
    fn checkpoint_agreement_is_shown_per_chain() {
        use crate::checkpoints::{compare, Checkpoint, PodCheckpoints};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let log = crate::AuditLog::open(crate::AuditConfig {
            path: path.clone(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("open");
        log.set_pod(crate::PodIdentity {
            namespace: "shop".into(),
            service_account: "orders".into(),
            pod_name: "orders-1".into(),
            pod_uid: "u1".into(),
        });
        for i in 0..6 {
            log.record(
                &crate::Record::new("secret.read", crate::Decision::Allow).reason(format!("r{i}")),
            )
            .expect("record");
        }
        let chain = log.chain_id().to_owned();
        drop(log);
        let lines: Vec<String> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect();
        let head = |seq: usize| -> String {
            let v: Value = serde_json::from_str(&lines[seq - 1]).expect("json");
            v["hash"].as_str().expect("hash").to_owned()
        };
        let pods = |heads: &[(u64, String)]| {
            BTreeMap::from([(
                ("shop".to_owned(), "orders-1".to_owned()),
                PodCheckpoints {
                    path: "keyward-audit/data/checkpoints/shop/orders-1".into(),
                    checkpoints: heads
                        .iter()
                        .enumerate()
                        .map(|(i, (seq, head))| Checkpoint {
                            version: i as u64 + 1,
                            created: format!("2026-12-01T00:00:0{i}Z"),
                            chain: chain.clone(),
                            seq: *seq,
                            head: head.clone(),
                            time: "t".into(),
                        })
                        .collect(),
                    ..PodCheckpoints::default()
                },
            )])
        };
        let page = |lines: &[String], heads: &[(u64, String)]| {
            let mut seen = Seen::default();
            let mut d = ReportData::new();
            for l in lines {
                seen.line(l);
                d.line(l);
            }
            d.checkpoints = Some(compare(&seen, &pods(heads), false));
            render(&d, "now")
        };
        let row = |html: &str| -> String {
            let at = html
                .find("<tr class=\"checkpoint ")
                .expect("a checkpoint row");
            html[at..at + html[at..].find("</tr>").expect("row end")].to_owned()
        };

        // Agreeing: the last checkpoint (seq 5, its head, version 2) and anchored up to it.
        let html = page(&lines, &[(3, head(3)), (5, head(5))]);
        let r = row(&html);
        assert!(
            r.starts_with(&format!(
                "<tr class=\"checkpoint agrees\" data-chain=\"{chain}\""
            )),
            "{r}"
        );
        assert!(r.contains("<td class=\"n last-seq\">5</td>"), "{r}");
        assert!(
            r.contains(&format!(
                "<code class=\"last-head\">{}</code>",
                &head(5)[..16]
            )),
            "{r}"
        );
        assert!(r.contains("<td>2 (2026-12-01T00:00:01Z)</td>"), "{r}");
        assert!(r.contains("<td class=\"n anchored\">5</td>"), "{r}");
        assert!(
            r.contains("<span class=\"ok\">yes</span>")
                && r.contains("seq 6-6 after it are not anchored"),
            "{r}"
        );
        assert!(html.contains("<p id=\"verdict\" class=\"ok\">"), "{html}");

        // A record rewritten at a checkpointed seq: the log does not agree, named in the row
        // and in the verdict; truncated before the last checkpoint: named too.
        let mut rewritten = lines.clone();
        rewritten[4] = rewritten[4].replace("\"r4\"", "\"rX\"");
        let html = page(&rewritten, &[(3, head(3)), (5, head(5))]);
        let r = row(&html);
        assert!(r.starts_with("<tr class=\"checkpoint mismatch\""), "{r}");
        assert!(r.contains("<td class=\"n anchored\">3</td>"), "{r}");
        assert!(
            r.contains("<span class=\"bad\">no</span>") && r.contains("seq 5: hash"),
            "{r}"
        );
        assert!(html.contains("1 checkpoint finding."), "{html}");
        let html = page(&lines[..3], &[(5, head(5))]);
        let r = row(&html);
        assert!(
            r.contains("seq 4-5 missing") && r.contains("truncated"),
            "{r}"
        );
        assert!(
            r.contains("<td class=\"n anchored\"><span class=\"muted\">-</span></td>"),
            "{r}"
        );
    }
}
