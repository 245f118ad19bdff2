//! The inbound mTLS port seen from outside with `openssl s_client` (issue 6 §4): it offers
//! exactly the TLS versions, cipher suites and key-exchange groups docs/proxy.md documents, and
//! refuses TLS 1.2 (unless `allow_tls12`), renegotiation, and plaintext.
//!
//! Each probe is one real handshake from OpenSSL, presenting a certificate the policy allows, so
//! that a refusal can only come from the protocol parameters.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::pki::{echo_app, Pki, Sidecar, SidecarSpec};
use support::TestVault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// The TLS 1.3 suites of docs/proxy.md, by their OpenSSL names.
const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];
/// Every TLS 1.3 suite OpenSSL 3 implements.
const TLS13_ALL: [&str; 5] = [
    "TLS_AES_128_CCM_8_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];
/// The key-exchange groups of docs/proxy.md (X25519, P-256, P-384).
const GROUPS: [&str; 3] = ["P-256", "P-384", "X25519"];
/// Groups OpenSSL 3 offers that the proxy must not accept.
const OTHER_GROUPS: [&str; 4] = ["P-521", "X448", "ffdhe2048", "ffdhe3072"];
/// The TLS 1.2 suites allowed with `allow_tls12`: ECDHE with AES-GCM or ChaCha20-Poly1305. The
/// workload key is ECDSA (P-256), so of the ECDHE-ECDSA/RSA pairs only ECDSA can be chosen.
const TLS12_SUITES: [&str; 3] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
];

/// A client certificate the inbound policy allows, as files for `s_client`: `-cert` sends only
/// the leaf, the intermediate goes in `-cert_chain`.
struct ClientCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
}

impl ClientCert {
    fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "-cert".into(),
            self.cert.clone().into(),
            "-cert_chain".into(),
            self.chain.clone().into(),
            "-key".into(),
            self.key.clone().into(),
        ]
    }
}

struct Server {
    _vault: TestVault,
    _app: SocketAddr,
    strict: Sidecar,
    strict_port: SocketAddr,
    tls12: Sidecar,
    tls12_port: SocketAddr,
    client: ClientCert,
}

async fn servers() -> Server {
    let vault = TestVault::start("shop", "orders", "10m", "1h").await;
    let pki = Pki::setup(&vault.bao).await;
    let app = echo_app().await;
    let (chain, key) = pki.issue(&vault.bao, FRONTEND, "1h").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = ClientCert {
        cert: dir.path().join("client.pem"),
        key: dir.path().join("client.key"),
        chain: dir.path().join("chain.pem"),
        _dir: dir,
    };
    std::fs::write(&client.cert, chain).expect("cert");
    std::fs::write(&client.chain, &pki.int_pem).expect("chain");
    std::fs::write(&client.key, key).expect("key");

    let start = |port: SocketAddr, extra: &'static str| {
        Sidecar::start(
            &vault.bao.addr(),
            SidecarSpec {
                inbound: format!(
                    "[{{listen: \"{port}\", forward: \"{app}\", allow: [\"{FRONTEND}\"]}}]"
                ),
                extra,
                ..SidecarSpec::new("shop", "orders", vault.token("shop", "orders"))
            },
        )
    };
    let strict_port = loopback();
    let tls12_port = loopback();
    let mut strict = start(strict_port, "");
    let mut tls12 = start(tls12_port, "  allow_tls12: true\n");
    strict.wait_ready().await;
    tls12.wait_ready().await;
    Server {
        _vault: vault,
        _app: app,
        strict,
        strict_port,
        tls12,
        tls12_port,
        client,
    }
}

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("addr")
}

/// What one `openssl s_client` run negotiated, if the handshake completed.
#[derive(Debug)]
struct Probe {
    established: bool,
    protocol: Option<String>,
    cipher: Option<String>,
    group: Option<String>,
    output: String,
}

/// One handshake with `openssl s_client -brief`, stdin closed right away (so it exits after
/// the handshake), bounded by `timeout`.
fn s_client(addr: SocketAddr, client: &ClientCert, args: &[&str]) -> Probe {
    let out = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args(["s_client", "-brief", "-connect", &addr.to_string()])
        .args(client.args())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    Probe {
        established: output.contains("CONNECTION ESTABLISHED"),
        protocol: field("Protocol version:"),
        cipher: field("Ciphersuite:"),
        group: field("Negotiated TLS1.3 group:").or_else(|| field("Server Temp Key:")),
        output,
    }
}

/// The subset of `candidates` with which a handshake completes; checks each completed one
/// negotiated `protocol` and the candidate itself.
fn accepted<'a>(
    addr: SocketAddr,
    client: &ClientCert,
    protocol: &str,
    candidates: &[&'a str],
    args: impl Fn(&str) -> Vec<String>,
    negotiated: impl Fn(&Probe) -> Option<String>,
) -> BTreeSet<&'a str> {
    let mut ok = BTreeSet::new();
    for c in candidates {
        let args = args(c);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = s_client(addr, client, &args);
        if p.established {
            assert_eq!(p.protocol.as_deref(), Some(protocol), "{c}: {}", p.output);
            let got = negotiated(&p).unwrap_or_default();
            assert!(
                got.contains(c),
                "{c}: negotiated {got:?} instead: {}",
                p.output
            );
            ok.insert(*c);
        }
    }
    ok
}

