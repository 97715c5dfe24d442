//! SHA-256 as the Noise `HASH`, with the Noise `HMAC-HASH` and `HKDF` built on it.
//!
//! [Noise rev 34 §4.3](https://noiseprotocol.org/noise.html#hash-functions):
//! `HASHLEN = 32`, `BLOCKLEN = 64`. The `sha2` crate uses the CPU's SHA
//! instructions where present (x86 SHA-NI, ARMv8 crypto extensions).

use sha2::{Digest, Sha256};

/// Output length of the hash, in bytes.
pub(crate) const HASHLEN: usize = 32;
/// Internal block length of the hash, used by HMAC.
const BLOCKLEN: usize = 64;

/// A hash output.
pub(crate) type Hash = [u8; HASHLEN];

/// `HASH(a || b)`.
pub(crate) fn hash2(a: &[u8], b: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// `HASH(data)`.
pub(crate) fn hash(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// An HMAC key with its inner and outer pad blocks already absorbed, so
/// that several MACs under one key (HKDF's outputs) skip those blocks.
struct HmacKey {
    inner: Sha256,
    outer: Sha256,
}

impl HmacKey {
    fn new(key: &[u8; HASHLEN]) -> Self {
        let mut ipad = [0x36u8; BLOCKLEN];
        let mut opad = [0x5cu8; BLOCKLEN];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        HmacKey { inner, outer }
    }

    fn mac(&self, parts: &[&[u8]]) -> Hash {
        let mut inner = self.inner.clone();
        for p in parts {
            inner.update(p);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// `HMAC-HASH(key, parts[0] || parts[1] || ...)` per RFC 2104.
pub(crate) fn hmac(key: &[u8; HASHLEN], parts: &[&[u8]]) -> Hash {
    HmacKey::new(key).mac(parts)
}

/// Noise `HKDF(chaining_key, input_key_material, 3)`; callers that need two
/// outputs use [`hkdf2`] (the first two outputs are the same).
pub(crate) fn hkdf3(ck: &Hash, ikm: &[u8]) -> (Hash, Hash, Hash) {
    let temp = HmacKey::new(&hmac(ck, &[ikm]));
    let o1 = temp.mac(&[&[1u8]]);
    let o2 = temp.mac(&[&o1, &[2u8]]);
    let o3 = temp.mac(&[&o2, &[3u8]]);
    (o1, o2, o3)
}

/// Noise `HKDF(chaining_key, input_key_material, 2)`.
pub(crate) fn hkdf2(ck: &Hash, ikm: &[u8]) -> (Hash, Hash) {
    let temp = HmacKey::new(&hmac(ck, &[ikm]));
    let o1 = temp.mac(&[&[1u8]]);
    let o2 = temp.mac(&[&o1, &[2u8]]);
    (o1, o2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_fips180_example() {
        // FIPS 180-2 Appendix B.1: SHA-256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(hash(b"abc")[..8], [0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea]);
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe" (zero-padded to 32 bytes is the
        // same HMAC key block), data "what do ya want for nothing?".
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac(&key, &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
    }

    #[test]
    fn hkdf2_is_prefix_of_hkdf3() {
        let ck = [7u8; 32];
        let (a, b) = hkdf2(&ck, b"ikm");
        let (c, d, e) = hkdf3(&ck, b"ikm");
        assert_eq!((a, b), (c, d));
        assert_ne!(e, d);
    }
}
