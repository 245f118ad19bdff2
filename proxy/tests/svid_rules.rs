//! X.509-SVID verification (`proxy/src/svid.rs`) at its edges, on certificates minted here with
//! rcgen so that every field is under the test's control: key usages one at a time, EKUs,
//! validity windows in the future, the trust bundle's accessors (scripts/mutants.sh `svid`
//! scope: these catch what the unit tests of `svid.rs` left alive).

use std::time::Duration;

use keyward_proxy::svid::{self, SvidError, TrustBundle, Usage};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
    KeyUsagePurpose as Ku, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};

const ID: &str = "spiffe://td/ns/shop/sa/frontend";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(1);
    let cert = p.self_signed(&key).expect("self-sign");
    Ca { cert, key }
}

/// A leaf for `ID` signed by `ca`, with `ku`, `eku` and the validity of `valid`
/// (offsets from now).
fn leaf(
    ca: &Ca,
    ku: &[Ku],
    eku: &[Eku],
    valid: (time::Duration, time::Duration),
) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(ID.try_into().expect("IA5"))];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = ku.to_vec();
    p.extended_key_usages = eku.to_vec();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + valid.0;
    p.not_after = now + valid.1;
    p.signed_by(&key, &ca.cert, &ca.key)
        .expect("sign")
        .der()
        .clone()
}

fn now_valid() -> (time::Duration, time::Duration) {
    (-time::Duration::minutes(1), time::Duration::hours(1))
}

fn bundle(ca: &Ca) -> TrustBundle {
    TrustBundle::from_pem(&ca.cert.pem()).expect("bundle")
}

fn verify(ca: &Ca, der: &CertificateDer<'_>, usage: Usage) -> Result<String, SvidError> {
    svid::verify_chain(
        &bundle(ca),
        "td",
        der,
        &[],
        UnixTime::now(),
        usage,
        &keyward_proxy::tls::provider().signature_verification_algorithms,
    )
    .map(|id| id.to_string())
}

const BOTH: &[Eku] = &[Eku::ClientAuth, Eku::ServerAuth];

#[test]
fn a_leaf_allowed_to_sign_certificates_or_crls_is_not_a_svid() {
    let ca = ca("td");
    for (ku, what) in [
        (&[Ku::DigitalSignature, Ku::KeyCertSign][..], "keyCertSign"),
        (&[Ku::DigitalSignature, Ku::CrlSign][..], "cRLSign"),
    ] {
        let der = leaf(&ca, ku, BOTH, now_valid());
        assert_eq!(
            svid::check_leaf(&der, "td", Usage::Client),
            Err(SvidError::SigningUsage),
            "{what}"
        );
    }
    // digitalSignature alone is what an SVID needs.
    let der = leaf(&ca, &[Ku::DigitalSignature], BOTH, now_valid());
    assert_eq!(
        svid::check_leaf(&der, "td", Usage::Client).map(|i| i.to_string()),
        Ok(ID.to_owned())
    );
}

#[test]
fn a_leaf_without_digital_signature_is_not_a_svid() {
    let ca = ca("td");
    let der = leaf(&ca, &[Ku::KeyEncipherment], BOTH, now_valid());
    assert_eq!(
        svid::check_leaf(&der, "td", Usage::Server),
        Err(SvidError::NoDigitalSignature)
    );
}

#[test]
fn the_extended_key_usage_must_allow_the_use_or_be_absent_or_any() {
    let ca = ca("td");
    let client_only = leaf(
        &ca,
        &[Ku::DigitalSignature],
        &[Eku::ClientAuth],
        now_valid(),
    );
    assert!(svid::check_leaf(&client_only, "td", Usage::Client).is_ok());
    assert_eq!(
        svid::check_leaf(&client_only, "td", Usage::Server),
        Err(SvidError::ExtendedKeyUsage("serverAuth"))
    );
    assert_eq!(
        verify(&ca, &client_only, Usage::Server),
        Err(SvidError::ExtendedKeyUsage("this use")),
        "the chain check refuses it too"
    );
    assert_eq!(verify(&ca, &client_only, Usage::Client), Ok(ID.to_owned()));
    let any = leaf(&ca, &[Ku::DigitalSignature], &[Eku::Any], now_valid());
    for usage in [Usage::Client, Usage::Server] {
        assert!(svid::check_leaf(&any, "td", usage).is_ok(), "{usage:?}");
    }
    let none = leaf(&ca, &[Ku::DigitalSignature], &[], now_valid());
    for usage in [Usage::Client, Usage::Server] {
        assert!(svid::check_leaf(&none, "td", usage).is_ok(), "{usage:?}");
    }
}

