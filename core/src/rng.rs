//! A seedable ChaCha20-based random number generator for deterministic runs.
//!
//! The core takes randomness from whatever [`rand_core::CryptoRngCore`] the
//! caller passes; runtimes pass the OS generator, and simulations and tests
//! pass a [`SeededRng`] so that the same seed gives the same run.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use rand_core::{CryptoRng, RngCore};

/// A ChaCha20 keystream used as a random number generator, keyed by a seed.
pub struct SeededRng {
    stream: ChaCha20,
}

impl SeededRng {
    /// A generator whose output is a pure function of `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SeededRng { stream: ChaCha20::new(&seed.into(), &[0u8; 12].into()) }
    }

    /// A generator seeded from a 64-bit number, for tests and simulations.
    pub fn from_u64(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self::from_seed(s)
    }

    /// Derives an independent child generator (for a sub-component).
    pub fn fork(&mut self) -> SeededRng {
        let mut s = [0u8; 32];
        self.fill_bytes(&mut s);
        SeededRng::from_seed(s)
    }
}

impl core::fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SeededRng")
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
        self.stream.apply_keystream(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}
