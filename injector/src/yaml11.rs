//! YAML as kubectl reads it, for `keyward inject`.
//!
//! kubectl turns YAML into JSON with a YAML 1.1 reader (go-yaml v2 under sigs.k8s.io/yaml): the
//! plain scalars `yes`, `on`, `off`, `y`, `NO` are booleans, `0777` is octal, `1_000` and `1e3`
//! are numbers, `~` is null; merge keys (`<<: *anchor`) are resolved; duplicate keys are an
//! error. [`read_stream`] reads a stream with exactly those rules (from the parser's events, so
//! it knows which scalars were plain), and [`write_value`] writes JSON values back so that every
//! YAML reader, 1.1 or 1.2, reads the same values: a string is written plain only when no reader
//! could take it for anything else.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A document that cannot be read as kubectl reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} (line {line})")]
pub struct ReadError {
    /// Field path of the node (`spec.template.spec.containers[0]`), empty at the top.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// 1-based line.
    pub line: usize,
}

/// One document of a stream: its value, or why it cannot be read. A document with a problem is
/// still read to its end (its value is partial), so the error can name its kind and name.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    pub error: Option<ReadError>,
}

#[derive(Debug)]
enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        seg: String,
    },
    Map {
        entries: Map<String, Value>,
        /// Merge sources (`<<`), with the keys set explicitly before each.
        merges: Vec<(Value, Vec<String>, usize)>,
        key: Option<Key>,
        anchor: usize,
        seg: String,
    },
}

#[derive(Debug)]
enum Key {
    Plain(String),
    Merge,
}

/// Reads a YAML stream into documents. A syntax error ends the stream: `Err((index, error))`
/// with the 1-based index of the document it is in.
pub fn read_stream(text: &str) -> Result<Vec<Document>, (usize, ReadError)> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut reader = Reader::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            (
                docs.len() + 1,
                ReadError {
                    path: reader.path(),
                    problem: format!("not valid YAML: {}", e.info()),
                    line: e.marker().line(),
                },
            )
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => reader = Reader::default(),
            Event::DocumentEnd => {
                let r = std::mem::take(&mut reader);
                docs.push(Document {
                    value: r.done.unwrap_or(Value::Null),
                    error: r.error,
                });
            }
            other => reader.event(other, &mark),
        }
    }
    Ok(docs)
}

/// Most nodes that aliases may copy into one document. Real manifests use a handful of anchors
/// for shared env or labels; a document over this is an attack on the reader, not a manifest
/// (kubectl's YAML library refuses "excessive aliasing" the same way).
const MAX_ALIAS_NODES: usize = 100_000;

/// Nodes in a value, itself included.
fn node_count(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(node_count).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(node_count).sum::<usize>(),
        _ => 1,
    }
}

#[derive(Debug, Default)]
struct Reader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    /// Nodes copied in by aliases so far in this document (bounded: see [`MAX_ALIAS_NODES`]).
    alias_nodes: usize,
    done: Option<Value>,
    error: Option<ReadError>,
}

