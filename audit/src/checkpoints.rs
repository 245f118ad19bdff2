//! `keyward audit verify --checkpoints`: compares the chains read with the checkpoints the
//! sidecars wrote to Vault (`audit.checkpoint`: KV v2, one path per pod,
//! `MOUNT/data/PREFIX/NAMESPACE/POD_NAME`, one version per checkpoint `{chain, seq, head, time}`).
//!
//! For each pod the input names, every version of its path is read (`MOUNT/metadata/...`, then
//! `MOUNT/data/...?version=N`), with the reviewer's own Vault token. Per chain:
//!
//! - agreement: the record at the checkpoint's `seq` hashes to exactly its `head`;
//! - a checkpoint beyond the last record read: the records after it were removed (truncation);
//! - a mismatch: the record at that `seq` is not the one the sidecar anchored (rewritten, even
//!   with the whole chain recomputed consistently), or is missing;
//! - a checkpointed chain with no record in the input: the chain was removed (or renamed);
//! - a checkpoint version deleted or destroyed in Vault;
//! - the records after the last checkpoint: not anchored (stated, not a finding).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use zeroize::Zeroizing;

use crate::ChainVerifier;

/// Why the checkpoints could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("--checkpoints needs {0}")]
    Missing(&'static str),
    #[error(
        "--vault-addr {0:?}: expected https://HOST:PORT (http:// only with --allow-insecure-http)"
    )]
    Addr(String),
    #[error("--vault-cacert {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("Vault client: {0}")]
    Client(String),
    #[error("GET {path}: {reason}")]
    Request { path: String, reason: String },
    #[error("GET {path}: Vault answered {status}{}", if .errors.is_empty() { String::new() } else { format!(": {}", .errors) })]
    Status {
        path: String,
        status: u16,
        errors: String,
    },
    #[error("GET {path}: unexpected answer: {reason}")]
    Decode { path: String, reason: String },
}

/// The options of `keyward audit verify --checkpoints`.
#[derive(Clone, Default, clap::Args)]
pub struct CheckpointArgs {
    /// Compare each chain with the checkpoints its sidecar wrote to Vault (read with the
    /// reviewer's own token): agreement, truncation, rewrites, and the records after the last
    /// checkpoint.
    #[arg(long)]
    pub checkpoints: bool,
    /// Vault's address (for --checkpoints).
    #[arg(long, env = "VAULT_ADDR", value_name = "URL")]
    pub vault_addr: Option<String>,
    /// A Vault token allowed to read the checkpoints' data and metadata (for --checkpoints).
    #[arg(
        long,
        env = "VAULT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub vault_token: Option<String>,
    /// PEM file of the CA(s) that signed Vault's certificate, besides the public roots.
    #[arg(long, env = "VAULT_CACERT", value_name = "FILE")]
    pub vault_cacert: Option<PathBuf>,
    /// The checkpoints' KV v2 mount (`audit.checkpoint.mount`).
    #[arg(long, default_value = "keyward-audit", value_name = "MOUNT")]
    pub checkpoint_mount: String,
    /// The path under the mount before NAMESPACE/POD_NAME (`audit.checkpoint.prefix`).
    #[arg(long, default_value = "checkpoints", value_name = "PREFIX")]
    pub checkpoint_prefix: String,
    /// Also read the checkpoints of this pod (NAMESPACE/POD_NAME, repeatable), even if the
    /// input has no record of it: chains it checkpointed and the input lacks are findings.
    #[arg(long, value_name = "NAMESPACE/POD_NAME")]
    pub checkpoint_pod: Vec<String>,
    /// Accept an http:// Vault address (a dev server): the token travels unencrypted.
    #[arg(long)]
    pub allow_insecure_http: bool,
}

