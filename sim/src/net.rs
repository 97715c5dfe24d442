//! Link properties of the simulated network.

use std::time::Duration;

/// Properties of the path between two hosts (the same both ways).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra one-way delay drawn uniformly from `0..=jitter` per packet
    /// (streams stay ordered; datagrams may be reordered by it).
    pub jitter: Duration,
    /// Bytes per second each way, or unlimited.
    pub bandwidth: Option<u64>,
    /// Probability that a datagram is lost.
    pub datagram_loss: f64,
    /// Probability that a datagram is delayed by an extra `latency`, which
    /// reorders it behind later ones.
    pub datagram_reorder: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(2),
            bandwidth: None,
            datagram_loss: 0.0,
            datagram_reorder: 0.0,
        }
    }
}
