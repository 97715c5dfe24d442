//! The Noise handshake ([Noise rev 34](https://noiseprotocol.org/noise.html) §5.2–§5.3, §9)
//! for the three patterns devp2p uses, on X25519, ChaCha20-Poly1305 and SHA-256.
//!
//! This is a small interpreter of handshake patterns: a [`Pattern`] is a list
//! of message patterns made of [`Token`]s, and [`HandshakeState`] executes
//! them. It is checked against the cacophony test vectors and against `snow`.

use alloc::vec::Vec;
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};

use super::cipher::{CipherState, CryptoError, TAG_LEN};
use super::hash::{hash, hash2, hkdf2, hkdf3, Hash, HASHLEN};

/// Length of an X25519 public key (`DHLEN`).
pub(crate) const DHLEN: usize = 32;

/// A handshake token (Noise §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    E,
    S,
    Ee,
    Es,
    Se,
    Ss,
    Psk,
}

/// A handshake pattern: its Noise name, the responder pre-message and its message patterns.
#[derive(Debug)]
pub(crate) struct Pattern {
    /// The full Noise protocol name, e.g. `Noise_XX_25519_ChaChaPoly_SHA256`.
    pub(crate) protocol_name: &'static str,
    /// Whether the responder's static key is a pre-message (`<- s`).
    pub(crate) responder_static_known: bool,
    /// Message patterns, alternating initiator → responder, responder → initiator, ...
    pub(crate) messages: &'static [&'static [Token]],
}

use Token::*;

/// `XX`: mutual authentication with no prior knowledge; 1.5 round trips.
pub(crate) static XX: Pattern = Pattern {
    protocol_name: "Noise_XX_25519_ChaChaPoly_SHA256",
    responder_static_known: false,
    messages: &[&[E], &[E, Ee, S, Es], &[S, Se]],
};

/// `IK`: the initiator knows the responder's static key; 1 round trip.
pub(crate) static IK: Pattern = Pattern {
    protocol_name: "Noise_IK_25519_ChaChaPoly_SHA256",
    responder_static_known: true,
    messages: &[&[E, Es, S, Ss], &[E, Ee, Se]],
};

/// `NNpsk0`: resumption keyed by a pre-shared secret from a previous session,
/// with a fresh ephemeral-ephemeral DH for forward secrecy; 1 round trip.
pub(crate) static NNPSK0: Pattern = Pattern {
    protocol_name: "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
    responder_static_known: false,
    messages: &[&[Psk, E], &[E, Ee]],
};

/// The Noise `SymmetricState`.
struct SymmetricState {
    ck: Hash,
    h: Hash,
    cipher: Option<CipherState>,
}

impl SymmetricState {
    fn new(protocol_name: &str) -> Self {
        let h = if protocol_name.len() <= HASHLEN {
            let mut h = [0u8; HASHLEN];
            h[..protocol_name.len()].copy_from_slice(protocol_name.as_bytes());
            h
        } else {
            hash(protocol_name.as_bytes())
        };
        SymmetricState { ck: h, h, cipher: None }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash2(&self.h, data);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = Some(CipherState::new(k));
    }

    fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let (ck, th, k) = hkdf3(&self.ck, ikm);
        self.ck = ck;
        self.mix_hash(&th);
        self.cipher = Some(CipherState::new(k));
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let start = out.len();
        match &mut self.cipher {
            Some(c) => c.seal_append(&self.h, plaintext, out)?,
            None => out.extend_from_slice(plaintext),
        }
        let h = hash2(&self.h, &out[start..]);
        self.h = h;
        Ok(())
    }

    /// Decrypts the first `len` (+ tag, if keyed) bytes of `input`, appending
    /// the plaintext to `out`; returns how many input bytes were consumed.
    fn decrypt_and_hash(
        &mut self,
        input: &[u8],
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, CryptoError> {
        let total = if self.cipher.is_some() { len + TAG_LEN } else { len };
        let ct = input.get(..total).ok_or(CryptoError::Truncated)?;
        match &mut self.cipher {
            Some(c) => c.open_append(&self.h, ct, out)?,
            None => out.extend_from_slice(ct),
        }
        self.mix_hash(ct);
        Ok(total)
    }
}