impl std::fmt::Debug for CheckpointArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointArgs")
            .field("checkpoints", &self.checkpoints)
            .field("vault_addr", &self.vault_addr)
            .field(
                "vault_token",
                &self.vault_token.as_ref().map(|_| "<redacted>"),
            )
            .field("vault_cacert", &self.vault_cacert)
            .field("checkpoint_mount", &self.checkpoint_mount)
            .field("checkpoint_prefix", &self.checkpoint_prefix)
            .field("checkpoint_pod", &self.checkpoint_pod)
            .finish_non_exhaustive()
    }
}

/// What the input holds of one chain: the pod its records name and the hash each record's
/// content has (computed, not the `hash` member it claims).
#[derive(Debug, Default, Clone)]
pub struct SeenChain {
    pub namespace: String,
    pub pod_name: String,
    hashes: HashMap<u64, [u8; 32]>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The records read, by chain, for the comparison with the checkpoints.
#[derive(Debug, Default)]
pub struct Seen {
    pub chains: BTreeMap<String, SeenChain>,
}

impl Seen {
    /// Reads every line of `reader` into the verifier (as input `source`) and into `self`,
    /// each line parsed and hashed once for both.
    pub fn read_into(
        &mut self,
        v: &mut ChainVerifier,
        source: usize,
        reader: &mut dyn BufRead,
    ) -> std::io::Result<()> {
        crate::verify::each_line(reader, |n, text| {
            if let Some(p) = v.take(source, n, text) {
                self.record(&p);
            }
        })
    }

    /// Takes one line (a record or an envelope; anything else is ignored).
    pub fn line(&mut self, text: &str) {
        if let Some(p) = crate::verify::parse_line(text) {
            self.record(&p);
        }
    }

    pub(crate) fn record(&mut self, p: &crate::verify::Parsed<'_>) {
        let Some(chain) = p.chain.as_deref() else {
            return;
        };
        let seq = p.seq;
        let c = match self.chains.get_mut(chain) {
            Some(c) => c,
            None => self.chains.entry(chain.to_owned()).or_default(),
        };
        if c.namespace.is_empty() {
            if let Some(pod) = &p.pod {
                let [ns, name, _] = pod.names();
                c.namespace = ns;
                c.pod_name = name;
            }
        }
        c.first_seq = if c.hashes.is_empty() {
            seq
        } else {
            c.first_seq.min(seq)
        };
        c.last_seq = c.last_seq.max(seq);
        // A second, different record at the same seq is the verifier's finding; the first read
        // is compared here.
        c.hashes.entry(seq).or_insert(p.content);
    }
}

/// One checkpoint: one version of a pod's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The KV version.
    pub version: u64,
    /// When Vault stored it (Vault's clock, not the pod's).
    pub created: String,
    pub chain: String,
    pub seq: u64,
    pub head: String,
    /// The time the sidecar put in it.
    pub time: String,
}

/// Every version of one pod's checkpoint path.
#[derive(Debug, Clone, Default)]
pub struct PodCheckpoints {
    pub path: String,
    pub checkpoints: Vec<Checkpoint>,
    /// Findings about the path itself (a version deleted or destroyed, a version that is no
    /// checkpoint).
    pub findings: Vec<String>,
    /// Statements (versions no longer kept: the mount's `max_versions`).
    pub notes: Vec<String>,
}

/// The comparison for one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainVerdict {
    pub chain: String,
    pub pod: String,
    /// The chain's checkpoint with the highest seq in Vault (what the log must reach).
    pub last: Option<Checkpoint>,
    /// The checkpoint with the highest seq that the records read agree with.
    pub anchored: Option<Checkpoint>,
    pub findings: Vec<String>,
    pub notes: Vec<String>,
}

/// A pod: namespace and name.
type PodKey = (String, String);

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

