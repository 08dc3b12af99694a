//! Masking (RFC 6455 §5.3): the XOR of a frame payload with the 4-byte key that every
//! client frame carries.
//!
//! Owns: the fast mask and the byte-at-a-time definition it is tested against, both able
//! to resume at any byte of a payload.
//!
//! Must never: hold `unsafe` (the word loop vectorizes without it) or mask a server frame
//! (§5.1: the server sends its frames unmasked).
/// XORs `buf` with `mask` (§5.3), `buf[0]` being byte `offset` of the frame payload, so
/// a payload unmasked in pieces comes out as if unmasked whole.
///
/// Works eight bytes at a time on unaligned words; the compiler vectorizes the loop,
/// so it needs no `unsafe` to beat the aligned-words technique (see `benches/ws.rs`).
/// [`apply_mask_reference`] is the byte-at-a-time definition it is tested against.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut mask = mask;
    mask.rotate_left(offset % 4);
    let [m0, m1, m2, m3] = mask;
    let word = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut words = buf.chunks_exact_mut(8);
    for chunk in &mut words {
        let bytes: &mut [u8; 8] = chunk.try_into().expect("chunks of 8");
        *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
    }
    // Whole words keep the phase, so the tail starts at mask[0] again.
    for (b, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// The definition of [`apply_mask`] (§5.3): octet i is XORed with mask octet
/// `(offset + i) % 4`.
pub fn apply_mask_reference(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masking key of the examples in §5.7.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn mask_matches_reference() {
        let masks = [MASK, [0xff, 0, 0x80, 1]];
        let source: Vec<u8> = (0..320u32).map(|i| (i * 7 + 3) as u8).collect();
        for mask in masks {
            for align in 0..8 {
                for len in 0..=300 {
                    for offset in 0..4 {
                        let mut fast = source.clone();
                        let mut slow = source.clone();
                        apply_mask(&mut fast[align..align + len], mask, offset);
                        apply_mask_reference(&mut slow[align..align + len], mask, offset);
                        assert_eq!(
                            fast, slow,
                            "mask {mask:x?} align {align} len {len} offset {offset}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn mask_resumes_across_pieces() {
        let payload: Vec<u8> = (0..=255).collect();
        let mut whole_masked = payload.clone();
        apply_mask(&mut whole_masked, MASK, 0);
        for cut in 0..payload.len() {
            let mut pieces = payload.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, MASK, 0);
            apply_mask(b, MASK, cut);
            assert_eq!(pieces, whole_masked, "cut {cut}");
        }
        // Offsets past 3 wrap.
        let mut a = payload.clone();
        let mut b = payload.clone();
        apply_mask(&mut a, MASK, 6);
        apply_mask(&mut b, MASK, 2);
        assert_eq!(a, b);
    }
}
