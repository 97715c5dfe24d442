//! What every runtime keeps beside the node for its async API: dials
//! waiting for their handshake, and sends waiting for queue space. Kept
//! here so that the runtimes hold no protocol logic and no copy of it.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::net::SocketAddr;

use bytes::Bytes;

use crate::addr::PeerAddr;
use crate::error::{BatchError, ConnectError, SendError};
use crate::event::Event;
use crate::identity::NodeId;
use crate::ids::ConnectionId;
use crate::io::Dial;
use crate::message::SendBatch;
use crate::node::Node;
use crate::protocol::ProtocolId;
use crate::reason::DisconnectReason;
use crate::time::Instant;

/// Messages the application has taken, per connection and protocol, whose
/// flow-control credit is still to be returned to the node (a runtime with
/// [`Config::manual_consume`](crate::Config::manual_consume) collects them
/// where the application reads, and applies them in its driver).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Consumed {
    taken: BTreeMap<(ConnectionId, ProtocolId), (u64, u64)>,
    bytes: u64,
}

impl Consumed {
    /// Notes that the application took a message of `len` payload bytes
    /// that arrived on `connection`.
    pub fn add(&mut self, connection: ConnectionId, protocol: ProtocolId, len: usize) {
        self.add_many(connection, protocol, 1, len as u64);
    }

    /// Notes `messages` messages with `bytes` payload bytes in all.
    pub fn add_many(&mut self, connection: ConnectionId, protocol: ProtocolId, messages: u64, bytes: u64) {
        let e = self.taken.entry((connection, protocol)).or_default();
        e.0 += messages;
        e.1 += bytes;
        self.bytes += bytes + messages * crate::MESSAGE_OVERHEAD;
    }

    /// Notes the messages an event carries, if it carries any.
    pub fn add_event(&mut self, ev: &Event) {
        if let Some(d) = ev.delivered() {
            self.add_many(d.connection, d.protocol, d.messages, d.bytes);
        }
    }

    /// The flow-control cost noted and not yet applied.
    pub fn pending(&self) -> u64 {
        self.bytes
    }

    /// True if nothing is noted.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// Moves everything noted in `other` into `self`.
    pub fn merge(&mut self, other: &mut Consumed) {
        for (k, (n, b)) in core::mem::take(&mut other.taken) {
            let e = self.taken.entry(k).or_default();
            e.0 += n;
            e.1 += b;
        }
        self.bytes += core::mem::take(&mut other.bytes);
    }

    /// Returns the credit of everything noted to `node` and forgets it.
    pub fn apply(&mut self, node: &mut Node) {
        for ((connection, protocol), (n, b)) in core::mem::take(&mut self.taken) {
            node.consume(connection, protocol, n, b);
        }
        self.bytes = 0;
    }
}

/// Why a dial failed (see [`Waiters::on_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialFailure {
    /// Why the connection ended.
    pub reason: DisconnectReason,
    /// The node the dial named, if any.
    pub dialled: Option<NodeId>,
    /// The key the other side proved, if the handshake got that far (with
    /// [`DisconnectReason::WrongPeer`]: the key that answered instead).
    pub found: Option<NodeId>,
}

/// What a runtime does with the node's outputs, for [`Waiters::drain`]:
/// the only runtime-specific part of draining a node.
pub trait Outputs<D, S> {
    /// A buffer for `poll_transmit` (a recycled one, ideally; it must be empty).
    fn buffer(&mut self) -> Vec<u8>;
    /// Keeps an unused buffer for later.
    fn recycle(&mut self, buf: Vec<u8>);
    /// Hands `buf` to the writer of connection `id`; gives it back if that
    /// transport is gone.
    ///
    /// `Ok(true)`: the writer has room for another buffer already (it holds
    /// fewer than it may), so `drain` calls `handle_written` for this one at
    /// once and the runtime must not call it later. `Ok(false)`: the runtime
    /// calls `handle_written` when the writer has room again.
    fn write(&mut self, id: ConnectionId, buf: Vec<u8>) -> Result<bool, Vec<u8>>;
    /// The transport of `id` must be closed now, after the buffers its
    /// writer still holds are written (they may end with the goodbye). A
    /// dial still connecting is abandoned.
    fn close(&mut self, id: ConnectionId);
    /// A transport to open (see [`Dial`]): the runtime connects and
    /// answers with `handle_connected` or `handle_dial_failed`.
    fn dial(&mut self, dial: Dial);
    /// A datagram to send to `to`.
    fn datagram(&mut self, to: SocketAddr, buf: Vec<u8>);
    /// An event for the application.
    fn event(&mut self, ev: Event);
    /// A dial is resolved.
    fn dial_done(&mut self, reply: D, result: Result<NodeId, DialFailure>);
    /// A send that waited for queue space is resolved.
    fn send_done(&mut self, reply: S, result: Result<(), BatchError>);
}

