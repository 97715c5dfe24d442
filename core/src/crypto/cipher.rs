//! The Noise `CipherState` for ChaCha20-Poly1305: a key and a 64-bit counter nonce.

use bytes::Bytes;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use core::fmt;
use subtle::ConstantTimeEq;

use super::poly1305::Poly1305;

/// Length of the Poly1305 authentication tag appended to every ciphertext.
pub(crate) const TAG_LEN: usize = 16;

/// Inputs up to this length are sealed and opened by [`short_seal`] and
/// [`short_open`] (the same RFC 8439 construction, with the portable
/// Poly1305 of `poly1305.rs`); longer ones by the `chacha20poly1305` crate.
/// The short path avoids the crate's fixed cost per message, which dominates
/// short inputs; the crate's block function is the faster one on long inputs,
/// and this length stays below the point where it overtakes (see
/// docs/decisions.md).
pub(crate) const SHORT_MAX: usize = 4096;

/// A failure of an AEAD operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CryptoError {
    /// The ciphertext did not authenticate under this key and nonce.
    Decrypt,
    /// The 64-bit nonce counter is exhausted; the key must not be used again.
    NonceExhausted,
    /// A Diffie-Hellman result was all zeros (the peer sent a low-order point).
    WeakPublicKey,
    /// A handshake message was shorter than its pattern requires.
    Truncated,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::Decrypt => "ciphertext failed to authenticate",
            CryptoError::NonceExhausted => "nonce counter exhausted",
            CryptoError::WeakPublicKey => "peer public key is of low order",
            CryptoError::Truncated => "handshake message truncated",
        })
    }
}

/// The Noise `CipherState`: ChaCha20-Poly1305 with the nonce
/// `0x00000000 || little-endian u64 counter` ([Noise rev 34 §5.1], §12.3).
///
/// [Noise rev 34 §5.1]: https://noiseprotocol.org/noise.html#the-cipherstate-object
pub(crate) struct CipherState {
    cipher: ChaCha20Poly1305,
    key: [u8; 32],
    nonce: u64,
    /// The same key for ring's ChaCha20-Poly1305, which seals and opens
    /// every input when the `ring` feature is on (see [`ring_key`]).
    #[cfg(feature = "ring")]
    fast: Option<ring::aead::LessSafeKey>,
}

/// `key` as ring's ChaCha20-Poly1305 key (any 32 bytes are one, so this is
/// always `Some`; `None` would leave the RustCrypto path in use).
#[cfg(feature = "ring")]
fn ring_key(key: &[u8; 32]) -> Option<ring::aead::LessSafeKey> {
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key).ok()?;
    Some(ring::aead::LessSafeKey::new(key))
}

/// `n` as ring's nonce (the same bytes as [`nonce_bytes`]).
#[cfg(feature = "ring")]
fn ring_nonce(n: &Nonce) -> ring::aead::Nonce {
    let mut b = [0u8; 12];
    b.copy_from_slice(n);
    ring::aead::Nonce::assume_unique_for_key(b)
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState").field("nonce", &self.nonce).finish_non_exhaustive()
    }
}

fn nonce_bytes(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::from(b)
}

impl CipherState {
    /// A cipher state with key `key` and nonce 0.
    pub(crate) fn new(key: [u8; 32]) -> Self {
        CipherState {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            key,
            nonce: 0,
            #[cfg(feature = "ring")]
            fast: ring_key(&key),
        }
    }

    /// A cipher state that uses the RustCrypto path even with the `ring`
    /// feature on, so that tests built with it exercise both.
    #[cfg(test)]
    pub(crate) fn rustcrypto(key: [u8; 32]) -> Self {
        #[cfg(feature = "ring")]
        return CipherState { fast: None, ..CipherState::new(key) };
        #[cfg(not(feature = "ring"))]
        CipherState::new(key)
    }

    /// True if records are sealed and opened by ring (the `ring` feature):
    /// [`verify`](Self::verify) is then not used, a record being opened
    /// whole by [`open_in_place`](Self::open_in_place), and large pieces
    /// are copied into a record rather than handed to
    /// [`seal_with_parts`](Self::seal_with_parts) (which would copy them).
    pub(crate) fn opens_whole(&self) -> bool {
        #[cfg(feature = "ring")]
        if self.fast.is_some() {
            return true;
        }
        false
    }

