//! X.509-SVID verification of what a remote peer presents: `keyward_proxy::svid::verify_chain`
//! on an arbitrary chain of DER certificates (leaf first) against one fixed trust bundle, for
//! client and server use.
//!
//! Input: one flags byte (bit 0: server usage), then up to four certificates, each a 2-byte
//! big-endian length and that many DER bytes.
//!
//! It never panics, and it never accepts a chain that is not signed by the bundle: when it
//! accepts, one of the presented certificates carries a signature that verifies (checked
//! independently, with x509-parser and ring) under the bundle CA's public key, the leaf is not
//! a CA, and the returned SPIFFE ID is the leaf's one URI SAN, in the trust domain.
//!
//! The bundle CA's key is fixed (below), so the committed seeds (real chains made with rcgen)
//! stay valid; `KEYWARD_FUZZ_WRITE_SEEDS=DIR` writes them again.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use keyward_proxy::svid::{verify_chain, TrustBundle, Usage};
use libfuzzer_sys::fuzz_target;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

const TRUST_DOMAIN: &str = "fuzz.test";

/// The bundle CA's key: a throwaway P-256 key made for this target, used nowhere else.
const CA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8XsLWi2cGq3r4ClG
NIOHWFTMbtnKdLxYSOTr7ecpdMehRANCAATodS0RsmyeOhh0/JHwG0XHl3SVT92X
+sycMSPIrsdc/p5CNAIg/+fW16IzzCsx4scash/xHI9uWUe+zAnc7iXt
-----END PRIVATE KEY-----
";

/// 2026-06-01T00:00:00Z: inside every seed certificate's validity.
const NOW: u64 = 1_780_272_000;

struct Fixture {
    bundle: TrustBundle,
    /// The CA's SubjectPublicKeyInfo, DER.
    ca_spki: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TRUST_DOMAIN}").try_into().expect("uri"),
    )];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    p
}

fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2027, 1, 1);
    p
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = KeyPair::from_pem(CA_KEY).expect("CA key");
        let ca = ca_params("keyward fuzz CA").self_signed(&key).expect("CA");
        let bundle = TrustBundle::from_pem(&ca.pem()).expect("bundle");
        let f = Fixture {
            bundle,
            ca_spki: key.public_key_der(),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        // The harness works: the valid chains pass, the forged ones do not.
        let seeds = make_seeds(&key, &ca);
        for (name, bytes) in &seeds {
            let (flags, certs) = decode(bytes).expect("seed decodes");
            let ok = verify(&f, flags, &certs).is_ok();
            let valid = ["direct-client", "direct-server", "intermediate"].contains(name);
            assert_eq!(ok, valid, "seed {name}: accepted {ok}");
            assert_eq!(
                valid,
                certs.iter().any(|c| signed_by(c, &f.ca_spki))
                    && *name != "ca-as-leaf"
                    && *name != "other-trust-domain",
                "seed {name}: oracle"
            );
        }
        if let Ok(dir) = std::env::var("KEYWARD_FUZZ_WRITE_SEEDS") {
            let dir = std::path::Path::new(&dir);
            std::fs::create_dir_all(dir).expect("seed dir");
            for (name, bytes) in seeds {
                std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("seed");
            }
        }
        f
    })
}

fn encode(flags: u8, chain: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for c in chain {
        out.extend_from_slice(&u16::try_from(c.len()).expect("short cert").to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Valid chains (direct, through an intermediate) and ones a peer could forge: a CA of the
/// same name with another key, a self-signed leaf, a CA as leaf, another trust domain.
fn make_seeds(ca_key: &KeyPair, ca: &rcgen::Certificate) -> Vec<(&'static str, Vec<u8>)> {
    let id = format!("spiffe://{TRUST_DOMAIN}/ns/app/sa/web");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = leaf_params(&id)
        .signed_by(&leaf_key, ca, ca_key)
        .expect("leaf");
    let int_key = KeyPair::generate().expect("key");
    let int = ca_params("keyward fuzz intermediate")
        .signed_by(&int_key, ca, ca_key)
        .expect("intermediate");
    let leaf2 = leaf_params(&id)
        .signed_by(&leaf_key, &int, &int_key)
        .expect("leaf");
    let evil_key = KeyPair::generate().expect("key");
    let evil = ca_params("keyward fuzz CA")
        .self_signed(&evil_key)
        .expect("evil CA");
    let forged = leaf_params(&id)
        .signed_by(&leaf_key, &evil, &evil_key)
        .expect("forged");
    let selfsigned = leaf_params(&id).self_signed(&leaf_key).expect("self");
    let other_td = leaf_params("spiffe://other.test/ns/app/sa/web")
        .signed_by(&leaf_key, ca, ca_key)
        .expect("other td");
    vec![
        ("direct-client", encode(0, &[leaf.der()])),
        ("direct-server", encode(1, &[leaf.der()])),
        ("intermediate", encode(0, &[leaf2.der(), int.der()])),
        ("forged-same-name", encode(0, &[forged.der(), evil.der()])),
        ("self-signed", encode(1, &[selfsigned.der()])),
        ("ca-as-leaf", encode(0, &[int.der(), ca.der()])),
        ("other-trust-domain", encode(0, &[other_td.der()])),
    ]
}

fn verify(
    f: &Fixture,
    flags: u8,
    certs: &[CertificateDer<'_>],
) -> Result<keyward_identity::SpiffeId, keyward_proxy::svid::SvidError> {
    let usage = if flags & 1 == 1 {
        Usage::Server
    } else {
        Usage::Client
    };
    let now = UnixTime::since_unix_epoch(Duration::from_secs(NOW));
    verify_chain(
        &f.bundle,
        TRUST_DOMAIN,
        &certs[0],
        &certs[1..],
        now,
        usage,
        &f.algs,
    )
}

/// Splits the input into its flags and certificates; `None` when it is cut short.
fn decode(data: &[u8]) -> Option<(u8, Vec<CertificateDer<'_>>)> {
    let (&flags, mut rest) = data.split_first()?;
    let mut certs = Vec::new();
    while !rest.is_empty() && certs.len() < 4 {
        if rest.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = rest.get(2..2 + n)?;
        certs.push(CertificateDer::from(body));
        rest = &rest[2 + n..];
    }
    (!certs.is_empty()).then_some((flags, certs))
}

/// Whether `der`'s signature verifies under `spki`, by x509-parser (ring) rather than webpki.
fn signed_by(der: &[u8], spki: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok((_, key)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki) else {
        return false;
    };
    cert.verify_signature(Some(&key)).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((flags, certs)) = decode(data) else {
        return;
    };
    let Ok(id) = verify(f, flags, &certs) else {
        return;
    };
    assert!(
        certs.iter().any(|c| signed_by(c, &f.ca_spki)),
        "accepted {id} from a chain none of whose certificates the bundle CA signed"
    );
    let (_, leaf) = X509Certificate::from_der(&certs[0]).expect("an accepted leaf parses");
    assert!(!leaf.is_ca(), "accepted a CA certificate as the leaf");
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(uris, [id.as_str()], "the ID is not the leaf's one URI SAN");
    assert!(
        id.as_str()
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            == Some(TRUST_DOMAIN),
        "accepted {id} outside trust domain {TRUST_DOMAIN}"
    );
});