/// Messages for one peer and protocol, in order, waiting for queue space.
struct PendingSend<R> {
    peer: NodeId,
    protocol: ProtocolId,
    msgs: VecDeque<(u32, Bytes)>,
    /// A send batch, queued whole once it fits (`msgs` is then empty).
    packed: Option<SendBatch>,
    reply: R,
}

impl<R> PendingSend<R> {
    /// Queues as many messages as the node takes. `None`: some wait for
    /// queue space; otherwise the batch's result.
    fn push(&mut self, node: &mut Node) -> Option<Result<(), BatchError>> {
        if let Some(batch) = self.packed.take() {
            match node.send_packed_from(&self.peer, self.protocol, batch, true) {
                Ok(()) => return Some(Ok(())),
                Err((SendError::QueueFull, rest)) => {
                    if node.queued_on(&self.peer, self.protocol) > 0 {
                        // What fitted is queued; the rest waits for room.
                        self.packed = Some(rest);
                        return None;
                    }
                    // Not one message fits, yet this protocol has nothing
                    // queued: other protocols or peers fill the queue, or
                    // the first message alone exceeds the protocol's
                    // limit. Message by message, as a protocol with
                    // nothing queued may always queue one.
                    self.msgs = rest.into_messages().into();
                }
                Err((error, rest)) => return Some(Err(BatchError { error, unsent: rest.into_messages() })),
            }
        }
        match node.send_queue(&self.peer, self.protocol, &mut self.msgs) {
            Ok(()) => Some(Ok(())),
            Err(SendError::QueueFull) => None,
            Err(error) => Some(Err(BatchError { error, unsent: self.msgs.drain(..).collect() })),
        }
    }
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
    /// Asks the node to dial `addr` ([`Node::dial`]); `reply` is resolved
    /// by [`on_event`](Self::on_event) or [`on_close`](Self::on_close).
    pub fn dial(
        &mut self,
        node: &mut Node,
        addr: PeerAddr,
        reply: D,
        now: Instant,
    ) -> Result<ConnectionId, (D, ConnectError)> {
        match node.dial(addr, now) {
            Ok(id) => {
                self.dials.insert(id, reply);
                Ok(id)
            }
            Err(e) => Err((reply, e)),
        }
    }

    /// Sends messages to `peer` on `protocol`, in order, keeping those the
    /// queue has no room for (behind earlier waiting sends to the same peer
    /// and protocol) until it has. Other protocols are not held up by them.
    /// Returns the reply to resolve now, if any: `Ok` once every message is
    /// queued, or the first refusal with the messages not sent.
    pub fn send_batch(
        &mut self,
        node: &mut Node,
        peer: NodeId,
        protocol: ProtocolId,
        msgs: impl IntoIterator<Item = (u32, Bytes)>,
        reply: S,
    ) -> Option<(S, Result<(), BatchError>)> {
        let p = PendingSend { peer, protocol, msgs: msgs.into_iter().collect(), packed: None, reply };
        self.start_send(node, p)
    }

    /// Sends a [`SendBatch`] to `peer` on `protocol` as
    /// [`send_batch`](Self::send_batch) sends messages, in order, behind
    /// earlier waiting sends to the same peer and protocol. It is queued
    /// as one entry if it fits the queue limits (see
    /// [`Node::send_packed`]), else in parts as room appears (each part
    /// one entry); when not one message fits and the protocol has nothing
    /// queued (other protocols or peers fill the queue, or the first
    /// message alone exceeds the protocol's limit), its messages go one by
    /// one. Refused whole, with nothing queued, if a message has an
    /// undefined type or is too large for the peer, or the protocol is not
    /// shared; a later refusal (the peer disconnected while the batch
    /// waited) hands back the messages not yet queued.
    pub fn send_packed(
        &mut self,
        node: &mut Node,
        peer: NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
        reply: S,
    ) -> Option<(S, Result<(), BatchError>)> {
        let p = PendingSend { peer, protocol, msgs: VecDeque::new(), packed: Some(batch), reply };
        self.start_send(node, p)
    }

