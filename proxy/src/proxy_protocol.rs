//! PROXY protocol v2 header sent to the app before any byte of an inbound connection (opt-in
//! per listener), so the app learns who called.
//!
//! Layout (HAProxy's proxy-protocol.txt, section 2.2): the 12-byte signature, `0x21` (v2,
//! PROXY), `0x11` (TCP/IPv4) or `0x21` (TCP/IPv6), the length, source and destination address
//! and port of the mTLS connection, then TLVs:
//! - `PP2_TYPE_SSL` (`0x20`): client flags `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN` (`0x03`),
//!   verify `0` (the certificate was verified), and the sub-TLV `PP2_SUBTYPE_SSL_VERSION`
//!   (`0x21`) with `TLSv1.3` or `TLSv1.2`;
//! - `PP2_TYPE_SPIFFE_ID` (`0xE0`, the first type of the range the spec reserves for
//!   application use): the caller's SPIFFE ID, UTF-8.

use std::net::SocketAddr;

/// The v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// TLV type carrying the caller's SPIFFE ID.
pub const PP2_TYPE_SPIFFE_ID: u8 = 0xE0;
/// TLV type of the TLS information block.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// Sub-TLV of [`PP2_TYPE_SSL`] with the TLS version.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;

/// Encodes the header for a connection from `src` to `dst` by `spiffe_id`.
pub fn encode(src: SocketAddr, dst: SocketAddr, spiffe_id: &str, tls_version: &str) -> Vec<u8> {
    let mut addrs = Vec::with_capacity(36);
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            addrs.extend_from_slice(&v6(s).octets());
            addrs.extend_from_slice(&v6(d).octets());
            addrs.extend_from_slice(&s.port().to_be_bytes());
            addrs.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
    };
    let mut tlvs = Vec::new();
    // PP2_TYPE_SSL: client (1 byte), verify (4 bytes), then sub-TLVs.
    let mut ssl = vec![0x03, 0, 0, 0, 0];
    push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls_version.as_bytes());
    push_tlv(&mut tlvs, PP2_TYPE_SSL, &ssl);
    push_tlv(&mut tlvs, PP2_TYPE_SPIFFE_ID, spiffe_id.as_bytes());

    let len = addrs.len() + tlvs.len();
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    out.push(family);
    // SPIFFE IDs are at most 2048 bytes, so this always fits in u16.
    out.extend_from_slice(&(len.min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&tlvs);
    out
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&value[..value.len().min(u16::MAX as usize)]);
}

/// A decoded header, as an app would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub spiffe_id: Option<String>,
    pub tls_version: Option<String>,
}

/// Decodes a header at the start of `buf`; returns it and its length in bytes. `None` when
/// `buf` does not start with a complete, well-formed v2 PROXY header.
pub fn decode(buf: &[u8]) -> Option<(Header, usize)> {
    if buf.len() < 16 || buf[..12] != SIGNATURE || buf[12] != 0x21 {
        return None;
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let body = buf.get(16..16 + len)?;
    let (src, dst, rest) = match buf[13] {
        0x11 => {
            let a = body.get(..12)?;
            let ip = |o: &[u8]| std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3]);
            let src = SocketAddr::from((ip(&a[0..4]), u16::from_be_bytes([a[8], a[9]])));
            let dst = SocketAddr::from((ip(&a[4..8]), u16::from_be_bytes([a[10], a[11]])));
            (src, dst, &body[12..])
        }
        0x21 => {
            let a = body.get(..36)?;
            let ip = |o: &[u8]| {
                let mut b = [0u8; 16];
                b.copy_from_slice(o);
                std::net::Ipv6Addr::from(b)
            };
            let src = SocketAddr::from((ip(&a[0..16]), u16::from_be_bytes([a[32], a[33]])));
            let dst = SocketAddr::from((ip(&a[16..32]), u16::from_be_bytes([a[34], a[35]])));
            (src, dst, &body[36..])
        }
        _ => return None,
    };
    let mut h = Header {
        src,
        dst,
        spiffe_id: None,
        tls_version: None,
    };
    for (kind, value) in tlvs(rest)? {
        match kind {
            PP2_TYPE_SPIFFE_ID => h.spiffe_id = Some(String::from_utf8(value.to_vec()).ok()?),
            PP2_TYPE_SSL => {
                for (sub, v) in tlvs(value.get(5..)?)? {
                    if sub == PP2_SUBTYPE_SSL_VERSION {
                        h.tls_version = Some(String::from_utf8(v.to_vec()).ok()?);
                    }
                }
            }
            _ => {}
        }
    }
    Some((h, 16 + len))
}

fn tlvs(mut b: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let kind = *b.first()?;
        let len = u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize;
        let value = b.get(3..3 + len)?;
        out.push((kind, value));
        b = &b[3 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for (src, dst) in [
            ("10.0.0.1:40000", "10.0.0.2:15443"),
            ("[fd00::1]:40000", "[fd00::2]:15443"),
        ] {
            let src: SocketAddr = src.parse().expect("addr");
            let dst: SocketAddr = dst.parse().expect("addr");
            let mut bytes = encode(src, dst, "spiffe://td/ns/a/sa/b", "TLSv1.3");
            let n = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (h, used) = decode(&bytes).expect("decode");
            assert_eq!(used, n);
            assert_eq!(h.src, src);
            assert_eq!(h.dst, dst);
            assert_eq!(h.spiffe_id.as_deref(), Some("spiffe://td/ns/a/sa/b"));
            assert_eq!(h.tls_version.as_deref(), Some("TLSv1.3"));
        }
    }

    #[test]
    fn refuses_truncated_or_foreign_input() {
        let src: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let bytes = encode(src, src, "spiffe://td/x", "TLSv1.3");
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_none(), "{n}");
        }
        assert!(decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").is_none());
    }
}
