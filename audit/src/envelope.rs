//! Finding the audit record in a line as a log pipeline delivers it: the record itself, or
//! wrapped in an envelope (Fluent Bit's `{"log": "<line>", "kubernetes": {...}}`, Vector's
//! `{"message": "<line>", ...}`, the record as a nested object), with a timestamp prefix
//! (`kubectl logs --timestamps`, the node's CRI log format `TIME stdout F <line>`).

use serde_json::{Map, Value};

/// Envelope members that hold the logged line, tried before the others.
const LINE_KEYS: [&str; 5] = ["log", "message", "msg", "line", "_raw"];

/// How deep envelopes are searched.
const MAX_DEPTH: usize = 4;

/// The audit record in `line`, if there is one: the first JSON object, at most a few
/// envelopes deep, with string members `hash` and `prev` and a numeric `seq`.
pub fn extract_record(line: &str) -> Option<Map<String, Value>> {
    let start = line.find('{')?;
    let value: Value = serde_json::from_str(line[start..].trim_end()).ok()?;
    find(value, 0)
}

fn is_record(m: &Map<String, Value>) -> bool {
    m.get("hash").is_some_and(Value::is_string)
        && m.get("prev").is_some_and(Value::is_string)
        && m.get("seq").is_some_and(Value::is_u64)
}

fn find(value: Value, depth: usize) -> Option<Map<String, Value>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut map = match value {
        Value::Object(m) => m,
        Value::String(s) => {
            let start = s.find('{')?;
            let inner: Value = serde_json::from_str(s[start..].trim_end()).ok()?;
            return find(inner, depth + 1);
        }
        _ => return None,
    };
    // The logged line first: a pipeline that merged the record's members into its envelope
    // (Fluent Bit's Merge_Log) added its own members beside them, and its kept copy of the
    // line is the record as written.
    for key in LINE_KEYS {
        if let Some(v @ (Value::String(_) | Value::Object(_))) = map.get(key) {
            if let Some(found) = find(v.clone(), depth + 1) {
                return Some(found);
            }
        }
    }
    if is_record(&map) {
        return Some(map);
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if LINE_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some(v @ (Value::String(_) | Value::Object(_))) = map.remove(&key) {
            if let Some(found) = find(v, depth + 1) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"chain":"c1","hash":"ab","prev":"00","seq":3}"#;

    fn seq(line: &str) -> Option<u64> {
        extract_record(line).and_then(|m| m["seq"].as_u64())
    }

    #[test]
    fn raw_records_and_pipeline_envelopes_yield_the_record() {
        let quoted = serde_json::to_string(&format!("{RECORD}\n")).expect("json string");
        for line in [
            RECORD.to_owned(),
            format!("2026-01-02T03:04:05.123456789Z {RECORD}"),
            format!("2026-01-02T03:04:05.123456789Z stdout F {RECORD}"),
            format!(
                r#"{{"log":{quoted},"stream":"stdout","kubernetes":{{"pod_name":"p","namespace_name":"n"}}}}"#
            ),
            format!(
                r#"{{"message":{quoted},"kubernetes":{{"pod_labels":{{"app":"x"}}}},"timestamp":"t"}}"#
            ),
            format!(r#"{{"kubernetes":{{"pod_name":"p"}},"audit":{RECORD}}}"#),
            // Merge_Log with Keep_Log: the merged members and the kept line.
            format!(
                r#"{{"chain":"c1","hash":"ab","prev":"00","seq":9,"stream":"stdout","log":{quoted}}}"#
            ),
        ] {
            assert_eq!(seq(&line), Some(3), "{line}");
        }
    }

    #[test]
    fn a_record_is_found_up_to_max_depth_envelopes_deep_and_no_deeper() {
        let nested = |depth: usize| {
            (0..depth).fold(RECORD.to_owned(), |inner, i| {
                format!(r#"{{"wrap{i}":{inner}}}"#)
            })
        };
        assert_eq!(seq(&nested(MAX_DEPTH)), Some(3), "{}", nested(MAX_DEPTH));
        assert_eq!(
            seq(&nested(MAX_DEPTH + 1)),
            None,
            "{}",
            nested(MAX_DEPTH + 1)
        );
        // The same through a line member holding the record as an object.
        let in_log = |depth: usize| {
            (0..depth).fold(RECORD.to_owned(), |inner, _| {
                format!(r#"{{"log":{inner}}}"#)
            })
        };
        assert_eq!(seq(&in_log(MAX_DEPTH)), Some(3), "{}", in_log(MAX_DEPTH));
        assert_eq!(
            seq(&in_log(MAX_DEPTH + 1)),
            None,
            "{}",
            in_log(MAX_DEPTH + 1)
        );
        // Through logged lines too: a line member and the JSON in its string are one level each.
        let mut line = RECORD.to_owned();
        for _ in 0..MAX_DEPTH / 2 {
            line = format!(
                r#"{{"log":{}}}"#,
                serde_json::to_string(&line).expect("json")
            );
        }
        assert_eq!(seq(&line), Some(3), "{line}");
        let deeper = format!(
            r#"{{"log":{}}}"#,
            serde_json::to_string(&line).expect("json")
        );
        assert_eq!(seq(&deeper), None, "{deeper}");
    }

    #[test]
    fn lines_without_a_record_yield_none() {
        for line in [
            "",
            "plain text",
            r#"{"level":"info","msg":"Fetched secret"}"#,
            r#"{"log":"not json"}"#,
            r#"{"hash":"ab","prev":"00","seq":"3"}"#,
            "{\"log\":\"{\\\"log\\\":\\\"{\\\\\\\"log\\\\\\\":1}\\\"}\"}",
        ] {
            assert_eq!(seq(line), None, "{line}");
        }
    }
}