/// Whether bytes written through an `s_client` session come back from the echo app behind the
/// proxy: the handshake completed *and* the proxy accepted the client (with TLS 1.3 a refused
/// client certificate only shows after `s_client` has printed its session).
fn echoes(addr: SocketAddr, client: &ClientCert, args: &[&str]) -> bool {
    use std::io::{Read, Write};
    const PING: &[u8] = b"keyward-tls-probe\n";
    // openssl itself, not under timeout(1): kill() must reach it.
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .args(client.args())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(PING.len()).any(|w| w == PING) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let _ = stdin.write_all(PING);
    let echoed = rx.recv_timeout(Duration::from_secs(15)).is_ok();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    echoed
}

/// Every TLS 1.2 cipher suite this OpenSSL implements (at security level 0, so none is left out).
fn all_tls12_ciphers() -> Vec<String> {
    let out = Command::new("openssl")
        .args(["ciphers", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .expect("openssl ciphers");
    assert!(out.status.success(), "openssl ciphers: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        // The TLS 1.3 suites are listed too; they are not selectable with -cipher.
        .filter(|c| !c.starts_with("TLS_"))
        .map(str::to_owned)
        .collect()
}

fn tls13_suites(addr: SocketAddr, client: &ClientCert) -> BTreeSet<&'static str> {
    accepted(
        addr,
        client,
        "TLSv1.3",
        &TLS13_ALL,
        |c| vec!["-tls1_3".into(), "-ciphersuites".into(), c.into()],
        |p| p.cipher.clone(),
    )
}

fn tls13_groups(addr: SocketAddr, client: &ClientCert) -> BTreeSet<&'static str> {
    let all: Vec<&str> = GROUPS.iter().chain(OTHER_GROUPS.iter()).copied().collect();
    accepted(
        addr,
        client,
        "TLSv1.3",
        &all,
        |g| vec!["-tls1_3".into(), "-groups".into(), g.into()],
        // OpenSSL prints X25519 as is and P-256 as its curve name.
        |p| {
            p.group.clone().map(|g| {
                g.replace("prime256v1", "P-256")
                    .replace("secp384r1", "P-384")
                    .replace("secp521r1", "P-521")
            })
        },
    )
}

/// Older protocol versions: the client offers only that version (at security level 0, so
/// OpenSSL itself does not refuse to offer it).
fn refuses_version(addr: SocketAddr, client: &ClientCert, flag: &str) {
    let p = s_client(addr, client, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(
        !p.established,
        "{addr} completed a handshake with {flag}: {}",
        p.output
    );
}

/// `s_client -msg` over TLS 1.2 with stdin left open, asked to renegotiate (`R` at the start of
/// a line, read once the handshake is done). Returns its output (every TLS message it sent and
/// received) once it has sent the new ClientHello, received the no_renegotiation alert and
/// `refused()` holds, or after 20 s.
fn renegotiate(addr: SocketAddr, client: &ClientCert, refused: impl Fn() -> bool) -> String {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let mut child = Command::new("openssl")
        .args(["s_client", "-msg", "-connect", &addr.to_string(), "-tls1_2"])
        .args(client.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let out = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|mut pipe| {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                out.lock().expect("lock").push_str(&text);
            }
        })
    })
    .collect();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"R\n").expect("write R");
    let deadline = Instant::now() + Duration::from_secs(20);
    // s_client prints the message trace and `RENEGOTIATING` on different streams, so their
    // order in `out` is not theirs: count messages instead.
    let hello_sent = || {
        let out = out.lock().expect("lock");
        out.contains("RENEGOTIATING") && sent(&out, "ClientHello") >= 2 && alerted(&out)
    };
    while Instant::now() < deadline
        && !(refused() && hello_sent())
        && child.try_wait().expect("wait").is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let text = out.lock().expect("lock").clone();
    text
}

/// Whether the `s_client -msg` trace shows a no_renegotiation alert received.
fn alerted(trace: &str) -> bool {
    trace
        .lines()
        .any(|l| l.starts_with("<<<") && l.contains("Alert") && l.ends_with("no_renegotiation"))
}

/// How many TLS handshake messages `name` the `s_client -msg` trace shows as sent.
fn sent(trace: &str, name: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.starts_with(">>>") && l.contains(", Handshake") && l.ends_with(name))
        .count()
}

/// How many TLS handshake messages `name` the `s_client -msg` trace shows as received.
fn received(trace: &str, name: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.starts_with("<<<") && l.contains(", Handshake") && l.ends_with(name))
        .count()
}

