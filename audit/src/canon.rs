//! The canonical form a record's hash covers: RFC 8785 JSON Canonicalization Scheme (JCS) of
//! the record without its `hash` member. Log pipelines re-serialise JSON (key order,
//! whitespace, escapes, `/` written as `\/`...); every such rewriting parses back to the same
//! value, so to the same canonical text and the same hash.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The JCS text of `value` (RFC 8785: members sorted by their UTF-16 code units, no whitespace,
/// the shortest escapes, numbers as ECMAScript prints them).
pub fn canonical(value: &Value) -> String {
    // Serialising a `Value` cannot fail: its map keys are strings and its numbers finite.
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

/// SHA-256 (hex) of the canonical form of `record` without its `hash` member.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let text = canonical_without_hash(record);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The canonical text of `record` with `hash` left out.
pub fn canonical_without_hash(record: &Map<String, Value>) -> String {
    if record.contains_key("hash") {
        let mut copy = record.clone();
        copy.remove("hash");
        canonical(&Value::Object(copy))
    } else {
        canonical(&Value::Object(record.clone()))
    }
}

/// The line the writer produces for a canonical body (the JCS text of the record without
/// `hash`) and its hash: the body with `,"hash":"<hex>"` before the closing brace.
pub fn line_of(body: &str, hash: &str) -> String {
    let mut text = String::with_capacity(body.len() + 76);
    text.push_str(body.strip_suffix('}').unwrap_or(body));
    if body.len() > 2 {
        text.push(',');
    }
    text.push_str("\"hash\":\"");
    text.push_str(hash);
    text.push_str("\"}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(text: &str) -> String {
        canonical(&serde_json::from_str(text).expect("json"))
    }

    /// RFC 8785 section 3.2.2 (the example object) and 3.2.3 (sorting).
    #[test]
    fn rfc8785_examples_canonicalise_as_the_rfc_prints_them() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50,
                      2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            jcs(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // 3.2.3: members sorted by UTF-16 code units, not by UTF-8 bytes or code points.
        let sorting = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        assert_eq!(
            jcs(sorting),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
             \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
             \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    /// RFC 8785 appendix B: IEEE 754 values and their canonical text.
    #[test]
    fn rfc8785_number_examples() {
        for (bits, text) in [
            (0x0000_0000_0000_0000_u64, "0"),
            (0x8000_0000_0000_0000, "0"),
            (0x0000_0000_0000_0001, "5e-324"),
            (0x8000_0000_0000_0001, "-5e-324"),
            (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
            (0x4340_0000_0000_0000, "9007199254740992"),
            (0x4430_0000_0000_0000, "295147905179352830000"),
            (0x44b5_2d02_c7e1_4af6, "1e+23"),
            (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
            (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
            (0x41b3_de43_5555_5553, "333333333.3333332"),
            (0x4415_af1d_78b5_8c40, "100000000000000000000"),
            (0x444b_1ae4_d6e2_ef50, "1e+21"),
        ] {
            let v = serde_json::Number::from_f64(f64::from_bits(bits)).expect("finite");
            assert_eq!(canonical(&Value::Number(v)), text, "{bits:#x}");
        }
    }

    #[test]
    fn rewritings_a_pipeline_makes_hash_the_same() {
        let written = r#"{"action":"secret.read","caller":{"comm":"a\u001fb","uid":7},"reason":"x/y é","seq":3}"#;
        let rewritten = "{ \"seq\" : 3,\n \"reason\": \"x\\/y \\u00e9\", \"caller\": {\"uid\": 7, \"comm\": \"a\\u001Fb\"}, \"action\": \"secret.read\" }";
        let a: Map<String, Value> = serde_json::from_str(written).expect("json");
        let b: Map<String, Value> = serde_json::from_str(rewritten).expect("json");
        assert_eq!(record_hash(&a), record_hash(&b));
        assert_eq!(canonical_without_hash(&a), written);
    }

    #[test]
    fn line_of_appends_the_hash_as_the_last_member() {
        assert_eq!(line_of(r#"{"a":1}"#, "ff"), r#"{"a":1,"hash":"ff"}"#);
        assert_eq!(line_of("{}", "ff"), r#"{"hash":"ff"}"#);
    }
}
