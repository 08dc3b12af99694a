//! WebSocket frames as the bench's clients and its kernel reference server see them,
//! sans-IO (RFC 6455 §5.2): a strict decoder of the unmasked frames a server sends, an
//! encoder of masked client frames, and the server side's unmasking decoder for the
//! kernel reference peer.
//!
//! Must never: touch a socket or a clock, or accept a masked server frame, a fragment, a
//! reserved bit or an unknown opcode (the peers under test send none of them).

/// Largest frame payload accepted (the benchmarks send at most 64 KiB events).
pub const PAYLOAD_MAX: usize = 1 << 20;

/// Text, binary, close, ping, pong opcodes (§5.2).
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One complete frame: its opcode and (unmasked) payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// The header of the frame at the start of `buf`: (opcode, masked, header length, payload
/// length), or `None` while incomplete.
///
/// # Errors
/// A fragment, a reserved bit, an unknown opcode, a payload over [`PAYLOAD_MAX`].
fn header(buf: &[u8]) -> Result<Option<(u8, bool, usize, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x70 != 0 {
        return Err(format!("frame byte 0 {b0:#04x}: a fragment or a reserved bit"));
    }
    let opcode = b0 & 0x0f;
    if ![OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG].contains(&opcode) {
        return Err(format!("unknown opcode {opcode:#x}"));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX), 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if len > PAYLOAD_MAX {
        return Err(format!("frame payload of {len} bytes (at most {PAYLOAD_MAX})"));
    }
    if masked {
        at += 4;
    }
    Ok(Some((opcode, masked, at, len)))
}

/// Calls `frame` for every complete server frame at the start of `buf` and returns the
/// bytes consumed; the caller keeps the rest for the next read.
///
/// # Errors
/// A masked server frame (§5.1) or a header error; the connection is unusable after it.
pub fn server_frames(buf: &[u8], frame: &mut impl FnMut(Frame<'_>)) -> Result<usize, String> {
    let mut used = 0;
    while let Some((opcode, masked, head, len)) = header(&buf[used..])? {
        if masked {
            return Err("a masked server frame".into());
        }
        if buf.len() - used < head + len {
            break;
        }
        frame(Frame {
            opcode,
            payload: &buf[used + head..used + head + len],
        });
        used += head + len;
    }
    Ok(used)
}

/// Like [`server_frames`] for the frames a client sends (masked, §5.3): unmasks each
/// payload in place before calling `frame`.
///
/// # Errors
/// An unmasked client frame or a header error.
pub fn client_frames(buf: &mut [u8], frame: &mut impl FnMut(Frame<'_>)) -> Result<usize, String> {
    let mut used = 0;
    while let Some((opcode, masked, head, len)) = header(&buf[used..])? {
        if !masked {
            return Err("an unmasked client frame".into());
        }
        if buf.len() - used < head + len {
            break;
        }
        let mut key = [0u8; 4];
        key.copy_from_slice(&buf[used + head - 4..used + head]);
        let payload = &mut buf[used + head..used + head + len];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        frame(Frame {
            opcode,
            payload: &buf[used + head..used + head + len],
        });
        used += head + len;
    }
    Ok(used)
}

/// Appends the header of an unmasked server frame of `len` bytes.
pub fn server_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends a masked client frame of `payload` with `key`.
pub fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    let start = out.len();
    server_header(out, opcode, payload.len());
    out[start + 1] |= 0x80;
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opcode and payload of each frame decoded.
    type Frames = Vec<(u8, Vec<u8>)>;

    fn frames(buf: &[u8]) -> Result<(Frames, usize), String> {
        let mut got = Vec::new();
        let used = server_frames(buf, &mut |f| got.push((f.opcode, f.payload.to_vec())))?;
        Ok((got, used))
    }

    #[test]
    fn server_frames_of_every_length_form_decode_in_any_split() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536];
        for &n in &sizes {
            server_header(&mut stream, OP_TEXT, n);
            stream.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, n));
        }
        let (all, used) = frames(&stream).expect("valid");
        assert_eq!(used, stream.len());
        assert_eq!(all.iter().map(|f| f.1.len()).collect::<Vec<_>>(), sizes);
        for cut in [1, 2, 3, 5, 130, 200, 66_000, stream.len() - 1] {
            let (first, used) = frames(&stream[..cut]).expect("valid prefix");
            let (rest, used2) = frames(&stream[used..]).expect("valid rest");
            assert_eq!(used + used2, stream.len(), "cut {cut}");
            assert_eq!([first, rest].concat(), all, "cut {cut}");
        }
    }

    #[test]
    fn client_frames_round_trip_and_bad_frames_are_errors() {
        let mut out = Vec::new();
        client_frame(&mut out, OP_TEXT, b"t=1 hello", [1, 2, 3, 4]);
        client_frame(&mut out, OP_BINARY, &[7u8; 300], [9, 8, 7, 6]);
        assert!(frames(&out).is_err(), "a masked frame from a server");
        let mut got = Vec::new();
        let used = client_frames(&mut out.clone(), &mut |f| {
            got.push((f.opcode, f.payload.to_vec()))
        })
        .expect("valid");
        assert_eq!(used, out.len());
        assert_eq!(
            got,
            vec![(OP_TEXT, b"t=1 hello".to_vec()), (OP_BINARY, vec![7u8; 300])]
        );
        assert!(frames(&[0x01, 0x00]).is_err(), "a fragment");
        assert!(frames(&[0xc1, 0x00]).is_err(), "RSV1");
        assert!(frames(&[0x83, 0x00]).is_err(), "opcode 3");
        assert!(
            frames(&[0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 0]).is_err(),
            "too long"
        );
        assert!(
            client_frames(&mut [0x81, 0x01, b'x'], &mut |_| {}).is_err(),
            "unmasked from a client"
        );
    }
}