/// Compares the chains read with the checkpoints of their pods (pure: no I/O). `window`: the
/// input may begin after seq 1, so a checkpoint before a chain's first record read is stated,
/// not a finding.
pub fn compare(
    seen: &Seen,
    pods: &BTreeMap<(String, String), PodCheckpoints>,
    window: bool,
) -> Vec<ChainVerdict> {
    let mut out: BTreeMap<String, ChainVerdict> = BTreeMap::new();
    // Checkpoints by chain, in version order.
    let mut by_chain: BTreeMap<&str, Vec<(&PodKey, &Checkpoint)>> = BTreeMap::new();
    for (pod, p) in pods {
        for c in &p.checkpoints {
            by_chain.entry(c.chain.as_str()).or_default().push((pod, c));
        }
    }
    for (id, c) in &seen.chains {
        let v = out.entry(id.clone()).or_default();
        v.chain.clone_from(id);
        v.pod = format!("{}/{}", c.namespace, c.pod_name);
        let Some(cps) = by_chain.get(id.as_str()) else {
            if c.namespace.is_empty() || c.pod_name.is_empty() {
                v.notes.push(format!(
                    "no pod named by its records: checkpoints not read; seq {}-{} not anchored",
                    c.first_seq, c.last_seq
                ));
            } else {
                v.notes.push(format!(
                    "no checkpoint in Vault for this chain: seq {}-{} not anchored",
                    c.first_seq, c.last_seq
                ));
            }
            continue;
        };
        v.last = cps
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| c.seq > 0)
            .max_by_key(|c| (c.seq, c.version))
            .cloned();
        let mut anchored: Option<&Checkpoint> = None;
        for (_, cp) in cps {
            let at = format!("checkpoint version {} ({})", cp.version, cp.created);
            if cp.seq == 0 {
                continue;
            }
            if cp.seq > c.last_seq {
                v.findings.push(format!(
                    "seq {}-{} missing: {at} anchors seq {} (head {}) beyond the last record \
                     read (records removed: truncated)",
                    c.last_seq + 1,
                    cp.seq,
                    cp.seq,
                    short(&cp.head)
                ));
                continue;
            }
            match c.hashes.get(&cp.seq) {
                Some(h) if hex::encode(h) == cp.head => {
                    if anchored.is_none_or(|a| a.seq < cp.seq) {
                        anchored = Some(cp);
                    }
                }
                Some(h) => v.findings.push(format!(
                    "seq {}: hash {} differs from {at}, head {} (the record was rewritten, \
                     or records before it removed or reordered, even if the chain verifies)",
                    cp.seq,
                    short(&hex::encode(h)),
                    short(&cp.head)
                )),
                None if window && cp.seq < c.first_seq => v.notes.push(format!(
                    "seq {}: {at} is before the first record read (seq {}): not compared",
                    cp.seq, c.first_seq
                )),
                None => v.findings.push(format!(
                    "seq {}: missing from the input, anchored by {at} (removed)",
                    cp.seq
                )),
            }
        }
        v.anchored = anchored.cloned();
        match anchored {
            Some(a) if a.seq < c.last_seq => v.notes.push(format!(
                "anchored up to seq {} (checkpoint version {}, {}); seq {}-{} after it are not \
                 anchored",
                a.seq,
                a.version,
                a.created,
                a.seq + 1,
                c.last_seq
            )),
            Some(a) => v.notes.push(format!(
                "anchored up to its last record, seq {} (checkpoint version {}, {})",
                a.seq, a.version, a.created
            )),
            None if v.findings.is_empty() => v.notes.push(format!(
                "no checkpoint agrees: seq {}-{} not anchored",
                c.first_seq, c.last_seq
            )),
            None => {}
        }
    }
    for (id, cps) in &by_chain {
        if seen.chains.contains_key(*id) {
            continue;
        }
        let Some(((ns, pod), last)) = cps.iter().max_by_key(|(_, c)| c.seq) else {
            continue;
        };
        if last.seq == 0 {
            continue;
        }
        out.insert(
            (*id).to_owned(),
            ChainVerdict {
                chain: (*id).to_owned(),
                pod: format!("{ns}/{pod}"),
                last: Some((*last).clone()),
                anchored: None,
                findings: vec![format!(
                    "seq 1-{} missing: checkpointed up to seq {} (version {}, {}) but no record \
                     of this chain is in the input (chain removed)",
                    last.seq, last.seq, last.version, last.created
                )],
                notes: Vec::new(),
            },
        );
    }
    // Findings about each pod's path go to every chain of that pod.
    for ((ns, pod), p) in pods {
        let name = format!("{ns}/{pod}");
        for v in out.values_mut().filter(|v| v.pod == name) {
            v.findings.extend(p.findings.iter().cloned());
            v.notes.extend(p.notes.iter().cloned());
        }
    }
    out.into_values().collect()
}

