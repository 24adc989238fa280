//! Text that crossed a trust boundary (a guest's findings and log lines, an
//! agent's reports to the control plane) made safe to put on one line of a log,
//! a terminal or a page: every control character is escaped and the length is
//! bounded. One function, so the sandbox and the control plane apply the same rule.
use std::fmt::Write as _;

/// Marker appended to text cut at its bound, so a reader knows it is incomplete.
pub const TRUNCATED: &str = "…(truncated)";

/// Bound for a finding or issue code.
pub const MAX_CODE: usize = 64;
/// Bound for a finding message or an issue description.
pub const MAX_MESSAGE: usize = 2048;
/// Bound for a finding's remediation.
pub const MAX_REMEDIATION: usize = 2048;
/// Bound for one guest log line.
pub const MAX_LOG_LINE: usize = 2048;
/// Bound for a short label (a check's name or version, a host name, an issue source).
pub const MAX_LABEL: usize = 256;

/// Characters that would break a line, move the cursor, recolour or retitle a
/// terminal, or reorder what a reader sees: C0 and C1 controls, DEL, the Unicode
/// line and paragraph separators, and the bidirectional overrides and isolates.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `text` with every character [`must_escape`] shows as an escape (`\n`, `\r`,
/// `\t`, `\u{1b}`), cut at a character boundary so the escaped text is at most
/// `max_bytes` long, then followed by [`TRUNCATED`]. Printable text, including
/// non-ASCII, is kept as is. The result never contains a control character.
pub fn sanitize(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes) + TRUNCATED.len());
    let mut esc = String::new();
    for c in text.chars() {
        esc.clear();
        if must_escape(c) {
            match c {
                '\n' => esc.push_str("\\n"),
                '\r' => esc.push_str("\\r"),
                '\t' => esc.push_str("\\t"),
                _ => {
                    let _ = write!(esc, "\\u{{{:x}}}", c as u32);
                }
            }
        } else {
            esc.push(c);
        }
        if out.len() + esc.len() > max_bytes {
            out.push_str(TRUNCATED);
            return out;
        }
        out.push_str(&esc);
    }
    out
}

/// Is `text` already what [`sanitize`] would keep unchanged (no character to escape)?
pub fn is_clean(text: &str) -> bool {
    !text.chars().any(must_escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_terminal_escapes_are_shown_not_obeyed() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO Pre-upgrade validation tests successful\r\x1b]0;owned\x07\x1b[31m";
        let s = sanitize(forged, MAX_MESSAGE);
        assert_eq!(
            s,
            "ok\\n2026-01-01T00:00:00Z  INFO Pre-upgrade validation tests successful\\r\\u{1b}]0;owned\\u{7}\\u{1b}[31m"
        );
        assert!(is_clean(&s));
        for c in [
            '\u{85}', '\u{2028}', '\u{2029}', '\u{202e}', '\u{7f}', '\0', '\u{9b}',
        ] {
            let s = sanitize(&format!("a{c}b"), 64);
            assert!(is_clean(&s), "{c:?} -> {s:?}");
            assert!(s.starts_with("a\\u{") && s.ends_with("}b"), "{s}");
        }
    }

    #[test]
    fn printable_text_is_kept_and_long_text_is_cut_visibly() {
        assert_eq!(sanitize("Ünïcode – fine ✓", 64), "Ünïcode – fine ✓");
        let s = sanitize(&"é".repeat(100), 11);
        assert_eq!(s, format!("{}{TRUNCATED}", "é".repeat(5)));
        // An escape is never cut in half.
        let s = sanitize("abc\x1bdef", 8);
        assert_eq!(s, format!("abc{TRUNCATED}"));
        assert_eq!(sanitize("", 0), "");
        assert_eq!(sanitize("x", 0), TRUNCATED);
    }
}