    /// The next nonce this state will use.
    pub(crate) fn nonce(&self) -> u64 {
        self.nonce
    }

    fn take_nonce(&mut self) -> Result<Nonce, CryptoError> {
        // 2^64-1 is reserved for rekey (Noise §5.1).
        if self.nonce == u64::MAX {
            return Err(CryptoError::NonceExhausted);
        }
        let n = nonce_bytes(self.nonce);
        self.nonce += 1;
        Ok(n)
    }

    /// Encrypts `buf` in place with associated data `ad` and returns the tag,
    /// which the caller appends.
    pub(crate) fn seal_in_place(&mut self, ad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let n = self.take_nonce()?;
        #[cfg(feature = "ring")]
        if let Some(k) = &self.fast {
            let tag = k
                .seal_in_place_separate_tag(ring_nonce(&n), ring::aead::Aad::from(ad), buf)
                // As below: only for inputs far above any record.
                .map_err(|_| CryptoError::NonceExhausted)?;
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag.as_ref());
            return Ok(t);
        }
        if buf.len() <= SHORT_MAX {
            return Ok(short_seal(&self.key, &n, ad, buf));
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(&n, ad, buf)
            // The AEAD only fails for inputs longer than 2^38 bytes, far above any record.
            .map_err(|_| CryptoError::NonceExhausted)?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place, checking `tag`. On failure `buf` is unspecified
    /// and the nonce is still consumed (the connection is then unusable anyway).
    pub(crate) fn open_in_place(
        &mut self,
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let n = self.take_nonce()?;
        #[cfg(feature = "ring")]
        if let Some(k) = &self.fast {
            let tag = ring::aead::Tag::from(*tag);
            return k
                .open_in_place_separate_tag(ring_nonce(&n), ring::aead::Aad::from(ad), tag, buf, 0..)
                .map(|_| ())
                .map_err(|_| CryptoError::Decrypt);
        }
        if buf.len() <= SHORT_MAX {
            return short_open(&self.key, &n, ad, buf, tag);
        }
        self.cipher
            .decrypt_in_place_detached(&n, ad, buf, Tag::from_slice(tag))
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Checks `tag` over `ciphertext` and `ad` under the next nonce and
    /// returns the keystream that decrypts it, without decrypting anything,
    /// so that the caller can decrypt each part where it is needed (in
    /// place, or straight into another buffer). Consumes the nonce, as
    /// [`open_in_place`](Self::open_in_place) does.
    pub(crate) fn verify(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<Keystream, CryptoError> {
        let n = self.take_nonce()?;
        let (stream, mac_key) = keystream(&self.key, &n);
        let expected = mac(&mac_key, ad, ciphertext);
        if !bool::from(expected.ct_eq(tag)) {
            return Err(CryptoError::Decrypt);
        }
        Ok(Keystream(stream))
    }

    /// Seals `buf` in place like [`seal_in_place`](Self::seal_in_place),
    /// except that each of `parts` (offset in `buf`, plaintext) is
    /// encrypted from its own buffer into `buf` at that offset, which saves
    /// copying it there first; what `buf` holds at those places is
    /// overwritten. `parts` are in order and do not overlap.
    pub(crate) fn seal_with_parts(
        &mut self,
        ad: &[u8],
        buf: &mut [u8],
        parts: &[(usize, Bytes)],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        if parts.is_empty() || self.opens_whole() {
            // ring seals whole buffers only: the parts are copied in first.
            for (at, plain) in parts {
                buf[*at..*at + plain.len()].copy_from_slice(plain);
            }
            return self.seal_in_place(ad, buf);
        }
        let n = self.take_nonce()?;
        let (stream, mac_key) = keystream(&self.key, &n);
        let mut ks = Keystream(stream);
        let mut pos = 0;
        for (at, plain) in parts {
            let end = at + plain.len();
            ks.apply(pos, &mut buf[pos..*at]);
            ks.apply_into(*at, plain, &mut buf[*at..end]);
            pos = end;
        }
        ks.apply(pos, &mut buf[pos..]);
        Ok(mac(&mac_key, ad, buf))
    }

    /// Appends `ENCRYPT(k, n, ad, plaintext)` (ciphertext and tag) to `out`.
    pub(crate) fn seal_append(
        &mut self,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut alloc::vec::Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(ad, &mut out[start..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `ciphertext` (with its trailing tag) and appends the plaintext to `out`.
    pub(crate) fn open_append(
        &mut self,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut alloc::vec::Vec<u8>,
    ) -> Result<(), CryptoError> {
        if ciphertext.len() < TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let start = out.len();
        out.extend_from_slice(body);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        match self.open_in_place(ad, &mut out[start..], &t) {
            Ok(()) => Ok(()),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Noise `Rekey()`: `k = ENCRYPT(k, 2^64-1, "", zeros(32))[..32]`. The
    /// nonce counter is reset to zero (devp2p rekeys on an explicit signal,
    /// see SPEC.md "Rekeying").
    pub(crate) fn rekey(&mut self) {
        let mut k = [0u8; 32];
        short_seal(&self.key, &nonce_bytes(u64::MAX), b"", &mut k);
        *self = CipherState::new(k);
    }
}

impl core::error::Error for CryptoError {}

/// Differential check of the short path against the `chacha20poly1305`
/// crate (the `aead` fuzz target and the tests): both seal `plain` to the
/// same bytes, the short open recovers it, and flipping bit `flip` (modulo
/// the length) of the ciphertext and tag makes the short open fail.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_short_path(key: &[u8; 32], n: u64, ad: &[u8], plain: &[u8], flip: usize) {
    let nonce = nonce_bytes(n);
    let (mut ours, mut theirs) = (plain.to_vec(), plain.to_vec());
    let tag = short_seal(key, &nonce, ad, &mut ours);
    let want: [u8; TAG_LEN] = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt_in_place_detached(&nonce, ad, &mut theirs)
        .expect("a short input")
        .into();
    assert_eq!((tag, &ours), (want, &theirs), "short path differs from the crate");
    let mut opened = ours.clone();
    assert_eq!(short_open(key, &nonce, ad, &mut opened, &tag), Ok(()));
    assert_eq!(opened, plain);
    let bit = flip % ((ours.len() + TAG_LEN) * 8);
    let mut tag = tag;
    match bit.checked_sub(ours.len() * 8) {
        None => ours[bit / 8] ^= 1 << (bit % 8),
        Some(b) => tag[b / 8] ^= 1 << (b % 8),
    }
    assert_eq!(short_open(key, &nonce, ad, &mut ours, &tag), Err(CryptoError::Decrypt));
}

/// The ChaCha20 keystream for `key` and `nonce`, positioned at block 1,
/// and the Poly1305 key, block 0 (RFC 8439 §2.6, §2.8).
fn keystream(key: &[u8; 32], nonce: &Nonce) -> (ChaCha20, [u8; 32]) {
    let mut stream = ChaCha20::new(key.into(), nonce);
    let mut block0 = [0u8; 64];
    stream.apply_keystream(&mut block0);
    (stream, block0[..32].try_into().expect("32 bytes"))
}

/// The RFC 8439 tag of `ciphertext` and `ad` under Poly1305 key `mac_key`:
/// the portable Poly1305 for short inputs, the crate's for long ones.
fn mac(mac_key: &[u8; 32], ad: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
    if ciphertext.len() <= SHORT_MAX {
        let mut mac = Poly1305::new(mac_key);
        mac.update_padded(ad);
        mac.update_padded(ciphertext);
        mac.update_lengths(ad.len(), ciphertext.len());
        mac.finalize()
    } else {
        use poly1305::universal_hash::{KeyInit as _, UniversalHash as _};
        let mut mac = poly1305::Poly1305::new(mac_key.into());
        mac.update_padded(ad);
        mac.update_padded(ciphertext);
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(ad.len() as u64).to_le_bytes());
        lengths[8..].copy_from_slice(&(ciphertext.len() as u64).to_le_bytes());
        mac.update_padded(&lengths);
        mac.finalize().into()
    }
}

/// The keystream of one verified ciphertext (see [`CipherState::verify`]):
/// decrypts any part of it, given the part's offset in the ciphertext.
pub(crate) struct Keystream(ChaCha20);

impl Keystream {
    /// Position of ciphertext offset 0 in the ChaCha20 stream (block 1).
    const START: u64 = 64;

    /// A stand-in for a ciphertext that was decrypted whole (ring opens
    /// records in one call): nothing is left for it to decrypt.
    pub(crate) fn spent() -> Self {
        Keystream(ChaCha20::new(&[0u8; 32].into(), &[0u8; 12].into()))
    }

    /// Decrypts `buf`, the ciphertext at `offset`, in place.
    pub(crate) fn apply(&mut self, offset: usize, buf: &mut [u8]) {
        self.0.seek(Self::START + offset as u64);
        self.0.apply_keystream(buf);
    }

    /// Decrypts `input`, the ciphertext at `offset`, into `output` (of the
    /// same length).
    pub(crate) fn apply_into(&mut self, offset: usize, input: &[u8], output: &mut [u8]) {
        self.0.seek(Self::START + offset as u64);
        // Both lengths come from one chunk: they are equal.
        let _ = self.0.apply_keystream_b2b(input, output);
    }
}

impl fmt::Debug for Keystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keystream")
    }
}

/// RFC 8439 ChaCha20-Poly1305 encryption of `buf` in place; returns the tag.
fn short_seal(key: &[u8; 32], nonce: &Nonce, ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    let (mut stream, mac_key) = keystream(key, nonce);
    stream.apply_keystream(buf);
    mac(&mac_key, ad, buf)
}

/// RFC 8439 ChaCha20-Poly1305 decryption of `buf` in place, after the tag
/// is checked in constant time; on failure `buf` is left as it was.
fn short_open(
    key: &[u8; 32],
    nonce: &Nonce,
    ad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), CryptoError> {
    let (mut stream, mac_key) = keystream(key, nonce);
    if !bool::from(mac(&mac_key, ad, buf).ct_eq(tag)) {
        return Err(CryptoError::Decrypt);
    }
    stream.apply_keystream(buf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// ring and the RustCrypto path are the same AEAD: each opens what the
    /// other sealed (whole, by keystream parts, and with parts sealed from
    /// their own buffers), and each refuses a flipped bit.
    #[cfg(feature = "ring")]
    #[test]
    fn ring_and_rustcrypto_agree() {
        let rust = CipherState::rustcrypto;
        for len in [0usize, 1, 63, 64, 65, 1000, 4096, 4097, 16_384, 65_535] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let ad = b"ad";
            // ring seals; RustCrypto opens, whole and by keystream.
            let (mut fast, mut slow) = (CipherState::new([5; 32]), rust([5; 32]));
            assert!(fast.opens_whole() && !slow.opens_whole());
            let mut ct = plain.clone();
            let tag = fast.seal_in_place(ad, &mut ct).unwrap();
            let mut whole = ct.clone();
            slow.open_in_place(ad, &mut whole, &tag).unwrap();
            assert_eq!(whole, plain, "{len}");
            let mut slow2 = rust([5; 32]);
            let mut ks = slow2.verify(ad, &ct, &tag).unwrap();
            let mut parts = ct.clone();
            let cut = len / 3;
            ks.apply(cut, &mut parts[cut..]);
            ks.apply(0, &mut parts[..cut]);
            assert_eq!(parts, plain, "{len}");
            // RustCrypto seals (with a part from its own buffer); ring opens.
            let (mut fast, mut slow) = (CipherState::new([6; 32]), rust([6; 32]));
            let mut buf = plain.clone();
            let part = (len / 2, Bytes::copy_from_slice(&plain[len / 2..len / 2 + len / 4]));
            buf[part.0..part.0 + part.1.len()].fill(0);
            let tag = slow.seal_with_parts(ad, &mut buf, core::slice::from_ref(&part)).unwrap();
            let mut opened = buf.clone();
            fast.open_in_place(ad, &mut opened, &tag).unwrap();
            assert_eq!(opened, plain, "{len}");
            // ring's own parts path copies them in: the same ciphertext.
            let mut fast_seal = CipherState::new([6; 32]);
            let mut buf2 = plain.clone();
            buf2[part.0..part.0 + part.1.len()].fill(0);
            assert_eq!(fast_seal.seal_with_parts(ad, &mut buf2, &[part]).unwrap(), tag);
            assert_eq!(buf2, buf, "{len}");
            // A flipped bit is refused by both.
            if len > 0 {
                let mut bad = buf.clone();
                bad[len - 1] ^= 1;
                let (mut f, mut s) = (CipherState::new([6; 32]), rust([6; 32]));
                assert_eq!(f.open_in_place(ad, &mut bad.clone(), &tag), Err(CryptoError::Decrypt));
                assert_eq!(s.open_in_place(ad, &mut bad, &tag), Err(CryptoError::Decrypt));
            }
        }
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let mut a = CipherState::new([1; 32]);
        let mut b = CipherState::new([1; 32]);
        let mut ct = Vec::new();
        a.seal_append(b"ad", b"hello", &mut ct).unwrap();
        let mut pt = Vec::new();
        b.open_append(b"ad", &ct, &mut pt).unwrap();
        assert_eq!(pt, b"hello");
        a.seal_append(b"ad", b"hello", &mut ct).unwrap();
        let mut bad = ct[ct.len() - 21..].to_vec();
        bad[0] ^= 1;
        assert_eq!(b.open_append(b"ad", &bad, &mut pt), Err(CryptoError::Decrypt));
    }

    /// The crate's seal of `buf` under `key`, `nonce`, `ad`: the reference
    /// the short path must equal byte for byte.
    fn crate_seal(key: &[u8; 32], nonce: &Nonce, ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        ChaCha20Poly1305::new(Key::from_slice(key)).encrypt_in_place_detached(nonce, ad, buf).unwrap().into()
    }

    #[test]
    fn short_path_matches_rfc8439_section_2_8_2() {
        let hex = |s: &str| -> Vec<u8> {
            let s: alloc::string::String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let key: [u8; 32] =
            hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f").try_into().unwrap();
        let nonce = Nonce::clone_from_slice(&hex("070000004041424344454647"));
        let ad = hex("50515253c0c1c2c3c4c5c6c7");
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = short_seal(&key, &nonce, &ad, &mut buf);
        assert_eq!(tag.to_vec(), hex("1ae10b594f09e26a7e902ecbd0600691"));
        assert_eq!(buf[..16].to_vec(), hex("d31a8d34648e60db7b86afbc53ef7ec2"));
        assert_eq!(buf[buf.len() - 2..].to_vec(), hex("6116"));
    }

    #[test]
    fn short_path_equals_the_crate_at_every_length() {
        for len in 0..=SHORT_MAX + 17 {
            let key = [if len % 3 == 0 { 0xff } else { 0x42 }; 32];
            let nonce = nonce_bytes(len as u64);
            let ad = [len as u8; 13];
            // Odd lengths carry all-ones bytes, the limbs' worst case.
            let plain: Vec<u8> =
                (0..len).map(|i| if len % 2 == 1 { 0xff } else { (i * 31 + len) as u8 }).collect();
            let (mut a, mut b) = (plain.clone(), plain.clone());
            let ta = short_seal(&key, &nonce, &ad[..len % 14], &mut a);
            let tb = crate_seal(&key, &nonce, &ad[..len % 14], &mut b);
            assert_eq!((ta, &a), (tb, &b), "length {len}");
            short_open(&key, &nonce, &ad[..len % 14], &mut a, &ta).unwrap();
            assert_eq!(a, plain);
        }
    }

    #[test]
    fn short_open_rejects_any_flipped_bit_and_leaves_the_buffer() {
        let key = [9u8; 32];
        let nonce = nonce_bytes(1);
        let mut ct = *b"a short record body";
        let tag = short_seal(&key, &nonce, b"ad", &mut ct);
        for bit in 0..(ct.len() + TAG_LEN) * 8 {
            let (mut c, mut t) = (ct, tag);
            if bit < ct.len() * 8 {
                c[bit / 8] ^= 1 << (bit % 8);
            } else {
                let b = bit - ct.len() * 8;
                t[b / 8] ^= 1 << (b % 8);
            }
            let before = c;
            assert_eq!(short_open(&key, &nonce, b"ad", &mut c, &t), Err(CryptoError::Decrypt));
            assert_eq!(c, before);
        }
        assert_eq!(short_open(&key, &nonce, b"ae", &mut ct.clone(), &tag), Err(CryptoError::Decrypt));
    }

    proptest::proptest! {
        #[test]
        fn short_path_equals_the_crate(
            key in proptest::array::uniform32(proptest::num::u8::ANY),
            n in 0..u64::MAX,
            ad in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            plain in proptest::collection::vec(proptest::num::u8::ANY, 0..SHORT_MAX + 1),
            flip in proptest::num::usize::ANY,
        ) {
            check_short_path(&key, n, &ad, &plain, flip);
        }
    }

    #[test]
    fn verify_then_decrypt_in_parts_equals_open_at_every_size_path() {
        for len in [0usize, 1, 100, SHORT_MAX, SHORT_MAX + 1, 20_000, 65_519] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut sender = CipherState::new([4; 32]);
            let mut ct = plain.clone();
            let tag = sender.seal_in_place(b"ad", &mut ct).unwrap();
            // Half in place, half into another buffer.
            let mut receiver = CipherState::new([4; 32]);
            let mut ks = receiver.verify(b"ad", &ct, &tag).expect("authentic");
            let mid = len / 2;
            let mut back = ct.clone();
            ks.apply(0, &mut back[..mid]);
            let mut tail = alloc::vec![0u8; len - mid];
            ks.apply_into(mid, &ct[mid..], &mut tail);
            back[mid..].copy_from_slice(&tail);
            assert_eq!(back, plain, "length {len}");
            // A flipped bit, a wrong nonce or other associated data fail.
            let mut bad = tag;
            bad[3] ^= 4;
            assert_eq!(CipherState::new([4; 32]).verify(b"ad", &ct, &bad).err(), Some(CryptoError::Decrypt));
            assert_eq!(receiver.verify(b"ad", &ct, &tag).err(), Some(CryptoError::Decrypt), "next nonce");
            assert_eq!(CipherState::new([4; 32]).verify(b"ae", &ct, &tag).err(), Some(CryptoError::Decrypt));
        }
    }

    #[test]
    fn sealing_parts_from_their_own_buffers_equals_sealing_in_place() {
        for len in [200usize, SHORT_MAX + 100, 65_519] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 3 + 1) as u8).collect();
            let parts: Vec<(usize, Bytes)> = [(10, 40), (60, len / 2 - 60), (len / 2 + 5, len - len / 2 - 5)]
                .iter()
                .map(|&(at, n)| (at, Bytes::copy_from_slice(&plain[at..at + n])))
                .collect();
            let mut expected = plain.clone();
            let tag = CipherState::new([6; 32]).seal_in_place(b"ad", &mut expected).unwrap();
            // What the buffer holds at the parts does not matter.
            let mut buf = plain.clone();
            for (at, p) in &parts {
                buf[*at..at + p.len()].fill(0xaa);
            }
            let got = CipherState::new([6; 32]).seal_with_parts(b"ad", &mut buf, &parts).unwrap();
            assert_eq!((got, &buf), (tag, &expected), "length {len}");
        }
    }

    #[test]
    fn rekey_changes_key_and_resets_nonce() {
        let mut a = CipherState::new([1; 32]);
        let mut before = Vec::new();
        a.seal_append(b"", b"x", &mut before).unwrap();
        a.rekey();
        assert_eq!(a.nonce(), 0);
        let mut after = Vec::new();
        a.seal_append(b"", b"x", &mut after).unwrap();
        assert_ne!(before, after, "same nonce, new key");
    }
}
