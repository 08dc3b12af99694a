//! Helpers of ringcast's fuzz targets: ways to cut a byte stream into reads, and
//! independent reference implementations the engine's codecs are checked against.
//!
//! Owns: [`split`] (read patterns from a seed), [`whatwg`] (an EventSource parser written
//! from WHATWG HTML §9.2.6, not from the engine's encoder), [`chunked`] (an RFC 9112 §7.1
//! chunked-body decoder) and [`wsref`] (a whole-stream RFC 6455 §5 frame decoder).
//!
//! Must never: share code with the engine code it checks; a reference that reuses the
//! code under test cannot disagree with it.
pub mod chunked;
pub mod split;
pub mod whatwg;
pub mod wsref;

/// Reads the fuzz input from the front: control bytes first, the rest is the payload.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    /// The next byte, or 0 when the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// The next eight bytes as a little-endian number (zero-padded).
    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    /// Everything not read yet.
    #[must_use]
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}
