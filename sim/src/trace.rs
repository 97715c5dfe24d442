//! A 64-bit FNV-1a digest of everything that happens in a run.

/// Digest of a run's event trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trace {
    hash: u64,
    /// Number of records digested.
    pub(crate) records: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace { hash: 0xcbf2_9ce4_8422_2325, records: 0 }
    }
}

impl Trace {
    /// Adds bytes to the digest.
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Adds one record made of numbers.
    pub(crate) fn record(&mut self, fields: &[u64]) {
        self.records += 1;
        for f in fields {
            self.bytes(&f.to_le_bytes());
        }
    }

    /// The digest so far.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}
