//! What every runtime keeps beside the node for its async API: dials
//! waiting for their handshake, and sends waiting for queue space. Kept
//! here so that the runtimes hold no protocol logic and no copy of it.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use bytes::Bytes;

use crate::connection::ConnectionId;
use crate::error::{ConnectError, SendError};
use crate::event::Event;
use crate::identity::NodeId;
use crate::node::Node;
use crate::protocol::ProtocolId;
use crate::reason::DisconnectReason;
use crate::time::Instant;

struct PendingSend<R> {
    peer: NodeId,
    protocol: ProtocolId,
    msg_type: u32,
    payload: Bytes,
    reply: R,
}

/// Replies a runtime owes its callers, keyed by what they wait for. `D` is
/// the reply handle of a dial (a oneshot sender, say), `S` that of a send.
pub struct Waiters<D, S> {
    dials: BTreeMap<ConnectionId, D>,
    sends: VecDeque<PendingSend<S>>,
}

impl<D, S> Default for Waiters<D, S> {
    fn default() -> Self {
        Waiters { dials: BTreeMap::new(), sends: VecDeque::new() }
    }
}

impl<D, S> core::fmt::Debug for Waiters<D, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Waiters").field("dials", &self.dials.len()).field("sends", &self.sends.len()).finish()
    }
}

impl<D, S> Waiters<D, S> {
    /// Registers a dialled transport with the node; `reply` is resolved by
    /// [`on_event`](Self::on_event) or [`on_close`](Self::on_close).
    pub fn dial(
        &mut self,
        node: &mut Node,
        target: Option<NodeId>,
        reply: D,
        now: Instant,
    ) -> Result<ConnectionId, (D, ConnectError)> {
        match node.connect(target, now) {
            Ok(id) => {
                self.dials.insert(id, reply);
                Ok(id)
            }
            Err(e) => Err((reply, e)),
        }
    }

    /// Sends a message, or keeps it (behind earlier waiting sends to the
    /// same peer, preserving order) while the peer's queue is full.
    /// Returns the reply to resolve now, if any.
    pub fn send(
        &mut self,
        node: &mut Node,
        peer: NodeId,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
        reply: S,
    ) -> Option<(S, Result<(), SendError>)> {
        if !self.sends.iter().any(|p| p.peer == peer) {
            match node.send(&peer, protocol, msg_type, payload.clone()) {
                Err(SendError::QueueFull) => {}
                r => return Some((reply, r)),
            }
        }
        self.sends.push_back(PendingSend { peer, protocol, msg_type, payload, reply });
        None
    }

    /// True if sends are waiting for queue space.
    pub fn has_waiting_sends(&self) -> bool {
        !self.sends.is_empty()
    }

    /// Retries waiting sends after the node drained some queue; appends the
    /// replies to resolve to `out`.
    pub fn retry_sends(&mut self, node: &mut Node, out: &mut Vec<(S, Result<(), SendError>)>) {
        let mut blocked: Vec<NodeId> = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(p) = self.sends.pop_front() {
            if blocked.contains(&p.peer) {
                keep.push_back(p);
                continue;
            }
            match node.send(&p.peer, p.protocol, p.msg_type, p.payload.clone()) {
                Err(SendError::QueueFull) => {
                    blocked.push(p.peer);
                    keep.push_back(p);
                }
                r => out.push((p.reply, r)),
            }
        }
        self.sends = keep;
    }

    /// Resolves a dial from an event: `Ok(peer)` once connected (also when
    /// a duplicate connection to the same peer won), the reason otherwise.
    pub fn on_event(&mut self, node: &Node, ev: &Event) -> Option<(D, Result<NodeId, DisconnectReason>)> {
        match ev {
            Event::PeerConnected { peer, connection, .. } => {
                self.dials.remove(connection).map(|d| (d, Ok(*peer)))
            }
            Event::ConnectionFailed { connection, reason, peer } => {
                let d = self.dials.remove(connection)?;
                Some(match peer {
                    Some(p) if *reason == DisconnectReason::DuplicateConnection && node.is_connected(p) => {
                        (d, Ok(*p))
                    }
                    _ => (d, Err(*reason)),
                })
            }
            _ => None,
        }
    }

    /// Resolves a dial whose transport closed before any event did.
    pub fn on_close(&mut self, id: ConnectionId) -> Option<D> {
        self.dials.remove(&id)
    }
}