#[test]
fn a_certificate_valid_only_from_a_future_time_is_not_yet_valid() {
    let ca = ca("td");
    let early = leaf(
        &ca,
        &[Ku::DigitalSignature],
        BOTH,
        (time::Duration::hours(1), time::Duration::hours(2)),
    );
    for usage in [Usage::Client, Usage::Server] {
        assert_eq!(verify(&ca, &early, usage), Err(SvidError::NotYetValid));
    }
    let e = SvidError::NotYetValid;
    assert_eq!(e.code(), "not_yet_valid");
    assert_eq!(e.to_string(), "certificate is not valid yet");
    assert_eq!(
        e.to_rustls(),
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
    );
    // The same leaf verifies at a time inside its window.
    let later = UnixTime::since_unix_epoch(
        UnixTime::now()
            .as_secs()
            .checked_add(90 * 60)
            .map(Duration::from_secs)
            .expect("time"),
    );
    let id = svid::verify_chain(
        &bundle(&ca),
        "td",
        &early,
        &[],
        later,
        Usage::Client,
        &keyward_proxy::tls::provider().signature_verification_algorithms,
    )
    .expect("valid an hour and a half from now");
    assert_eq!(id.as_str(), ID);
}

#[test]
fn validity_bounds_and_self_issuance_are_read_from_the_certificate() {
    let ca = ca("td");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(ID.try_into().expect("IA5"))];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    p.not_after = time::OffsetDateTime::from_unix_timestamp(1_900_086_400).expect("time");
    let der = p
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign")
        .der()
        .clone();
    assert_eq!(svid::not_before(&der), Ok(1_900_000_000));
    assert_eq!(svid::not_after(&der), Ok(1_900_086_400));
    let garbage = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert!(matches!(
        svid::not_before(&garbage),
        Err(SvidError::Malformed(_))
    ));
    assert!(matches!(
        svid::not_after(&garbage),
        Err(SvidError::Malformed(_))
    ));

    assert!(svid::is_self_issued(ca.cert.der()), "a self-signed CA");
    assert!(!svid::is_self_issued(&der), "a leaf signed by the CA");
    assert!(!svid::is_self_issued(&garbage), "not a certificate");
}

#[test]
fn a_bundle_keeps_its_pem_counts_its_anchors_and_debug_shows_only_the_count() {
    let (a, b) = (ca("td a"), ca("td b"));
    let pem = format!("{}{}", a.cert.pem(), b.cert.pem());
    let bundle = TrustBundle::from_pem(&pem).expect("bundle");
    assert_eq!(bundle.len(), 2);
    assert!(!bundle.is_empty());
    assert_eq!(bundle.pem(), pem, "the PEM given to apps is the one read");
    assert_eq!(format!("{bundle:?}"), "TrustBundle { anchors: 2 }");
    // Either anchor verifies its leaves.
    for ca in [&a, &b] {
        let der = leaf(ca, &[Ku::DigitalSignature], BOTH, now_valid());
        let id = svid::verify_chain(
            &bundle,
            "td",
            &der,
            &[],
            UnixTime::now(),
            Usage::Client,
            &keyward_proxy::tls::provider().signature_verification_algorithms,
        );
        assert_eq!(id.map(|i| i.to_string()), Ok(ID.to_owned()));
    }
    assert_eq!(svid::certs_from_pem(&pem).expect("certs").len(), 2);
    assert!(matches!(
        TrustBundle::from_pem("no PEM here"),
        Err(SvidError::Malformed(_))
    ));
    assert!(matches!(
        TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(SvidError::Malformed(_))
    ));
}
