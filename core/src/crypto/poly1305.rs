//! A portable Poly1305 ([RFC 8439 §2.5]) for short AEAD inputs.
//!
//! The `poly1305` crate (0.8) picks its AVX2 backend at run time on x86-64,
//! and that backend's key setup and finalization run outside any AVX2
//! function, so every intrinsic in them is an out-of-line call: a fixed cost
//! per message, paid before the first byte is hashed. For the short records
//! that dominate handshakes, pings and window updates that is most of the cost
//! of the AEAD, so [`CipherState`](super::cipher::CipherState) authenticates
//! inputs up to [`SHORT_MAX`](super::cipher::SHORT_MAX) with this
//! implementation and leaves longer ones to the crate, whose AVX2 block
//! function is the faster one there.
//!
//! This is the well-known 64-bit-limb formulation (three limbs of 44, 44 and
//! 42 bits, products in `u128`). It has no secret-dependent branches or
//! indices; the final reduction selects with masks. Its output is checked
//! against RFC 8439's vectors and, for every length up to beyond the
//! threshold, against the `chacha20poly1305` crate (tests in `cipher.rs`).
//!
//! [RFC 8439 §2.5]: https://www.rfc-editor.org/rfc/rfc8439#section-2.5

/// Mask of a 44-bit limb.
const M44: u64 = (1 << 44) - 1;
/// Mask of the top, 42-bit limb.
const M42: u64 = (1 << 42) - 1;

/// A Poly1305 computation in progress under one one-time key.
pub(crate) struct Poly1305 {
    /// The clamped `r`, in limbs.
    r: [u64; 3],
    /// `r1 * 20` and `r2 * 20`: the limbs' products that wrap past 2^130
    /// come back multiplied by 5 (2^130 ≡ 5 mod p), and the limb layout adds
    /// a factor of 4.
    r_wrap: [u64; 2],
    /// The accumulator, in limbs.
    h: [u64; 3],
    /// `s`, the second half of the key, added at the end.
    s: [u64; 2],
}

fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Poly1305 {
    /// Starts a MAC under the one-time key `key` (`r || s`).
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let t0 = le64(&key[0..8]);
        let t1 = le64(&key[8..16]);
        // Clamping (RFC 8439 §2.5.1) folded into the limb split.
        let r0 = t0 & 0xffc_0fff_ffff;
        let r1 = ((t0 >> 44) | (t1 << 20)) & 0xfff_ffc0_ffff;
        let r2 = (t1 >> 24) & 0x00f_ffff_fc0f;
        Poly1305 {
            r: [r0, r1, r2],
            r_wrap: [r1 * 20, r2 * 20],
            h: [0; 3],
            s: [le64(&key[16..24]), le64(&key[24..32])],
        }
    }

    /// Absorbs one 16-byte block; `high` is 2^128 (as bit 40 of the top
    /// limb) for a full block and 0 for a final block already padded with 1.
    fn block(&mut self, m: &[u8; 16], high: u64) {
        let t0 = le64(&m[0..8]);
        let t1 = le64(&m[8..16]);
        let [r0, r1, r2] = self.r;
        let [s1, s2] = self.r_wrap;
        let h0 = self.h[0] + (t0 & M44);
        let h1 = self.h[1] + (((t0 >> 44) | (t1 << 20)) & M44);
        let h2 = self.h[2] + (((t1 >> 24) & M42) | high);
        let mul = |a: u64, b: u64| u128::from(a) * u128::from(b);
        let d0 = mul(h0, r0) + mul(h1, s2) + mul(h2, s1);
        let mut d1 = mul(h0, r1) + mul(h1, r0) + mul(h2, s2);
        let mut d2 = mul(h0, r2) + mul(h1, r1) + mul(h2, r0);
        // Partial carry propagation keeps every limb below 2^45.
        let mut c = (d0 >> 44) as u64;
        let mut h0 = d0 as u64 & M44;
        d1 += u128::from(c);
        c = (d1 >> 44) as u64;
        let h1 = d1 as u64 & M44;
        d2 += u128::from(c);
        c = (d2 >> 42) as u64;
        let h2 = d2 as u64 & M42;
        h0 += c * 5;
        c = h0 >> 44;
        h0 &= M44;
        self.h = [h0, h1 + c, h2];
    }

    /// Absorbs `data` zero-padded to a multiple of 16 bytes, as the
    /// ChaCha20-Poly1305 AEAD does with its associated data and ciphertext
    /// (RFC 8439 §2.8): every block, the last included, is a full block.
    pub(crate) fn update_padded(&mut self, data: &[u8]) {
        self.absorb(data, false);
    }

    /// Absorbs `data` in blocks; a short last block is zero-padded, or, for
    /// plain Poly1305 (`one_padded`), padded with a 1 byte and no 2^128 bit.
    fn absorb(&mut self, data: &[u8], one_padded: bool) {
        let mut blocks = data.chunks_exact(16);
        for b in &mut blocks {
            self.block(b.try_into().expect("16 bytes"), 1 << 40);
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            if one_padded {
                b[rest.len()] = 1;
            }
            self.block(&b, if one_padded { 0 } else { 1 << 40 });
        }
    }

    /// Absorbs the AEAD's final block: the two lengths, little-endian.
    pub(crate) fn update_lengths(&mut self, ad: usize, ciphertext: usize) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(ad as u64).to_le_bytes());
        b[8..].copy_from_slice(&(ciphertext as u64).to_le_bytes());
        self.block(&b, 1 << 40);
    }

    /// Absorbs a whole message as plain Poly1305 does; for the RFC's own
    /// MAC vectors.
    #[cfg(test)]
    pub(crate) fn update_message(&mut self, data: &[u8]) {
        self.absorb(data, true);
    }

    /// The tag: `(h mod p + s) mod 2^128`, little-endian.
    pub(crate) fn finalize(self) -> [u8; 16] {
        let [mut h0, mut h1, mut h2] = self.h;
        // Full carry propagation, twice around.
        let mut c;
        for _ in 0..2 {
            c = h1 >> 44;
            h1 &= M44;
            h2 += c;
            c = h2 >> 42;
            h2 &= M42;
            h0 += c * 5;
            c = h0 >> 44;
            h0 &= M44;
            h1 += c;
        }
        // g = h + 5 - 2^130 = h - p; keep it if it did not go negative.
        let mut g0 = h0 + 5;
        c = g0 >> 44;
        g0 &= M44;
        let mut g1 = h1 + c;
        c = g1 >> 44;
        g1 &= M44;
        let mut g2 = (h2 + c).wrapping_sub(1 << 42);
        // All ones when g2 did not borrow (h >= p), else zero.
        let keep_g = (g2 >> 63).wrapping_sub(1);
        g0 &= keep_g;
        g1 &= keep_g;
        g2 &= keep_g;
        let keep_h = !keep_g;
        h0 = (h0 & keep_h) | g0;
        h1 = (h1 & keep_h) | g1;
        h2 = (h2 & keep_h) | g2;
        // h + s, modulo 2^128.
        let [s0, s1] = self.s;
        h0 += s0 & M44;
        c = h0 >> 44;
        h0 &= M44;
        h1 += (((s0 >> 44) | (s1 << 20)) & M44) + c;
        c = h1 >> 44;
        h1 &= M44;
        h2 += ((s1 >> 24) & M42) + c;
        h2 &= M42;
        let lo = h0 | (h1 << 44);
        let hi = (h1 >> 20) | (h2 << 24);
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&lo.to_le_bytes());
        tag[8..].copy_from_slice(&hi.to_le_bytes());
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> alloc::vec::Vec<u8> {
        let s: alloc::string::String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rfc8439_section_2_5_2() {
        let key: [u8; 32] = unhex(
            "85:d6:be:78:57:55:6d:33:7f:44:52:fe:42:d5:06:a8:01:03:80:8a:fb:0d:b2:fd:4a:bf:f6:af:41:49:f5:1b",
        )
        .try_into()
        .unwrap();
        let mut p = Poly1305::new(&key);
        p.update_message(b"Cryptographic Forum Research Group");
        assert_eq!(p.finalize().to_vec(), unhex("a8:06:1d:c1:30:51:36:c6:c2:2b:8b:af:0c:01:27:a9"));
    }

    #[test]
    fn rfc8439_appendix_a_3_edge_cases() {
        // Test vector #1: all-zero key and message give a zero tag.
        let mut p = Poly1305::new(&[0; 32]);
        p.update_message(&[0; 64]);
        assert_eq!(p.finalize(), [0; 16]);
        // Test vector #5: r = 2, s = 0, message 2^128 - 1: h wraps past p.
        let mut key = [0u8; 32];
        key[0] = 2;
        let mut p = Poly1305::new(&key);
        p.update_message(&[0xff; 16]);
        let mut want = [0u8; 16];
        want[0] = 3;
        assert_eq!(p.finalize(), want);
        // Test vector #6: r = 2, s = 2^128 - 1, message 2: the sum wraps 2^128.
        let mut key = [0u8; 32];
        key[0] = 2;
        key[16..].fill(0xff);
        let mut p = Poly1305::new(&key);
        let mut m = [0u8; 16];
        m[0] = 2;
        p.update_message(&m);
        let mut want = [0u8; 16];
        want[0] = 3;
        assert_eq!(p.finalize(), want);
        // Test vector #7: r = 1, message (2^128 - 1), (2^128 - 16), 1
        // (wrapped into little-endian blocks): h reaches p exactly, tag 5.
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut p = Poly1305::new(&key);
        let mut m = [0xffu8; 48];
        m[16] = 0xf0;
        m[32..].fill(0);
        m[32] = 0x11;
        p.update_message(&m);
        let mut want = [0u8; 16];
        want[0] = 5;
        assert_eq!(p.finalize(), want);
    }
}
