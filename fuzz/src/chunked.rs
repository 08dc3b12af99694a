//! A strict decoder for the chunked transfer coding (RFC 9112 §7.1) as a client reads
//! it: `chunk-size CRLF chunk-data CRLF`, repeated, then `0 CRLF CRLF`. It accepts no
//! chunk extensions and no trailers, which the engine never sends.

/// A chunked body, decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Body {
    /// The chunk data, joined.
    pub data: Vec<u8>,
    /// How many data chunks there were (the last, empty one not counted).
    pub chunks: usize,
    /// Whether the last chunk came.
    pub ended: bool,
}

/// Decodes `wire`, which must hold whole chunks only.
///
/// # Errors
///
/// A sentence naming what is wrong: a size that is not hex, a missing CRLF, bytes after
/// the last chunk, or a chunk cut short.
pub fn decode(wire: &[u8]) -> Result<Body, String> {
    let mut body = Body {
        data: Vec::new(),
        chunks: 0,
        ended: false,
    };
    let mut rest = wire;
    while !rest.is_empty() {
        if body.ended {
            return Err(format!("{} bytes after the last chunk", rest.len()));
        }
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without CRLF")?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("bad chunk size {:?}", &rest[..line_end]))?;
        rest = &rest[line_end + 2..];
        let chunk = rest.get(..size).ok_or("chunk cut short")?;
        if size == 0 {
            body.ended = true;
        } else {
            body.data.extend_from_slice(chunk);
            body.chunks += 1;
        }
        rest = rest[size..]
            .strip_prefix(b"\r\n")
            .ok_or("chunk data not followed by CRLF")?;
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        let b = decode(b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            (b.data.as_slice(), b.chunks, b.ended),
            (&b"abc0123456789"[..], 2, true)
        );
        assert_eq!(decode(b"").unwrap().chunks, 0);
        assert!(decode(b"3\r\nabcd\r\n").is_err());
        assert!(decode(b"3;x=1\r\nabc\r\n").is_err());
        assert!(decode(b"0\r\n\r\n1\r\na\r\n").is_err());
        assert!(decode(b"+3\r\nabc\r\n").is_err());
    }
}
