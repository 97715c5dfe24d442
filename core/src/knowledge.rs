//! Prior knowledge about peers that lets later handshakes skip round trips:
//! resumption tickets derived from previous sessions.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::crypto::hash::{hash2, Hash};
use crate::identity::NodeId;
use crate::time::Instant;

/// Length of a ticket identifier on the wire.
pub const TICKET_ID_LEN: usize = 16;

/// A resumption ticket: the secret a previous session with a peer derived,
/// and the identifier both sides use to find it. Each ticket is used once.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Identifier sent in clear in the resumption first message.
    pub id: [u8; TICKET_ID_LEN],
    /// The pre-shared key of the resumption handshake.
    pub secret: [u8; 32],
    /// When it stops being valid.
    pub expires: Instant,
}

impl core::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ticket").field("expires", &self.expires).finish_non_exhaustive()
    }
}

impl Ticket {
    /// Derives the ticket of a finished session from its resumption seed
    /// (SPEC.md "Resumption"): the seed, an HKDF output of the session's
    /// final chaining key used for nothing else, is the secret; the id is
    /// `HASH("devp2p/1 ticket id" || seed)[..16]`, which reveals nothing of it.
    pub(crate) fn derive(seed: &Hash, expires: Instant) -> Self {
        let id_full = hash2(b"devp2p/1 ticket id", seed);
        let mut id = [0u8; TICKET_ID_LEN];
        id.copy_from_slice(&id_full[..TICKET_ID_LEN]);
        Ticket { id, secret: *seed, expires }
    }
}

/// The tickets this node holds, one per peer, with a bounded size.
#[derive(Debug, Default)]
pub(crate) struct TicketStore {
    by_peer: BTreeMap<NodeId, Ticket>,
    by_id: BTreeMap<[u8; TICKET_ID_LEN], NodeId>,
}

impl TicketStore {
    /// Stores `ticket` for `peer`, replacing its previous one; evicts the
    /// ticket that expires first when more than `max` are held.
    pub(crate) fn insert(&mut self, peer: NodeId, ticket: Ticket, max: usize) {
        self.remove_peer(&peer);
        if max == 0 {
            return;
        }
        while self.by_peer.len() >= max {
            let oldest = self.by_peer.iter().min_by_key(|(_, t)| t.expires).map(|(p, _)| *p);
            match oldest {
                Some(p) => self.remove_peer(&p),
                None => break,
            }
        }
        self.by_id.insert(ticket.id, peer);
        self.by_peer.insert(peer, ticket);
    }

    /// Removes and returns the valid ticket for `peer`, if any.
    pub(crate) fn take_for_peer(&mut self, peer: &NodeId, now: Instant) -> Option<Ticket> {
        let t = self.by_peer.remove(peer)?;
        self.by_id.remove(&t.id);
        (t.expires > now).then_some(t)
    }

    /// Removes and returns the valid ticket with identifier `id` and its peer.
    pub(crate) fn take_by_id(&mut self, id: &[u8; TICKET_ID_LEN], now: Instant) -> Option<(NodeId, Ticket)> {
        let peer = self.by_id.remove(id)?;
        let t = self.by_peer.remove(&peer)?;
        (t.expires > now).then_some((peer, t))
    }

    /// True if a ticket for `peer` is held (valid or not).
    pub(crate) fn contains(&self, peer: &NodeId) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Forgets the ticket for `peer`.
    pub(crate) fn remove_peer(&mut self, peer: &NodeId) {
        if let Some(t) = self.by_peer.remove(peer) {
            self.by_id.remove(&t.id);
        }
    }

    /// Number of tickets held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// All tickets, for persisting them.
    pub(crate) fn export(&self) -> Vec<(NodeId, Ticket)> {
        self.by_peer.iter().map(|(p, t)| (*p, t.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn derivation_matches_the_spec_example() {
        // SPEC.md §14.2: a resumption seed of 32 zero bytes.
        let t = Ticket::derive(&[0; 32], Instant::ZERO);
        assert_eq!(t.secret, [0; 32]);
        assert_eq!(
            t.id,
            [0xb2, 0x5f, 0x58, 0x9e, 0x9e, 0x3b, 0x71, 0x89, 0x40, 0x85, 0xb3, 0x8f, 0x56, 0x2c, 0x53, 0x94]
        );
    }

    #[test]
    fn tickets_are_single_use_and_expire() {
        let mut s = TicketStore::default();
        let t = Ticket::derive(&[1; 32], Instant::from_nanos(100));
        s.insert(node(1), t.clone(), 10);
        assert_eq!(s.take_by_id(&t.id, Instant::from_nanos(5)).map(|x| x.0), Some(node(1)));
        assert!(s.take_by_id(&t.id, Instant::from_nanos(5)).is_none(), "single use");
        s.insert(node(1), t.clone(), 10);
        assert!(s.take_for_peer(&node(1), Instant::from_nanos(100)).is_none(), "expired");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn bounded_with_oldest_evicted() {
        let mut s = TicketStore::default();
        for i in 0..5u8 {
            s.insert(node(i), Ticket::derive(&[i; 32], Instant::from_nanos(u64::from(i) + 10)), 3);
        }
        assert_eq!(s.len(), 3);
        assert!(s.take_for_peer(&node(0), Instant::ZERO).is_none());
        assert!(s.take_for_peer(&node(4), Instant::ZERO).is_some());
    }
}
