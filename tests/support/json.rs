//! A reader for flat JSON objects whose values are strings or `null` (RFC 8259), enough
//! to judge the data of `ringcast.reset` events without a JSON crate.
//!
//! Must never: accept what RFC 8259 rejects (trailing commas, unquoted names, raw
//! control characters in strings), so that a malformed reset fails a test.
use std::collections::BTreeMap;

/// A flat object: each name maps to a string, or `None` for `null`.
pub type FlatObject = BTreeMap<String, Option<String>>;

/// Parses `{"name": "value" | null, ...}`.
///
/// # Errors
///
/// A description of the first deviation from that shape or from RFC 8259, or a
/// repeated name.
pub fn parse_flat_object(text: &str) -> Result<FlatObject, String> {
    let mut p = Parser { rest: text };
    let mut object = FlatObject::new();
    p.expect('{')?;
    if !p.eat('}') {
        loop {
            let name = p.string()?;
            p.expect(':')?;
            let value = if p.eat_word("null") {
                None
            } else {
                Some(p.string()?)
            };
            if object.insert(name.clone(), value).is_some() {
                return Err(format!("name {name:?} repeated in {text:?}"));
            }
            if p.eat('}') {
                break;
            }
            p.expect(',')?;
        }
    }
    p.skip_ws();
    if !p.rest.is_empty() {
        return Err(format!("text after the object: {:?}", p.rest));
    }
    Ok(object)
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\n', '\r']);
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(c) {
            Some(after) => {
                self.rest = after;
                true
            }
            None => false,
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(word) {
            Some(after) => {
                self.rest = after;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {c:?} at {:?}", self.rest))
        }
    }

    /// A string: `"` chars with escapes (RFC 8259 §7) `"`.
    fn string(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[at + 1..];
                    return Ok(out);
                }
                '\\' => {
                    let (_, e) = chars.next().ok_or("unterminated escape")?;
                    match e {
                        '"' | '\\' | '/' => out.push(e),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => out.push(unicode_escape(&mut chars)?),
                        _ => return Err(format!("bad escape \\{e}")),
                    }
                }
                c if u32::from(c) < 0x20 => return Err(format!("raw control character {c:?} in a string")),
                c => out.push(c),
            }
        }
        Err("unterminated string".to_owned())
    }
}

/// The four hex digits after `\u`, and a low surrogate escape after a high one.
pub(crate) fn unicode_escape(chars: &mut std::str::CharIndices<'_>) -> Result<char, String> {
    let first = hex4(chars)?;
    if !(0xD800..0xDC00).contains(&first) {
        return char::from_u32(first).ok_or_else(|| format!("lone surrogate \\u{first:04x}"));
    }
    let (Some((_, '\\')), Some((_, 'u'))) = (chars.next(), chars.next()) else {
        return Err(format!("high surrogate \\u{first:04x} without a low one"));
    };
    let second = hex4(chars)?;
    if !(0xDC00..0xE000).contains(&second) {
        return Err(format!("\\u{first:04x} followed by \\u{second:04x}"));
    }
    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
    char::from_u32(code).ok_or_else(|| format!("bad surrogate pair to {code:x}"))
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Result<u32, String> {
    let mut value = 0;
    for _ in 0..4 {
        let (_, c) = chars.next().ok_or("short \\u escape")?;
        value = value * 16
            + c.to_digit(16)
                .ok_or_else(|| format!("bad hex digit {c:?} in \\u escape"))?;
    }
    Ok(value)
}
