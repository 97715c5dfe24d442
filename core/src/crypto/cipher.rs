//! The Noise `CipherState` for ChaCha20-Poly1305: a key and a 64-bit counter nonce.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use core::fmt;

/// Length of the Poly1305 authentication tag appended to every ciphertext.
pub(crate) const TAG_LEN: usize = 16;

/// A failure of an AEAD operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
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
pub struct CipherState {
    cipher: ChaCha20Poly1305,
    nonce: u64,
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
    pub fn new(key: [u8; 32]) -> Self {
        CipherState { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)), nonce: 0 }
    }

    /// The next nonce this state will use.
    pub fn nonce(&self) -> u64 {
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
    pub fn seal_in_place(&mut self, ad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let n = self.take_nonce()?;
        let tag = self
            .cipher
            .encrypt_in_place_detached(&n, ad, buf)
            // The AEAD only fails for inputs longer than 2^38 bytes, far above any record.
            .map_err(|_| CryptoError::NonceExhausted)?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place, checking `tag`. On failure `buf` is unspecified
    /// and the nonce is still consumed (the connection is then unusable anyway).
    pub fn open_in_place(
        &mut self,
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let n = self.take_nonce()?;
        self.cipher
            .decrypt_in_place_detached(&n, ad, buf, Tag::from_slice(tag))
            .map_err(|_| CryptoError::Decrypt)
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
    pub fn rekey(&mut self) {
        let mut k = [0u8; 32];
        // Encrypting 32 bytes cannot fail.
        let _ = self.cipher.encrypt_in_place_detached(&nonce_bytes(u64::MAX), b"", &mut k);
        *self = CipherState::new(k);
    }
}

impl core::error::Error for CryptoError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

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
