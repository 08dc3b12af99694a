//! The little JSON the engine writes itself: string escaping for event frames and control
//! messages (RFC 8259 §7). Parsing client messages is serde_json's job.

/// Appends `s` as a JSON string literal, quotes included. Escapes what RFC 8259 requires
/// plus U+2028 and U+2029, which some JavaScript parsers reject in strings.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
        }
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// [`push_string`] into a `String`.
pub fn string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_string(&mut out, s);
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_json_requires() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string("a\"b\\c\nd\re\tf"), r#""a\"b\\c\nd\re\tf""#);
        assert_eq!(string("\u{1}\u{1f}\u{2028}é😀"), "\"\\u0001\\u001f\\u2028é😀\"");
    }

    #[test]
    fn output_parses_back_to_the_input() {
        for s in [
            "",
            "x",
            "\"",
            "\\\\",
            "line\nbreak",
            "\u{0}\u{7f}\u{2029}",
            "日本語 ✓",
        ] {
            let parsed: String = serde_json::from_str(&string(s)).unwrap();
            assert_eq!(parsed, s);
        }
    }
}
