//! Bookkeeping of every application message the simulation sends, to check
//! that each arrives exactly once, in order (per protocol) and uncorrupted, or is handed
//! back, or was on a transport that failed.

use std::collections::BTreeMap;
use std::fmt;

use devp2p_core::Bytes;

/// Header of a simulated message: sender host, receiver host, sequence
/// number (per sender and receiver, in send order), protocol, and a
/// checksum of the body.
pub(crate) const HEADER: usize = 8 + 8 + 8 + 8 + 8;

/// One message's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Accepted by the core on the given stream; not yet delivered.
    Queued(u64),
    Delivered,
    Returned,
    /// On a transport the network broke (crash, reset, dropped bytes).
    Lost,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Counts of messages by fate.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Messages the application sent (accepted by the core).
    pub sent: u64,
    /// Messages delivered to the receiving application.
    pub delivered: u64,
    /// Messages handed back in `PeerDisconnected.unsent`.
    pub returned: u64,
    /// Messages on transports the network broke.
    pub lost: u64,
    fates: BTreeMap<(u64, u64, u64), Fate>,
    /// Messages queued on each stream, for settling them when it ends.
    by_stream: BTreeMap<u64, Vec<(u64, u64, u64)>>,
    /// Highest sequence delivered per (from, to, protocol): order is
    /// guaranteed per protocol.
    last: BTreeMap<(u64, u64, u64), u64>,
    next_seq: BTreeMap<(u64, u64), u64>,
    violations: Vec<Violation>,
    /// When each queued message was sent (virtual nanoseconds).
    sent_at: BTreeMap<(u64, u64, u64), u64>,
    /// Delivery latency of every message, by protocol (virtual nanoseconds).
    latencies: BTreeMap<u64, Vec<u64>>,
}

fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Ledger {
    /// Builds the payload of a new message from `from` to `to` with `len`
    /// body bytes, and its sequence number.
    pub(crate) fn make(&mut self, from: u64, to: u64, protocol: u16, len: usize, fill: u8) -> (Bytes, u64) {
        let seq = self.next_seq.entry((from, to)).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let body: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        let mut p = Vec::with_capacity(HEADER + len);
        p.extend_from_slice(&from.to_le_bytes());
        p.extend_from_slice(&to.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&u64::from(protocol).to_le_bytes());
        p.extend_from_slice(&checksum(&body).to_le_bytes());
        p.extend_from_slice(&body);
        (Bytes::from(p), seq)
    }

    /// Records that the core accepted the message for the connection on `stream`.
    pub(crate) fn sent(&mut self, from: u64, to: u64, seq: u64, stream: u64, now: u64) {
        self.sent += 1;
        self.sent_at.insert((from, to, seq), now);
        self.fates.insert((from, to, seq), Fate::Queued(stream));
        self.by_stream.entry(stream).or_default().push((from, to, seq));
    }

    /// Settles the messages of a stream that has ended on both sides with
    /// nothing left in flight: still-queued ones are lost if the network
    /// broke the stream, and a violation if it did not.
    pub(crate) fn stream_ended(&mut self, stream: u64, broken: bool) {
        for key in self.by_stream.remove(&stream).unwrap_or_default() {
            if self.fates.get(&key) == Some(&Fate::Queued(stream)) {
                self.sent_at.remove(&key);
                if broken {
                    self.fates.insert(key, Fate::Lost);
                    self.lost += 1;
                } else {
                    let (f, t, s) = key;
                    self.violations.push(Violation(format!(
                        "message {f}->{t} #{s} neither delivered nor handed back on an intact stream"
                    )));
                }
            }
        }
    }

    fn parse(payload: &[u8]) -> Option<(u64, u64, u64, u64, bool)> {
        if payload.len() < HEADER {
            return None;
        }
        let n = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        Some((n(0), n(8), n(16), n(24), n(32) == checksum(&payload[HEADER..])))
    }

    /// Records a delivery to host `at`.
    pub(crate) fn delivered(&mut self, at: u64, payload: &[u8], now: u64) {
        let Some((from, to, seq, protocol, intact)) = Self::parse(payload) else {
            self.violations.push(Violation(format!("host {at} received a message with no header")));
            return;
        };
        if !intact {
            self.violations.push(Violation(format!("message {from}->{to} #{seq} corrupted")));
        }
        if to != at {
            self.violations.push(Violation(format!("message {from}->{to} #{seq} delivered to host {at}")));
        }
        match self.fates.get(&(from, to, seq)) {
            Some(Fate::Queued(_)) => {}
            Some(f) => {
                self.violations.push(Violation(format!("message {from}->{to} #{seq} delivered after {f:?}")))
            }
            None => self.violations.push(Violation(format!("message {from}->{to} #{seq} never sent"))),
        }
        let last = self.last.entry((from, to, protocol)).or_insert(0);
        if seq <= *last {
            self.violations
                .push(Violation(format!("message {from}->{to} #{seq} after #{last}: out of order")));
        }
        *last = seq;
        self.fates.insert((from, to, seq), Fate::Delivered);
        if let Some(t) = self.sent_at.remove(&(from, to, seq)) {
            self.latencies.entry(protocol).or_default().push(now.saturating_sub(t));
        }
        self.delivered += 1;
    }

    /// Records a message handed back to host `at`.
    pub(crate) fn returned(&mut self, at: u64, payload: &[u8]) {
        let Some((from, to, seq, _, _)) = Self::parse(payload) else { return };
        if from != at {
            self.violations.push(Violation(format!("host {at} was handed back {from}->{to} #{seq}")));
        }
        match self.fates.get(&(from, to, seq)) {
            Some(Fate::Queued(_)) => {}
            f => self
                .violations
                .push(Violation(format!("message {from}->{to} #{seq} handed back after {f:?}"))),
        }
        self.fates.insert((from, to, seq), Fate::Returned);
        self.sent_at.remove(&(from, to, seq));
        self.returned += 1;
    }

    /// Messages neither delivered, handed back nor lost: queued or in flight.
    pub fn outstanding(&self) -> u64 {
        // Saturating: a violation (say, a duplicate delivery) must be
        // reported, not turned into an overflow.
        self.sent.saturating_sub(self.delivered + self.returned + self.lost)
    }

    /// Delivery latencies (send to delivery, virtual time) of `protocol`'s
    /// messages, in delivery order.
    pub fn latencies(&self, protocol: u16) -> &[u64] {
        self.latencies.get(&u64::from(protocol)).map_or(&[], Vec::as_slice)
    }

    /// The violations seen so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} delivered, {} handed back, {} lost with broken transports, {} outstanding",
            self.sent,
            self.delivered,
            self.returned,
            self.lost,
            self.outstanding()
        )
    }
}
