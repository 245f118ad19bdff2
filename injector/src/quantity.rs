//! Kubernetes resource quantities (`10m`, `0.5`, `64Mi`, `1e3`), parsed to compare them.

/// Parses a quantity in the API server's syntax into its value in base units, or `None` when
/// the text is not a quantity.
pub fn parse(s: &str) -> Option<f64> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let digits_start = end;
    let mut seen_dot = false;
    let mut seen_digit = false;
    while let Some(&b) = bytes.get(end) {
        if b.is_ascii_digit() {
            seen_digit = true;
        } else if b == b'.' && !seen_dot {
            seen_dot = true;
        } else {
            break;
        }
        end += 1;
    }
    if !seen_digit || end == digits_start {
        return None;
    }
    let number: f64 = s.get(..end)?.parse().ok()?;
    let suffix = s.get(end..)?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp => {
            let rest = exp.strip_prefix('e').or_else(|| exp.strip_prefix('E'))?;
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let e: i32 = rest.parse().ok()?;
            10f64.powi(e)
        }
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_kubernetes_quantities() {
        for (s, v) in [
            ("10m", 0.01),
            ("0.5", 0.5),
            ("1", 1.0),
            ("64Mi", 67108864.0),
            ("1Gi", 1073741824.0),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("2k", 2000.0),
            (".5", 0.5),
        ] {
            assert_eq!(parse(s), Some(v), "{s}");
        }
    }

    #[test]
    fn rejects_non_quantities() {
        for s in [
            "", "m", "10 m", "10mb", "abc", "1..2", "1Mi ", "--1", "1e", "1KiB",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }
}