fn is_core_tag(tag: &Tag, name: &str) -> bool {
    (tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!") && tag.suffix == name
}

impl Reader {
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            let seg = match f {
                Frame::Seq { seg, .. } | Frame::Map { seg, .. } => seg,
            };
            out.push_str(seg);
        }
        // The node being read: the key's value in a map, the next item in a sequence.
        match self.stack.last() {
            Some(Frame::Map {
                key: Some(Key::Plain(k)),
                ..
            }) => push_key(&mut out, k),
            Some(Frame::Seq { items, .. }) => out.push_str(&format!("[{}]", items.len())),
            _ => {}
        }
        out.trim_start_matches('.').to_owned()
    }

    fn fail(&mut self, problem: String, mark: &Marker) {
        if self.error.is_none() {
            self.error = Some(ReadError {
                path: self.path(),
                problem,
                line: mark.line(),
            });
        }
    }

    /// The path segment of a node starting now (its key or index in the parent).
    fn child_seg(&self) -> String {
        match self.stack.last() {
            Some(Frame::Seq { items, .. }) => format!("[{}]", items.len()),
            Some(Frame::Map {
                key: Some(Key::Plain(k)),
                ..
            }) => {
                let mut s = String::new();
                push_key(&mut s, k);
                s
            }
            Some(Frame::Map {
                key: Some(Key::Merge),
                ..
            }) => ".<<".to_owned(),
            _ => String::new(),
        }
    }

    fn event(&mut self, event: Event, mark: &Marker) {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                // A key?
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    let key = if style == TScalarStyle::Plain && tag.is_none() && text == "<<" {
                        Key::Merge
                    } else {
                        match scalar(&text, style, tag.as_ref()) {
                            Ok(v) => match key_string(&v) {
                                Some(k) => Key::Plain(k),
                                None => {
                                    self.fail(
                                        format!("key '{text}' cannot be a JSON object key"),
                                        mark,
                                    );
                                    Key::Plain(text.clone())
                                }
                            },
                            Err(problem) => {
                                self.fail(format!("key '{text}': {problem}"), mark);
                                Key::Plain(text.clone())
                            }
                        }
                    };
                    if let Key::Plain(k) = &key {
                        let dup = matches!(self.stack.last(), Some(Frame::Map { entries, .. }) if entries.contains_key(k));
                        if dup && self.error.is_none() {
                            let parent = self.path();
                            let mut path = parent.clone();
                            push_key(&mut path, k);
                            self.error = Some(ReadError {
                                path: path.trim_start_matches('.').to_owned(),
                                problem: format!(
                                    "duplicate key '{k}' in {}; kubectl refuses a mapping with a key twice",
                                    if parent.is_empty() { "the top level" } else { &parent }
                                ),
                                line: mark.line(),
                            });
                        }
                    }
                    if let Some(Frame::Map { key: slot, .. }) = self.stack.last_mut() {
                        *slot = Some(key);
                    }
                    if anchor > 0 {
                        self.anchors.insert(anchor, Value::String(text));
                    }
                    return;
                }
                let value = match scalar(&text, style, tag.as_ref()) {
                    Ok(v) => v,
                    Err(problem) => {
                        self.fail(format!("'{text}': {problem}"), mark);
                        Value::String(text)
                    }
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.complete(value, mark);
            }
            Event::Alias(id) => {
                // Each alias copies its anchor's whole value: bound the total, so a small
                // document of nested aliases ("billion laughs") cannot take all memory.
                let size = self.anchors.get(&id).map(node_count).unwrap_or(1);
                self.alias_nodes = self.alias_nodes.saturating_add(size);
                if self.alias_nodes > MAX_ALIAS_NODES {
                    if self.error.is_none() {
                        self.fail(
                            format!(
                                "aliases expand to more than {MAX_ALIAS_NODES} nodes; \
                                 refusing a document with excessive aliasing"
                            ),
                            mark,
                        );
                    }
                    self.complete(Value::Null, mark);
                    return;
                }
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    match value {
                        Value::String(s) => {
                            self.event(Event::Scalar(s, TScalarStyle::SingleQuoted, 0, None), mark)
                        }
                        _ => self.fail("an alias to a collection cannot be a key".into(), mark),
                    }
                    return;
                }
                self.complete(value, mark);
            }
            Event::SequenceStart(anchor, _) => {
                let seg = self.child_seg();
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                    seg,
                });
            }
            Event::MappingStart(anchor, _) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.fail("a collection cannot be a key".into(), mark);
                }
                let seg = self.child_seg();
                self.stack.push(Frame::Map {
                    entries: Map::new(),
                    merges: Vec::new(),
                    key: None,
                    anchor,
                    seg,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor, .. }) = self.stack.pop() {
                    let v = Value::Array(items);
                    if anchor > 0 {
                        self.anchors.insert(anchor, v.clone());
                    }
                    self.complete(v, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut entries,
                    merges,
                    anchor,
                    ..
                }) = self.stack.pop()
                {
                    let explicit: Vec<String> = entries.keys().cloned().collect();
                    let mut merged_keys: Vec<String> = Vec::new();
                    for (source, before, line) in merges {
                        // A sequence of maps: earlier ones take precedence.
                        let maps: Vec<Map<String, Value>> = match source {
                            Value::Object(m) => vec![m],
                            Value::Array(items) => items
                                .into_iter()
                                .filter_map(|i| match i {
                                    Value::Object(m) => Some(m),
                                    _ => None,
                                })
                                .collect(),
                            _ => Vec::new(),
                        };
                        for m in maps {
                            for (k, v) in m {
                                if before.contains(&k) {
                                    // go-yaml v2 (kubectl) lets the merge override keys set
                                    // before `<<`, the YAML spec does not: readers disagree.
                                    if self.error.is_none() {
                                        let mut path = self.path();
                                        push_key(&mut path, &k);
                                        self.error = Some(ReadError {
                                            path: path.trim_start_matches('.').to_owned(),
                                            problem: format!(
                                                "key '{k}' is set before a merge key (<<) that also sets it; YAML readers disagree on which wins (put << first)"
                                            ),
                                            line,
                                        });
                                    }
                                    continue;
                                }
                                if explicit.contains(&k) || merged_keys.contains(&k) {
                                    continue;
                                }
                                merged_keys.push(k.clone());
                                entries.insert(k, v);
                            }
                        }
                    }
                    let v = Value::Object(entries);
                    if anchor > 0 {
                        self.anchors.insert(anchor, v.clone());
                    }
                    self.complete(v, mark);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }

    /// A node is complete: give it to its parent.
    fn complete(&mut self, value: Value, mark: &Marker) {
        let line = mark.line();
        match self.stack.last_mut() {
            None => self.done = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                entries,
                merges,
                key,
                ..
            }) => match key.take() {
                Some(Key::Plain(k)) => {
                    // The first of duplicate keys is kept (the error is already recorded).
                    entries.entry(k).or_insert(value);
                }
                Some(Key::Merge) => {
                    let ok = match &value {
                        Value::Object(_) => true,
                        Value::Array(items) => items.iter().all(Value::is_object),
                        _ => false,
                    };
                    let before = entries.keys().cloned().collect();
                    merges.push((value, before, line));
                    if !ok {
                        self.fail(
                            "a merge key (<<) takes a mapping or a sequence of mappings".into(),
                            mark,
                        );
                    }
                }
                None => {}
            },
        }
    }
}