    /// Queues `p` now unless earlier sends to the same peer and protocol
    /// wait; keeps it waiting otherwise.
    fn start_send(&mut self, node: &mut Node, mut p: PendingSend<S>) -> Option<(S, Result<(), BatchError>)> {
        if !self.sends.iter().any(|w| w.peer == p.peer && w.protocol == p.protocol) {
            if let Some(r) = p.push(node) {
                return Some((p.reply, r));
            }
        }
        self.sends.push_back(p);
        None
    }

    /// True if sends are waiting for queue space.
    pub fn has_waiting_sends(&self) -> bool {
        !self.sends.is_empty()
    }

    /// Drains the node's outputs into `out` until none is left, in the
    /// order that keeps replies right: waiting sends are retried, transmits
    /// handed to writers, dials and datagrams handed over, events passed
    /// on (resolving dials first), and closes carried out (resolving dials
    /// that never got an event).
    pub fn drain(&mut self, node: &mut Node, now: Instant, out: &mut impl Outputs<D, S>) {
        loop {
            let mut progress = false;
            if self.has_waiting_sends() {
                self.retry_sends(node, |reply, r| out.send_done(reply, r));
            }
            loop {
                let mut buf = out.buffer();
                // `poll_transmit` appends: bytes left in a reused buffer
                // would go to the wrong connection.
                buf.clear();
                let Some(id) = node.poll_transmit(now, &mut buf) else {
                    out.recycle(buf);
                    break;
                };
                progress = true;
                match out.write(id, buf) {
                    Ok(true) => node.handle_written(id, now),
                    Ok(false) => {}
                    Err(buf) => {
                        out.recycle(buf);
                        node.handle_written(id, now);
                        node.handle_close(id, now);
                    }
                }
            }
            while let Some(dial) = node.poll_dial() {
                progress = true;
                out.dial(dial);
            }
            loop {
                let mut buf = out.buffer();
                buf.clear();
                let Some(to) = node.poll_datagram(&mut buf) else {
                    out.recycle(buf);
                    break;
                };
                progress = true;
                out.datagram(to, buf);
            }
            while let Some(ev) = node.poll_event() {
                progress = true;
                if let Some((reply, r)) = self.on_event(node, &ev) {
                    out.dial_done(reply, r);
                }
                out.event(ev);
            }
            while let Some(id) = node.poll_close() {
                progress = true;
                out.close(id);
                if let Some(reply) = self.on_close(id) {
                    let failure =
                        DialFailure { reason: DisconnectReason::TransportClosed, dialled: None, found: None };
                    out.dial_done(reply, Err(failure));
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Retries waiting sends after the node drained some queue, resolving
    /// each one that is accepted or refused.
    pub fn retry_sends(&mut self, node: &mut Node, mut done: impl FnMut(S, Result<(), BatchError>)) {
        let mut blocked: Vec<(NodeId, ProtocolId)> = Vec::new();
        let mut keep = VecDeque::new();
        while let Some(mut p) = self.sends.pop_front() {
            if blocked.contains(&(p.peer, p.protocol)) {
                keep.push_back(p);
                continue;
            }
            match p.push(node) {
                None => {
                    blocked.push((p.peer, p.protocol));
                    keep.push_back(p);
                }
                Some(r) => done(p.reply, r),
            }
        }
        self.sends = keep;
    }

    /// Resolves a dial from an event: `Ok(peer)` once connected (also when
    /// a duplicate connection to the same peer won), the reason otherwise.
    pub fn on_event(&mut self, node: &Node, ev: &Event) -> Option<(D, Result<NodeId, DialFailure>)> {
        match ev {
            Event::PeerConnected { peer, connection, .. } => {
                self.dials.remove(connection).map(|d| (d, Ok(*peer)))
            }
            Event::ConnectionFailed { connection, reason, peer, found } => {
                let d = self.dials.remove(connection)?;
                Some(match peer {
                    Some(p) if *reason == DisconnectReason::DuplicateConnection && node.is_connected(p) => {
                        (d, Ok(*p))
                    }
                    _ => (d, Err(DialFailure { reason: *reason, dialled: *peer, found: *found })),
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
