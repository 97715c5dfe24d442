//! Node identity: a static X25519 keypair whose public key is the [`NodeId`].

use core::fmt;

use rand_core::CryptoRngCore;

use crate::crypto::hash::hash2;
use crate::crypto::noise::DhKeypair;

/// A node's identity on the network: its static X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The node's position in the Kademlia key space: `SHA-256("devp2p/kad" || key)`.
    ///
    /// This is the only place where a key becomes a distance. The hash is
    /// needed because an X25519 public key is not uniform (its top bit is
    /// always clear and it is a field element below 2^255 - 19).
    pub fn kademlia_key(&self) -> [u8; 32] {
        hash2(b"devp2p/kad", &self.0)
    }

    /// XOR distance between two nodes in the Kademlia key space.
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let (a, b) = (self.kademlia_key(), other.kademlia_key());
        let mut d = [0u8; 32];
        for i in 0..32 {
            d[i] = a[i] ^ b[i];
        }
        d
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<NodeId> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(NodeId(out))
    }
}

impl fmt::Display for NodeId {
    /// 64 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    /// The first 8 hex digits, enough to tell nodes apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// A node's static keypair. The secret never leaves the core except through
/// [`Keypair::secret_bytes`], for persisting it.
#[derive(Clone)]
pub struct Keypair {
    pub(crate) dh: DhKeypair,
}

impl Keypair {
    /// Draws a new keypair from `rng`.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        Keypair { dh: DhKeypair::generate(rng) }
    }

    /// Rebuilds a keypair from its 32-byte secret.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Keypair { dh: DhKeypair::from_secret(secret) }
    }

    /// The 32-byte secret, for storing the identity.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.dh.secret.to_bytes()
    }

    /// This keypair's node ID (its public key).
    pub fn node_id(&self) -> NodeId {
        NodeId(self.dh.public)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair").field("node_id", &self.node_id()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn hex_roundtrip_and_distance() {
        let a = Keypair::from_secret_bytes([1; 32]).node_id();
        let b = Keypair::from_secret_bytes([2; 32]).node_id();
        assert_eq!(NodeId::from_hex(&a.to_string()), Some(a));
        assert_eq!(NodeId::from_hex("zz"), None);
        assert_eq!(a.distance(&a), [0; 32]);
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_ne!(a.distance(&b), [0; 32]);
    }
}