fn push_key(out: &mut String, k: &str) {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        out.push('.');
        out.push_str(k);
    } else {
        out.push_str(&format!("[{k:?}]"));
    }
}

/// A JSON object key for a YAML key value, as sigs.k8s.io/yaml makes it.
fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
        Value::Null => Some("null".to_owned()),
        _ => None,
    }
}

/// The value of a scalar, as go-yaml v2 resolves it.
fn scalar(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        if is_core_tag(tag, "str") {
            return Ok(Value::String(text.to_owned()));
        }
        let resolved = resolve_plain(text)?;
        let ok = match &resolved {
            Value::Null => is_core_tag(tag, "null"),
            Value::Bool(_) => is_core_tag(tag, "bool"),
            Value::Number(n) => {
                is_core_tag(tag, "float") || (is_core_tag(tag, "int") && !n.is_f64())
            }
            _ => false,
        };
        if ok {
            return Ok(resolved);
        }
        return Err(format!(
            "tag {}{} is not supported here",
            tag.handle, tag.suffix
        ));
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    resolve_plain(text)
}

/// Resolves a plain scalar by YAML 1.1 rules (go-yaml v2's `resolve`).
pub fn resolve_plain(s: &str) -> Result<Value, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Ok(Value::Bool(true))
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Ok(Value::Bool(false))
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err("is an infinite or NaN float, which kubectl cannot turn into JSON".into())
        }
        _ => {}
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Ok(Value::String(s.to_owned()));
    }
    let plain: String = s.chars().filter(|c| *c != '_').collect();
    if let Some(n) = parse_go_int(&plain) {
        return Ok(n);
    }
    if is_yaml_float(&plain) {
        if let Some(n) = plain.parse::<f64>().ok().and_then(Number::from_f64) {
            return Ok(Value::Number(n));
        }
    }
    Ok(Value::String(s.to_owned()))
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint` (sign, 0x, 0o, 0b, leading-0 octal).
fn parse_go_int(s: &str) -> Option<Value> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if neg {
        let v = 0i64.checked_sub_unsigned(magnitude)?;
        Some(Value::from(v))
    } else {
        Some(Value::from(magnitude))
    }
}

/// go-yaml v2's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && matches!(b[i], b'+' | b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Whether a string may be written as a plain scalar: every YAML reader (1.1: kubectl,
/// PyYAML; 1.2: serde_yaml, Helm's) reads it back as this same string.
pub fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe_chars = s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '_'
                    | '.'
                    | '/'
                    | '@'
                    | '+'
                    | '='
                    | ':'
                    | ' '
                    | ','
                    | '('
                    | ')'
                    | '$'
                    | '%'
                    | '*'
                    | '~'
                    | '#'
            )
    });
    if !safe_chars
        || !(first.is_ascii_alphanumeric() || matches!(first, '/' | '_' | '.' | '-' | '$' | '('))
        || s.starts_with("- ")
        || s.starts_with("---")
        || s == "-"
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains("  ")
        || s == "="
        || s == "<<"
    {
        return false;
    }
    // YAML 1.1 and 1.2 resolution: must stay a string.
    if !matches!(resolve_plain(s), Ok(Value::String(_))) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    let b = s.as_bytes();
    // 1.2 core: 0o17, .inf/.nan spellings; PyYAML: sexagesimal 1:30, dates 2001-12-14,
    // floats with underscores.
    let numeric_ish = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ':' | '_' | '.' | '+' | '-' | 'e' | 'E'));
    let dateish = b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
    !(lower.starts_with("0o")
        || lower.contains(".inf")
        || lower.contains(".nan")
        || numeric_ish
        || dateish)
}

/// Writes a number so that YAML 1.1 and 1.2 readers read the same number (a float keeps a `.`
/// and a signed exponent).
fn number(n: &Number) -> String {
    let s = n.to_string();
    if !n.is_f64() {
        return s;
    }
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m.to_owned(), Some(e.to_owned())),
        None => (s.clone(), None),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa
    } else {
        format!("{mantissa}.0")
    };
    match exp {
        None => mantissa,
        Some(e) if e.starts_with(['+', '-']) => format!("{mantissa}e{e}"),
        Some(e) => format!("{mantissa}e+{e}"),
    }
}

fn quoted(s: &str) -> String {
    let printable = s
        .chars()
        .all(|c| !c.is_control() && c != '\u{feff}' && c != '\u{2028}' && c != '\u{2029}');
    if printable {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        // JSON string escapes are valid in YAML double-quoted scalars.
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}') => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

fn scalar_text(s: &str) -> String {
    if plain_ok(s) {
        s.to_owned()
    } else {
        quoted(s)
    }
}

/// A literal block (`|`) for a multi-line string, when it reads back exactly.
fn literal_block(s: &str, indent: usize) -> Option<String> {
    if !s.contains('\n')
        || s.chars().any(|c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}' | '\u{85}')
        })
    {
        return None;
    }
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    if body.is_empty() {
        return None;
    }
    let lines: Vec<&str> = body.split('\n').collect();
    // Lines of only spaces, or with trailing spaces, are left to double quotes.
    if lines
        .iter()
        .any(|l| l.ends_with(' ') || (!l.is_empty() && l.trim().is_empty()))
    {
        return None;
    }
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let indicator = if lines[0].starts_with(' ') || lines[0].is_empty() {
        "2"
    } else {
        ""
    };
    let pad = " ".repeat(indent);
    let mut out = format!("|{indicator}{chomp}\n");
    for l in &lines {
        if l.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&pad);
            out.push_str(l);
            out.push('\n');
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

/// Writes one value as a block YAML document body (no `---`).
pub fn write_value(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&inline(other, 0).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// A value that fits after `key: ` or `- ` (scalars, empty collections, literal blocks), with
/// its newline when it is a block.
fn inline(v: &Value, indent: usize) -> Option<String> {
    Some(match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n),
        Value::String(s) => match literal_block(s, indent) {
            Some(block) => block,
            None => scalar_text(s),
        },
        Value::Object(m) if m.is_empty() => "{}".to_owned(),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        _ => return None,
    })
}

fn write_entry_value(out: &mut String, v: &Value, indent: usize, seq_inline: bool) {
    match inline(v, indent + 2) {
        Some(text) => {
            out.push(' ');
            out.push_str(&text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        None => {
            out.push('\n');
            match v {
                Value::Object(m) => write_map(out, m, indent + 2),
                Value::Array(a) => write_seq(out, a, if seq_inline { indent } else { indent + 2 }),
                _ => {}
            }
        }
    }
}

fn write_map(out: &mut String, m: &Map<String, Value>, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&scalar_text(k));
        out.push(':');
        write_entry_value(out, v, indent, true);
    }
}

fn write_seq(out: &mut String, a: &[Value], indent: usize) {
    for item in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                write_map(out, m, indent + 2);
            }
            _ => write_entry_value(out, item, indent, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        for (s, v) in [
            ("yes", Value::Bool(true)),
            ("NO", Value::Bool(false)),
            ("on", Value::Bool(true)),
            ("y", Value::Bool(true)),
            ("~", Value::Null),
            ("0777", Value::from(511)),
            ("1_000", Value::from(1000)),
            ("0x1F", Value::from(31)),
            ("-12", Value::from(-12)),
            ("1e3", serde_json::json!(1000.0)),
            ("09", serde_json::json!(9.0)),
            ("2001-12-14", Value::from("2001-12-14")),
            ("v1", Value::from("v1")),
        ] {
            assert_eq!(resolve_plain(s).expect(s), v, "{s}");
        }
        assert!(resolve_plain(".inf").is_err());
    }

    #[test]
    fn nested_aliases_are_refused_before_they_expand() {
        // Each level is ten aliases of the one before: 10^9 strings if expanded.
        let mut doc = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        let docs = read_stream(&doc).expect("the stream parses");
        let err = docs[0].error.as_ref().expect("refused");
        assert!(
            err.problem.contains("excessive aliasing"),
            "{}",
            err.problem
        );
        assert!(node_count(&docs[0].value) < 2 * MAX_ALIAS_NODES);
        // A manifest's ordinary anchors are fine.
        let ok = read_stream("env: &env [{name: A, value: b}]\nx: *env\ny: *env\n").expect("ok");
        assert!(ok[0].error.is_none());
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "yes",
            "on",
            "off",
            "NO",
            "y",
            "1_000",
            "0777",
            "1e3",
            ".inf",
            "~",
            "null",
            "",
            "0o17",
            "1:30",
            "2001-12-14",
            "12",
            "-1",
            "<<",
            "=",
            "a: b",
            "- x",
            "#x",
            "x #y",
            "@x",
            "true",
            "1.5",
            ".5",
            "+1",
        ] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
        }
        for s in [
            "v1",
            "app",
            "registry.example/a:1",
            "--listen=0.0.0.0:8443",
            "keyward.io/secret-db",
        ] {
            assert!(plain_ok(s), "{s:?} can be plain");
        }
    }
}