/// A static or ephemeral X25519 keypair.
#[derive(Clone)]
pub(crate) struct DhKeypair {
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; DHLEN],
}

impl DhKeypair {
    pub(crate) fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        DhKeypair { secret, public }
    }

    pub(crate) fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self::from_secret(b)
    }

    fn dh(&self, public: &[u8; DHLEN]) -> Result<[u8; 32], CryptoError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(CryptoError::WeakPublicKey);
        }
        Ok(shared.to_bytes())
    }
}

/// Everything the handshake produced once its last message is processed.
pub(crate) struct HandshakeResult {
    /// Cipher for messages this side sends.
    pub(crate) send: CipherState,
    /// Cipher for messages this side receives.
    pub(crate) recv: CipherState,
    /// The final handshake hash `h` (unique per session); checked against the
    /// vectors and `snow`, and available for channel binding.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) handshake_hash: Hash,
    /// The third output of `HKDF(ck, "", 3)`: the secret from which the
    /// resumption secret of this session is derived (SPEC.md "Resumption").
    pub(crate) resumption_seed: Hash,
}

/// The Noise `HandshakeState` for one side of one handshake.
pub(crate) struct HandshakeState {
    pattern: &'static Pattern,
    initiator: bool,
    ss: SymmetricState,
    s: Option<DhKeypair>,
    e: Option<DhKeypair>,
    /// Ephemeral key to use instead of a random one (test vectors only).
    fixed_e: Option<[u8; 32]>,
    rs: Option<[u8; DHLEN]>,
    re: Option<[u8; DHLEN]>,
    psk: Option<[u8; 32]>,
    next: usize,
}

impl HandshakeState {
    /// Starts a handshake. `s` is this side's static keypair (needed by the
    /// patterns that use `s`), `rs` the pre-known remote static key (IK
    /// initiator), `psk` the pre-shared key (psk patterns).
    pub(crate) fn new(
        pattern: &'static Pattern,
        initiator: bool,
        prologue: &[u8],
        s: Option<DhKeypair>,
        rs: Option<[u8; DHLEN]>,
        psk: Option<[u8; 32]>,
    ) -> Self {
        let mut ss = SymmetricState::new(pattern.protocol_name);
        ss.mix_hash(prologue);
        if pattern.responder_static_known {
            let key = if initiator { rs } else { s.as_ref().map(|k| k.public) };
            // A missing pre-message key is caught when a token needs it.
            if let Some(k) = key {
                ss.mix_hash(&k);
            }
        }
        HandshakeState { pattern, initiator, ss, s, e: None, fixed_e: None, rs, re: None, psk, next: 0 }
    }

    /// Uses `secret` as the ephemeral key instead of drawing one (test vectors).
    #[cfg(test)]
    pub(crate) fn set_fixed_ephemeral(&mut self, secret: [u8; 32]) {
        self.fixed_e = Some(secret);
    }

    fn is_psk(&self) -> bool {
        self.pattern.messages.iter().any(|m| m.contains(&Psk))
    }

    /// True when it is this side's turn to write.
    pub(crate) fn is_my_turn(&self) -> bool {
        self.next.is_multiple_of(2) == self.initiator
    }

    /// True when every message of the pattern has been processed.
    pub(crate) fn is_finished(&self) -> bool {
        self.next >= self.pattern.messages.len()
    }

    fn dh(&self, local: Option<&DhKeypair>, remote: Option<&[u8; DHLEN]>) -> Result<[u8; 32], CryptoError> {
        match (local, remote) {
            (Some(l), Some(r)) => l.dh(r),
            // A pattern token needs a key that was not supplied: treat as a
            // failed handshake rather than panicking.
            _ => Err(CryptoError::Truncated),
        }
    }