/// Reads checkpoints from Vault with the reviewer's token.
pub struct VaultReader {
    client: reqwest::Client,
    addr: String,
    token: Zeroizing<String>,
    mount: String,
    prefix: String,
}

impl VaultReader {
    pub fn new(args: &CheckpointArgs) -> Result<Self, CheckpointError> {
        let addr = args
            .vault_addr
            .clone()
            .ok_or(CheckpointError::Missing("--vault-addr or VAULT_ADDR"))?;
        let addr = addr.trim().trim_end_matches('/').to_owned();
        let secure = addr.starts_with("https://");
        if !(secure || args.allow_insecure_http && addr.starts_with("http://")) {
            return Err(CheckpointError::Addr(addr));
        }
        let token = Zeroizing::new(
            args.vault_token
                .clone()
                .filter(|t| !t.is_empty())
                .ok_or(CheckpointError::Missing("--vault-token or VAULT_TOKEN"))?,
        );
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(path) = &args.vault_cacert {
            let pem = std::fs::read(path).map_err(|e| CheckpointError::CaCert {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CheckpointError::CaCert {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(CheckpointError::CaCert {
                    path: path.clone(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder
            .build()
            .map_err(|e| CheckpointError::Client(e.to_string()))?;
        Ok(Self {
            client,
            addr,
            token,
            mount: args.checkpoint_mount.trim_matches('/').to_owned(),
            prefix: args.checkpoint_prefix.trim_matches('/').to_owned(),
        })
    }

    /// `GET /v1/PATH`: `None` on 404.
    async fn get(&self, path: &str) -> Result<Option<Value>, CheckpointError> {
        let resp = self
            .client
            .get(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", self.token.as_str())
            .send()
            .await
            .map_err(|e| CheckpointError::Request {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            let errors = body
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(CheckpointError::Status {
                path: path.to_owned(),
                status,
                errors,
            });
        }
        Ok(Some(body))
    }

    /// Every version of the checkpoint path of pod `namespace/pod_name`.
    pub async fn read(
        &self,
        namespace: &str,
        pod_name: &str,
    ) -> Result<PodCheckpoints, CheckpointError> {
        let rel = format!("{}/{namespace}/{pod_name}", self.prefix);
        let meta_path = format!("{}/metadata/{rel}", self.mount);
        let data_path = format!("{}/data/{rel}", self.mount);
        let mut out = PodCheckpoints {
            path: data_path.clone(),
            ..PodCheckpoints::default()
        };
        let Some(meta) = self.get(&meta_path).await? else {
            return Ok(out);
        };
        let decode = |reason: String| CheckpointError::Decode {
            path: meta_path.clone(),
            reason,
        };
        let versions = meta
            .pointer("/data/versions")
            .and_then(Value::as_object)
            .ok_or_else(|| decode("no data.versions".into()))?;
        let mut numbers: Vec<(u64, &Value)> = versions
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|n| (n, v)))
            .collect();
        numbers.sort_by_key(|(n, _)| *n);
        let current = meta
            .pointer("/data/current_version")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if let Some(&(oldest, _)) = numbers.first() {
            if oldest > 1 {
                out.notes.push(format!(
                    "{data_path}: versions 1-{} are no longer kept (the mount's or path's \
                     max_versions): their checkpoints were not compared",
                    oldest - 1
                ));
            }
        }
        if current > numbers.last().map_or(0, |(n, _)| *n) {
            out.findings.push(format!(
                "{data_path}: current version {current} is not among the versions kept"
            ));
        }
        for (n, v) in numbers {
            let created = v
                .get("created_time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if v.get("destroyed").and_then(Value::as_bool) == Some(true) {
                out.findings.push(format!(
                    "{data_path}: checkpoint version {n} ({created}) was destroyed"
                ));
                continue;
            }
            let deleted = v
                .get("deletion_time")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !deleted.is_empty() {
                out.findings.push(format!(
                    "{data_path}: checkpoint version {n} ({created}) was deleted at {deleted}"
                ));
                continue;
            }
            let path = format!("{data_path}?version={n}");
            let Some(body) = self.get(&path).await? else {
                out.findings.push(format!(
                    "{data_path}: checkpoint version {n} ({created}) cannot be read (404)"
                ));
                continue;
            };
            let d = body.pointer("/data/data").cloned().unwrap_or(Value::Null);
            let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            match (s("chain"), d.get("seq").and_then(Value::as_u64), s("head")) {
                (Some(chain), Some(seq), Some(head)) => out.checkpoints.push(Checkpoint {
                    version: n,
                    created,
                    chain,
                    seq,
                    head,
                    time: s("time").unwrap_or_default(),
                }),
                _ => out.findings.push(format!(
                    "{data_path}: version {n} ({created}) is not a checkpoint \
                     (no chain, seq and head)"
                )),
            }
        }
        Ok(out)
    }
}

/// Reads the checkpoints of every pod in `seen` (and `--checkpoint-pod`) from Vault and
/// compares them with the chains read. An error names what could not be read (never the token).
pub fn verdicts(
    args: &CheckpointArgs,
    seen: &Seen,
    window: bool,
) -> Result<Vec<ChainVerdict>, String> {
    let reader = VaultReader::new(args).map_err(|e| format!("checkpoints: {e}"))?;
    let mut pods: Vec<(String, String)> = seen
        .chains
        .values()
        .filter(|c| !c.namespace.is_empty() && !c.pod_name.is_empty())
        .map(|c| (c.namespace.clone(), c.pod_name.clone()))
        .collect();
    for p in &args.checkpoint_pod {
        match p.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                pods.push((ns.to_owned(), pod.to_owned()));
            }
            _ => {
                return Err(format!(
                    "--checkpoint-pod: expected NAMESPACE/POD_NAME, got {p:?}"
                ))
            }
        }
    }
    pods.sort();
    pods.dedup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("checkpoints: cannot start the runtime: {e}"))?;
    let mut read = BTreeMap::new();
    for (ns, pod) in pods {
        let p = rt.block_on(reader.read(&ns, &pod)).map_err(|e| {
            format!(
                "checkpoints of {}: {}",
                crate::cli::printable(&format!("{ns}/{pod}")),
                crate::cli::printable(&e.to_string())
            )
        })?;
        read.insert((ns, pod), p);
    }
    Ok(compare(seen, &read, window))
}

/// Reads the checkpoints of every pod in `seen` (and `--checkpoint-pod`), compares, prints the
/// verdicts; returns whether nothing was found. Errors reading Vault are findings.
pub fn run(args: &CheckpointArgs, seen: &Seen, window: bool) -> bool {
    let verdicts = match verdicts(args, seen, window) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("FAILED: {e}");
            return false;
        }
    };
    let findings: usize = verdicts.iter().map(|v| v.findings.len()).sum();
    for v in &verdicts {
        let head = format!(
            "checkpoints: chain {} ({}): {}",
            v.chain,
            v.pod,
            if v.findings.is_empty() {
                "OK"
            } else {
                "FAILED"
            }
        );
        println!("{}", crate::cli::printable(&head));
        for f in &v.findings {
            eprintln!(
                "FAILED: chain {}: checkpoint: {}",
                crate::cli::printable(&v.chain),
                crate::cli::printable(f)
            );
        }
        for n in &v.notes {
            println!(
                "  chain {}: {}",
                crate::cli::printable(&v.chain),
                crate::cli::printable(n)
            );
        }
    }
    if findings == 0 {
        println!(
            "OK: checkpoints agree for {} chain{}",
            verdicts.len(),
            if verdicts.len() == 1 { "" } else { "s" }
        );
        true
    } else {
        eprintln!(
            "FAILED: {findings} checkpoint finding{}",
            if findings == 1 { "" } else { "s" }
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditConfig, AuditLog, Decision, PodIdentity, Record};

    fn log_lines(n: usize) -> (String, Vec<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let log = AuditLog::open(AuditConfig {
            path: path.clone(),
            stdout: false,
            hmac_key: None,
            fsync: false,
        })
        .expect("open");
        log.set_pod(PodIdentity {
            namespace: "shop".into(),
            service_account: "orders".into(),
            pod_name: "orders-1".into(),
            pod_uid: "u1".into(),
        });
        for i in 0..n {
            log.record(&Record::new("secret.read", Decision::Allow).reason(format!("r{i}")))
                .expect("record");
        }
        let chain = log.chain_id().to_owned();
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        (chain, text.lines().map(str::to_owned).collect())
    }

    fn seen(lines: &[String]) -> Seen {
        let mut s = Seen::default();
        for l in lines {
            s.line(l);
        }
        s
    }

    fn head_at(lines: &[String], seq: usize) -> String {
        let v: Value = serde_json::from_str(&lines[seq - 1]).expect("json");
        v["hash"].as_str().expect("hash").to_owned()
    }

    fn pods(chain: &str, at: &[(u64, String)]) -> BTreeMap<(String, String), PodCheckpoints> {
        let checkpoints = at
            .iter()
            .enumerate()
            .map(|(i, (seq, head))| Checkpoint {
                version: i as u64 + 1,
                created: "t".into(),
                chain: chain.into(),
                seq: *seq,
                head: head.clone(),
                time: "t".into(),
            })
            .collect();
        BTreeMap::from([(
            ("shop".to_owned(), "orders-1".to_owned()),
            PodCheckpoints {
                path: "p".into(),
                checkpoints,
                ..PodCheckpoints::default()
            },
        )])
    }

    #[test]
    fn checkpoints_that_agree_anchor_the_chain_and_the_tail_is_stated() {
        let (chain, lines) = log_lines(8);
        let p = pods(&chain, &[(3, head_at(&lines, 3)), (6, head_at(&lines, 6))]);
        let v = compare(&seen(&lines), &p, false);
        assert_eq!(v.len(), 1);
        assert!(v[0].findings.is_empty(), "{v:?}");
        assert!(
            v[0].notes
                .iter()
                .any(|n| n.contains("anchored up to seq 6") && n.contains("seq 7-8")),
            "{v:?}"
        );
    }

    #[test]
    fn truncation_rewrite_and_a_removed_chain_are_findings() {
        let (chain, lines) = log_lines(8);
        let p = pods(&chain, &[(6, head_at(&lines, 6))]);
        let v = compare(&seen(&lines[..4]), &p, false);
        assert!(
            v[0].findings[0].contains("seq 5-6 missing") && v[0].findings[0].contains("truncated"),
            "{v:?}"
        );
        let p = pods(&chain, &[(6, "00".repeat(32))]);
        let v = compare(&seen(&lines), &p, false);
        assert!(v[0].findings[0].contains("seq 6: hash"), "{v:?}");
        let p = pods("another", &[(2, "ab".repeat(32))]);
        let v = compare(&seen(&lines), &p, false);
        assert!(
            v.iter()
                .any(|c| c.chain == "another" && c.findings[0].contains("chain removed")),
            "{v:?}"
        );
    }
}