/// A plaintext HTTP request to the TLS port gets no HTTP answer: at most a TLS alert record,
/// then the connection is closed.
async fn refuses_plaintext(addr: SocketAddr) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .expect("write");
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut back)).await;
    match read {
        Ok(Ok(_)) => {}
        // A reset is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading the answer to plaintext: {e}"),
        Err(_) => panic!("the TLS port kept a plaintext connection open for 15 s"),
    }
    assert!(
        !back.windows(5).any(|w| w == b"HTTP/"),
        "plaintext got an HTTP answer: {:?}",
        String::from_utf8_lossy(&back)
    );
    // Anything sent back is TLS alert records (content type 21), nothing else.
    let mut rest = &back[..];
    while !rest.is_empty() {
        assert!(
            rest.len() >= 5 && rest[0] == 21,
            "plaintext got a non-alert answer: {back:02x?}"
        );
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        rest = rest.get(5 + len..).unwrap_or_default();
    }
    back
}

fn require_openssl() {
    let v = Command::new("openssl")
        .arg("version")
        .output()
        .expect("openssl is needed for this test (Debian's openssl package)");
    assert!(v.status.success(), "openssl version: {v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_offers_only_the_documented_tls() {
    require_openssl();
    let s = servers().await;
    let client = &s.client;

    // The probe itself works: the client certificate is accepted and data flows, and the
    // defaults negotiate TLS 1.3.
    assert!(
        echoes(s.strict_port, client, &[]),
        "no echo through the proxy"
    );
    let p = s_client(s.strict_port, client, &[]);
    assert!(p.established, "default handshake failed: {}", p.output);
    assert_eq!(p.protocol.as_deref(), Some("TLSv1.3"), "{}", p.output);

    // Default (allow_tls12: false): TLS 1.3 only, the three documented suites and groups.
    let want: BTreeSet<&str> = TLS13_SUITES.into_iter().collect();
    assert_eq!(tls13_suites(s.strict_port, client), want);
    let want: BTreeSet<&str> = GROUPS.into_iter().collect();
    assert_eq!(tls13_groups(s.strict_port, client), want);
    for flag in ["-tls1_2", "-tls1_1", "-tls1"] {
        refuses_version(s.strict_port, client, flag);
    }
    let tls12 = all_tls12_ciphers();
    assert!(tls12.len() > 20, "openssl ciphers listed {tls12:?}");

    // allow_tls12: true: TLS 1.3 unchanged, plus TLS 1.2 with only the ECDHE AEAD suites.
    assert!(
        echoes(s.tls12_port, client, &["-tls1_2"]),
        "no echo through the proxy over TLS 1.2"
    );
    let want: BTreeSet<&str> = TLS13_SUITES.into_iter().collect();
    assert_eq!(tls13_suites(s.tls12_port, client), want);
    let candidates: Vec<&str> = tls12.iter().map(String::as_str).collect();
    let got = accepted(
        s.tls12_port,
        client,
        "TLSv1.2",
        &candidates,
        |c| {
            vec![
                "-tls1_2".into(),
                "-cipher".into(),
                format!("{c}:@SECLEVEL=0"),
            ]
        },
        |p| p.cipher.clone(),
    );
    let want: BTreeSet<&str> = TLS12_SUITES.into_iter().collect();
    assert_eq!(got, want);
    for flag in ["-tls1_1", "-tls1"] {
        refuses_version(s.tls12_port, client, flag);
    }

    // Renegotiation (TLS 1.2 only; TLS 1.3 has none): rustls answers the client's new
    // ClientHello with a no_renegotiation warning alert, sent at once, and never a ServerHello;
    // the session stays under its first handshake.
    let refusals = || {
        s.tls12
            .log()
            .matches("Sending warning alert NoRenegotiation")
            .count()
    };
    let before_refusals = refusals();
    let out = renegotiate(s.tls12_port, client, || refusals() > before_refusals);
    assert!(
        refusals() > before_refusals,
        "the server did not refuse renegotiation: {out}\n{}",
        s.tls12.log()
    );
    assert!(
        alerted(&out),
        "the client did not receive the no_renegotiation alert: {out}"
    );
    assert!(out.contains("RENEGOTIATING"), "s_client did not try: {out}");
    assert_eq!(sent(&out, "ClientHello"), 2, "no second ClientHello: {out}");
    assert_eq!(
        received(&out, "ServerHello"),
        1,
        "the server renegotiated: {out}"
    );
    assert_eq!(
        received(&out, "Finished"),
        1,
        "the server renegotiated: {out}"
    );

    // Plaintext on either port: no answer but a close.
    for port in [s.strict_port, s.tls12_port] {
        refuses_plaintext(port).await;
    }
    let failures = s
        .strict
        .metric("keyward_proxy_handshake_failures_total")
        .await;
    assert!(failures > 0.0, "refused handshakes were not counted");
    drop(s.tls12);
}
