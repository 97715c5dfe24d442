//! Application commands: dialling and accepting connections, sending,
//! returning credit, disconnecting.

use super::*;

impl Node {
    /// Dials `addr`: the node asks the runtime to open a transport (see
    /// [`poll_dial`](Self::poll_dial)) and, once it is open, runs the
    /// handshake. With a node ID in `addr`, the handshake uses the best
    /// prior knowledge held for that node: a resumption ticket, else its
    /// key (introduced path); without, the full handshake. The outcome is
    /// an event for the returned connection: `PeerConnected`, or
    /// `ConnectionFailed` (with [`DisconnectReason::Unreachable`] if the
    /// transport could not be opened). The handshake timeout runs from now.
    pub fn dial(&mut self, addr: PeerAddr, now: Instant) -> Result<ConnectionId, ConnectError> {
        if addr.id == Some(self.node_id()) {
            return Err(ConnectError::SelfConnect);
        }
        let id = self.table.admit(
            Direction::Outbound,
            addr.addr,
            Phase::Dialing { target: addr.id },
            &self.config,
            now,
        )?;
        self.dials.push_back(Dial { connection: id, addr: addr.addr });
        Ok(id)
    }

    /// Dials `target` at a documentation address and opens the transport
    /// at once: for two-party harnesses that wire nodes together by hand.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn dial_opened(
        &mut self,
        target: Option<NodeId>,
        now: Instant,
    ) -> Result<ConnectionId, ConnectError> {
        let id = self.dial(PeerAddr { id: target, addr: crate::io::TEST_ADDR }, now)?;
        self.dials.retain(|d| d.connection != id);
        self.handle_connected(id, now);
        Ok(id)
    }

    /// Registers an inbound transport the runtime has just accepted from
    /// `remote`. Refused (the runtime should drop the transport) when the
    /// node is at its connection or handshake limit.
    pub fn accept(&mut self, remote: SocketAddr, now: Instant) -> Result<ConnectionId, ConnectError> {
        let phase = Phase::Handshake(Box::new(Handshake::respond()));
        self.table.admit(Direction::Inbound, remote, phase, &self.config, now)
    }

    /// Queues a message for `peer`. The payload is shared, not copied, until
    /// it is sealed into records.
    pub fn send(
        &mut self,
        peer: &NodeId,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let (session, mut node) = self.sendable(peer)?;
        session.queue_one(protocol, msg_type, payload, &mut node).map_err(|(e, _)| e)
    }

    /// Queues every message of `batch` for `peer` on `protocol`, or none of
    /// them: on a refusal the batch comes back with the reason. Its
    /// messages are sealed straight from its buffer, which makes this the
    /// cheapest way to send many small messages. The queue limits apply to
    /// the batch as a whole, with no exception for an empty queue: a batch
    /// larger than `max_queued_per_protocol` (or the peer's or node's
    /// limit) is always refused with `QueueFull`. Split such a batch
    /// ([`SendBatch::split_off`]), or let a runtime's
    /// [`Waiters::send_packed`](crate::Waiters::send_packed) queue it in
    /// parts as room appears.
    pub fn send_packed(
        &mut self,
        peer: &NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
    ) -> Result<(), (SendError, SendBatch)> {
        self.send_packed_from(peer, protocol, batch, false)
    }

    /// [`send_packed`](Self::send_packed), but when the queue limits leave
    /// room for only some of the batch's first messages, those are queued
    /// and the rest comes back with `QueueFull`.
    pub(crate) fn send_packed_from(
        &mut self,
        peer: &NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
        prefix: bool,
    ) -> Result<(), (SendError, SendBatch)> {
        match self.sendable(peer) {
            Ok((session, mut node)) => session.queue_packed(protocol, batch, &mut node, prefix),
            Err(e) => Err((e, batch)),
        }
    }

    /// Queues `msgs` for `peer` in order, taking them from the front, until
    /// all are queued or one is refused (it stays at the front). The peer
    /// is looked up once for the whole batch.
    pub(crate) fn send_queue(
        &mut self,
        peer: &NodeId,
        protocol: ProtocolId,
        msgs: &mut VecDeque<(u32, Bytes)>,
    ) -> Result<(), SendError> {
        let (session, mut node) = self.sendable(peer)?;
        session.queue_batch(protocol, msgs, &mut node)
    }

    /// The session of `peer` if messages may be queued for it, with the
    /// node-wide queue limits they are checked against.
    pub(super) fn sendable(&mut self, peer: &NodeId) -> Result<(&mut Session, NodeQueue<'_>), SendError> {
        let Node { table, config, queued_total, queued_messages, .. } = self;
        let ConnectionTable { peers, connections, .. } = table;
        let node = NodeQueue {
            queued: queued_total,
            messages: queued_messages,
            max: config.limits.max_queued_total,
            max_per_peer: config.limits.max_queued_per_peer,
        };
        let conn = peers.get(peer).and_then(|id| connections.get_mut(id)).ok_or(SendError::NotConnected)?;
        if conn.closing.is_some() {
            return Err(SendError::NotConnected);
        }
        match &mut conn.phase {
            Phase::Established { session, .. } => Ok((session, node)),
            Phase::Dialing { .. } | Phase::Handshake(_) => Err(SendError::NotConnected),
        }
    }

    /// Queues a message for every connected peer that speaks `protocol`.
    /// The payload buffer is shared by every copy queued (a reference count,
    /// not a copy per peer). Peers that do not share the protocol are
    /// skipped; a peer whose queue is full is reported, not waited for.
    pub fn broadcast(&mut self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Broadcast {
        let peers: Vec<NodeId> = self.table.peers.keys().copied().collect();
        let mut out = Broadcast::default();
        for peer in peers {
            match self.send(&peer, protocol, msg_type, payload.clone()) {
                Ok(()) => out.sent.push(peer),
                Err(SendError::ProtocolNotShared) => {}
                Err(e) => out.failed.push((peer, e)),
            }
        }
        out
    }

    /// Tells the node that the application has consumed `messages` messages
    /// that arrived on `connection` for `protocol` (see
    /// [`Event::Message`], [`Event::Messages`] and [`Event::delivered`]),
    /// with `payload_bytes` payload bytes in all, so
    /// their flow-control credit goes back to the peer. Only needed with
    /// [`Config::manual_consume`]. Calls for a connection that is gone (the
    /// credit of a closed connection is void, a new one starts afresh), or
    /// beyond what was received, are ignored.
    pub fn consume(
        &mut self,
        connection: ConnectionId,
        protocol: ProtocolId,
        messages: u64,
        payload_bytes: u64,
    ) {
        let Some(conn) = self.table.connections.get_mut(&connection) else { return };
        if conn.closing.is_some() {
            return;
        }
        if let Phase::Established { session, .. } = &mut conn.phase {
            session.consume(protocol, messages, payload_bytes);
        }
    }

    /// Disconnects `peer` with `reason`; its unsent messages come back in
    /// `PeerDisconnected`. Does nothing if the peer is not connected.
    pub fn disconnect(&mut self, peer: &NodeId, reason: DisconnectReason, now: Instant) {
        if let Some(&id) = self.table.peers.get(peer) {
            self.close(id, CloseCause { reason, remote: false }, now);
        }
    }

    /// Closes one connection, in any phase, with `reason`.
    pub fn close_connection(&mut self, id: ConnectionId, reason: DisconnectReason, now: Instant) {
        self.close(id, CloseCause { reason, remote: false }, now);
    }

    /// Disconnects every connection with [`DisconnectReason::Shutdown`].
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnectionId> = self.table.connections.keys().copied().collect();
        for id in ids {
            self.close(id, CloseCause { reason: DisconnectReason::Shutdown, remote: false }, now);
        }
    }
}
