//! The fast path of verification: a line whose record is already in the writer's form — its
//! members, `hash` left out, in RFC 8785 canonical form (JCS), `hash` the last member — is its
//! own canonical text, so its hash is the SHA-256 of those bytes (with the closing brace), taken
//! straight from the line: no JSON value built, no text rewritten, nothing allocated.
//!
//! [`written_record`] accepts a line only when that is certain, and says nothing (`None`) about
//! any other line, which then goes the general way (parse into a value, canonicalise it through
//! the JCS crate): what it accepts is a strict subset of what the general way reads, and gives
//! the same record, chain members and hash (`verify::tests::the_written_form_reads_as_the_general_way`
//! checks it on real records, RFC 8785's examples, pipeline rewritings and every one-byte
//! change of them). Accepted, inside the object:
//!
//! - no whitespace;
//! - member names of printable ASCII without escapes, strictly increasing (bytes order is then
//!   UTF-16 order, and no name is repeated), `hash` only as the last member of the record;
//! - strings with exactly the escapes JCS writes (`\" \\ \b \f \n \r \t`, other control
//!   characters as lower-case `\u00xx`, nothing else escaped);
//! - numbers only as integers of at most 2^53 - 1 in magnitude, without leading zeros, not `-0`
//!   (ECMAScript prints those as written);
//! - `true`, `false`, `null`, arrays, objects at most [`MAX_DEPTH`] deep.
//!
//! And, around it, as [`crate::extract_record`] reads a record: anything before the first `{`,
//! nothing but JSON whitespace after the object; the record has a numeric `seq` and string `prev`
//! and `hash`, and none of the members a pipeline's envelope holds the logged line in (those
//! lines go the general way, which looks inside them first).

use std::borrow::Cow;

use sha2::{Digest, Sha256};

/// Integers up to this magnitude are printed by ECMAScript as their digits.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// Objects and arrays nested deeper go the general way.
const MAX_DEPTH: usize = 64;

/// The members [`crate::extract_record`] looks into first (a pipeline's envelope).
const LINE_KEYS: [&[u8]; 5] = [b"log", b"message", b"msg", b"line", b"_raw"];

/// A record line in the writer's form, read in place.
#[derive(Debug)]
pub(crate) struct Written<'a> {
    /// `None` when the record has no `chain` member or it is not a string.
    pub chain: Option<Cow<'a, str>>,
    pub seq: u64,
    pub prev: Cow<'a, str>,
    pub hash: Cow<'a, str>,
    /// The JSON text of the `prev_chain` member.
    pub prev_chain: Option<&'a str>,
    /// The JSON text of the `pod` member.
    pub pod: Option<&'a str>,
    /// SHA-256 of the canonical form (the record without `hash`).
    pub content: [u8; 32],
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string in JCS form: its content's range and whether it holds escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let n = self.b[self.i..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            self.i += n;
            match self.b[self.i] {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match *self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            // Only control characters without a short escape, lower-case hex.
                            let v = match self.b.get(self.i + 2..self.i + 6)? {
                                [b'0', b'0', hi @ (b'0' | b'1'), lo] => {
                                    let lo = match lo {
                                        b'0'..=b'9' => lo - b'0',
                                        b'a'..=b'f' => lo - b'a' + 10,
                                        _ => return None,
                                    };
                                    (hi - b'0') << 4 | lo
                                }
                                _ => return None,
                            };
                            if matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                // A raw control character: not JSON.
                _ => return None,
            }
        }
    }

    /// A member name: printable ASCII, no escapes.
    fn key(&mut self) -> Option<&'a [u8]> {
        let b = self.b;
        let (s, e, escaped) = self.string()?;
        let k = &b[s..e];
        (!escaped && k.is_ascii()).then_some(k)
    }

    /// An integer ECMAScript prints as written: `Some(n)` when it is not negative.
    fn number(&mut self) -> Option<Option<u64>> {
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        if digits.is_empty()
            || digits.len() > 16
            || (digits[0] == b'0' && digits.len() > 1)
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let v = digits
            .iter()
            .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        if v > MAX_SAFE || (neg && v == 0) {
            return None;
        }
        Some((!neg).then_some(v))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.value(depth)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut last: Option<&[u8]> = None;
        loop {
            let key = self.key()?;
            if last.is_some_and(|l| l >= key) {
                return None;
            }
            last = Some(key);
            self.eat(b':')?;
            self.value(depth)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// The text of the string whose content is `line[s..e]`, unescaped where it has escapes.
fn text(line: &str, (s, e, escaped): (usize, usize, bool)) -> Option<Cow<'_, str>> {
    if escaped {
        serde_json::from_str(line.get(s - 1..e + 1)?)
            .ok()
            .map(Cow::Owned)
    } else {
        line.get(s..e).map(Cow::Borrowed)
    }
}

/// The record in `line` when it is in the writer's form (see the module); `None` says only
/// that it is not, not that there is no record.
pub(crate) fn written_record(line: &str) -> Option<Written<'_>> {
    let b = line.as_bytes();
    let start = b.iter().position(|&c| c == b'{')?;
    let mut s = Scan { b, i: start + 1 };
    let mut last: Option<&[u8]> = None;
    let mut chain = None;
    let mut seq = None;
    let mut prev = None;
    let mut prev_chain = None;
    let mut pod = None;
    loop {
        let member = s.i;
        let key = s.key()?;
        s.eat(b':')?;
        if key == b"hash" {
            let hash = s.string()?;
            s.eat(b'}')?;
            if member == start + 1
                || !b[s.i..]
                    .iter()
                    .all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            {
                return None;
            }
            let mut h = Sha256::new();
            // Everything before the `,` that precedes `"hash"`, and the closing brace.
            h.update(&b[start..member - 1]);
            h.update(b"}");
            return Some(Written {
                chain: match chain {
                    Some(c) => Some(text(line, c)?),
                    None => None,
                },
                seq: seq?,
                prev: text(line, prev?)?,
                hash: text(line, hash)?,
                prev_chain,
                pod,
                content: h.finalize().into(),
            });
        }
        if LINE_KEYS.contains(&key) || last.is_some_and(|l| l >= key) {
            return None;
        }
        last = Some(key);
        let from = s.i;
        match key {
            b"seq" => seq = Some(s.number()??),
            b"prev" => prev = Some(s.string()?),
            b"chain" if s.peek() == Some(b'"') => chain = Some(s.string()?),
            b"prev_chain" => {
                s.value(1)?;
                prev_chain = Some(line.get(from..s.i)?);
            }
            b"pod" => {
                s.value(1)?;
                pod = Some(line.get(from..s.i)?);
            }
            _ => s.value(1)?,
        }
        // The record goes on: it ends with `hash`.
        s.eat(b',')?;
    }
}
