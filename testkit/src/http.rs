//! HTTP/1.1 answers read as bytes (from the broker's socket, a duplex stream, ...): one parser
//! for every test that talks HTTP to the broker.

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The first header named `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Parses a whole answer: status line and headers up to the blank line, the rest is the body
/// (an answer cut off before the blank line is all head). Panics when there is no status.
pub fn parse(buf: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The `Content-Length` of a message head (its header lines, any case), 0 when it has none.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_split_into_status_head_and_body() {
        let a = parse(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nX-Keyward-Index: 7\r\n\r\n{\"error\":\"forbidden\"}");
        assert_eq!(a.status, 403);
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert_eq!(a.header("X-KEYWARD-INDEX"), Some("7"));
        assert_eq!(a.header("missing"), None);
        assert_eq!(a.json()["error"], "forbidden");
    }

    #[test]
    fn an_answer_cut_off_before_the_blank_line_is_all_head() {
        let a = parse(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close");
        assert_eq!(a.status, 431);
        assert_eq!(a.body, "");
        assert_eq!(a.header("connection"), Some("close"));
    }

    #[test]
    #[should_panic(expected = "no HTTP status")]
    fn bytes_without_a_status_line_are_refused() {
        parse(b"");
    }
}