    fn mix_dh(&mut self, token: Token) -> Result<(), CryptoError> {
        let init = self.initiator;
        let out = match token {
            Ee => self.dh(self.e.as_ref(), self.re.as_ref())?,
            Es if init => self.dh(self.e.as_ref(), self.rs.as_ref())?,
            Es => self.dh(self.s.as_ref(), self.re.as_ref())?,
            Se if init => self.dh(self.s.as_ref(), self.re.as_ref())?,
            Se => self.dh(self.e.as_ref(), self.rs.as_ref())?,
            Ss => self.dh(self.s.as_ref(), self.rs.as_ref())?,
            E | S | Psk => return Ok(()),
        };
        self.ss.mix_key(&out);
        Ok(())
    }

    /// Writes the next handshake message, with `payload`, appending it to `out`.
    pub(crate) fn write_message(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<(), CryptoError> {
        debug_assert!(self.is_my_turn() && !self.is_finished());
        let tokens = self.pattern.messages[self.next];
        for &t in tokens {
            match t {
                E => {
                    let e = match self.fixed_e.take() {
                        Some(k) => DhKeypair::from_secret(k),
                        None => DhKeypair::generate(rng),
                    };
                    out.extend_from_slice(&e.public);
                    self.ss.mix_hash(&e.public);
                    if self.is_psk() {
                        self.ss.mix_key(&e.public);
                    }
                    self.e = Some(e);
                }
                S => {
                    let pubkey = self.s.as_ref().map(|s| s.public).ok_or(CryptoError::Truncated)?;
                    self.ss.encrypt_and_hash(&pubkey, out)?;
                }
                Psk => {
                    let psk = self.psk.ok_or(CryptoError::Truncated)?;
                    self.ss.mix_key_and_hash(&psk);
                }
                dh => self.mix_dh(dh)?,
            }
        }
        self.ss.encrypt_and_hash(payload, out)?;
        self.next += 1;
        Ok(())
    }

    /// Reads the next handshake message from `msg`, appending its payload to `payload`.
    pub(crate) fn read_message(&mut self, msg: &[u8], payload: &mut Vec<u8>) -> Result<(), CryptoError> {
        debug_assert!(!self.is_my_turn() && !self.is_finished());
        let tokens = self.pattern.messages[self.next];
        let mut pos = 0usize;
        for &t in tokens {
            match t {
                E => {
                    let bytes = msg.get(pos..pos + DHLEN).ok_or(CryptoError::Truncated)?;
                    let mut re = [0u8; DHLEN];
                    re.copy_from_slice(bytes);
                    pos += DHLEN;
                    self.ss.mix_hash(&re);
                    if self.is_psk() {
                        self.ss.mix_key(&re);
                    }
                    self.re = Some(re);
                }
                S => {
                    let mut rs = Vec::with_capacity(DHLEN);
                    pos += self.ss.decrypt_and_hash(&msg[pos..], DHLEN, &mut rs)?;
                    let mut key = [0u8; DHLEN];
                    key.copy_from_slice(&rs);
                    self.rs = Some(key);
                }
                Psk => {
                    let psk = self.psk.ok_or(CryptoError::Truncated)?;
                    self.ss.mix_key_and_hash(&psk);
                }
                dh => self.mix_dh(dh)?,
            }
        }
        let rest = &msg[pos..];
        let body_len = if self.ss.cipher.is_some() {
            rest.len().checked_sub(TAG_LEN).ok_or(CryptoError::Truncated)?
        } else {
            rest.len()
        };
        self.ss.decrypt_and_hash(rest, body_len, payload)?;
        self.next += 1;
        Ok(())
    }

    /// The peer's static key, once known.
    pub(crate) fn remote_static(&self) -> Option<[u8; DHLEN]> {
        self.rs
    }

    /// Noise `Split()`, plus the resumption seed; call once [`is_finished`](Self::is_finished).
    pub(crate) fn finish(self) -> HandshakeResult {
        let (k1, k2, k3) = hkdf3(&self.ss.ck, &[]);
        #[cfg(test)]
        crate::tests::transcripts::note_split(&self.ss.h, &k1, &k2, &k3);
        let (c1, c2) = (CipherState::new(k1), CipherState::new(k2));
        let (send, recv) = if self.initiator { (c1, c2) } else { (c2, c1) };
        HandshakeResult { send, recv, handshake_hash: self.ss.h, resumption_seed: k3 }
    }
}
