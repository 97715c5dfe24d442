//! Cryptographic building blocks: the Noise hash functions (SHA-256), the
//! ChaCha20-Poly1305 cipher state and the Noise handshake state machine.

pub(crate) mod cipher;
pub(crate) mod hash;
pub(crate) mod noise;
pub(crate) mod poly1305;

pub(crate) use cipher::{CipherState, CryptoError};
