//! Read patterns: the same stream cut into pieces in ways a fuzz input chooses, to check
//! that a decoder's answer does not depend on how the bytes arrived.

/// A small xorshift generator; only needs to be deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64 (Marsaglia 2003) is stuck at 0, so 0 is moved off it.
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Cuts `stream` into pieces of 1 to `max_piece` bytes, chosen by `seed`. The pieces
/// cover the stream in order, and none is empty.
///
/// # Panics
///
/// If `max_piece` is 0.
#[must_use]
pub fn pieces(stream: &[u8], seed: u64, max_piece: usize) -> Vec<&[u8]> {
    assert!(max_piece > 0, "pieces of at most 0 bytes");
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = 1 + (rng.next() % max_piece as u64) as usize;
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_stream_in_order() {
        let stream: Vec<u8> = (0..=255).collect();
        for seed in 0..50 {
            for max in [1, 2, 7, 300] {
                let p = pieces(&stream, seed, max);
                assert!(p.iter().all(|x| !x.is_empty() && x.len() <= max));
                assert_eq!(p.concat(), stream);
            }
        }
        assert!(pieces(&[], 1, 4).is_empty());
        assert_eq!(pieces(&stream, 9, 1).len(), 256);
    }
}
