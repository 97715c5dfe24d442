//! Inputs from the runtime: a dial answered, bytes received (frames
//! into the handshake or the session, a completed handshake established
//! and announced), datagrams, transports ending, buffers written, timers.

use super::*;

impl Node {
    /// The transport of dial `id` is open: the handshake starts, and its
    /// first frame is ready in `poll_transmit` on return. Returns false if
    /// the node no longer wants that transport (the dial timed out or the
    /// node shut down: it was in `poll_close` already); the runtime then
    /// closes it.
    pub fn handle_connected(&mut self, id: ConnectionId, now: Instant) -> bool {
        let target = match self.table.connections.get(&id) {
            Some(Connection { phase: Phase::Dialing { target }, closing: None, .. }) => *target,
            _ => return false,
        };
        let mut first = Vec::new();
        let mut ctx = HandshakeCtx {
            keypair: &self.keypair,
            tickets: &mut self.tickets,
            rng: &mut *self.rng,
            hello: &self.hello,
            events: &mut self.events,
            connection: id,
            now,
        };
        let hs = Handshake::initiate(target, &mut ctx, &mut first);
        // Checked above: the connection is there and dialling.
        let Some(conn) = self.table.connections.get_mut(&id) else { return false };
        match hs {
            Ok(hs) => {
                conn.phase = Phase::Handshake(Box::new(hs));
                conn.push_plain_frame(&first);
            }
            // Only an internal inconsistency makes initiating fail; treat
            // it as a failed connection.
            Err(e) => self.close(id, CloseCause { reason: e.reason(), remote: false }, now),
        }
        true
    }

    /// The transport of dial `id` could not be opened: the connection
    /// fails with [`DisconnectReason::Unreachable`] and ends in
    /// `poll_close` like every other. Ignored for a connection that is not
    /// dialling.
    pub fn handle_dial_failed(&mut self, id: ConnectionId, now: Instant) {
        if matches!(self.table.connections.get(&id), Some(Connection { phase: Phase::Dialing { .. }, .. })) {
            self.close(id, CloseCause { reason: DisconnectReason::Unreachable, remote: true }, now);
        }
    }

    /// Handles bytes received on connection `id`. The bytes are decrypted
    /// in place, so the caller's buffer is clobbered. Unknown connections
    /// are ignored.
    pub fn handle_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(mut conn) = self.table.connections.remove(&id) else {
            return;
        };
        if conn.closing.is_some() {
            self.table.connections.insert(id, conn);
            return;
        }
        let mut partial = core::mem::take(&mut conn.partial);
        let result =
            Connection::split_frames(&mut partial, data, |frame| self.on_frame(id, &mut conn, frame, now));
        conn.partial = partial;
        self.table.connections.insert(id, conn);
        if let Err(cause) = result {
            self.close(id, cause, now);
        }
    }

    /// Handles one frame body. `Ok(true)`: keep reading.
    pub(super) fn on_frame(
        &mut self,
        id: ConnectionId,
        conn: &mut Connection,
        frame: &mut [u8],
        now: Instant,
    ) -> Result<bool, CloseCause> {
        if frame.is_empty() {
            return Err(CloseCause { reason: DisconnectReason::ProtocolViolation, remote: false });
        }
        match &mut conn.phase {
            // No transport yet, so no bytes: a runtime bug, ignored.
            Phase::Dialing { .. } => Ok(false),
            Phase::Handshake(hs) => {
                let mut out = Vec::new();
                let mut ctx = HandshakeCtx {
                    keypair: &self.keypair,
                    tickets: &mut self.tickets,
                    rng: &mut *self.rng,
                    hello: &self.hello,
                    events: &mut self.events,
                    connection: id,
                    now,
                };
                let result = hs.handle_frame(frame, &mut ctx, &mut out);
                for f in &out {
                    conn.push_plain_frame(f);
                }
                match result {
                    Ok(None) => Ok(true),
                    Ok(Some(done)) => {
                        self.establish(id, conn, done, now)?;
                        Ok(true)
                    }
                    Err(e) => Err(CloseCause {
                        reason: e.reason(),
                        remote: matches!(e, HandshakeError::Rejected(_)),
                    }),
                }
            }
            Phase::Established { session, announced, .. } => {
                // A REJECT sent by a peer that had not switched to records
                // yet: records are never shorter than their tag.
                if frame.len() == 2 && frame[0] == hs_kind::REJECT {
                    return Err(CloseCause { reason: DisconnectReason::from_code(frame[1]), remote: true });
                }
                let outcome = if *announced {
                    session.read_record(frame, &self.config, now, &mut self.events)
                } else {
                    // The first authenticated record confirms the initiator
                    // (1-RTT paths): announce before its messages, unless it
                    // only says goodbye.
                    let mut first = VecDeque::new();
                    let outcome = session.read_record(frame, &self.config, now, &mut first);
                    if outcome == Ok(RecordOutcome::Continue) {
                        self.announce(id, conn, now)?;
                        self.events.extend(first);
                    }
                    // Otherwise the peer was never accepted: its messages
                    // are not reported (SPEC.md §5.10).
                    outcome
                };
                match outcome {
                    Ok(RecordOutcome::Continue) => Ok(true),
                    Ok(RecordOutcome::RemoteDisconnect(reason)) => Err(CloseCause { reason, remote: true }),
                    Err(reason) => Err(CloseCause { reason, remote: false }),
                }
            }
        }
    }

    /// Turns a completed handshake into a session and negotiates
    /// protocols. The peer is announced at once when this side dialled or
    /// the full handshake confirmed the initiator; on the 1-RTT paths the
    /// responder waits for the initiator's first record, so a replayed first
    /// message never announces a peer.
    pub(super) fn establish(
        &mut self,
        id: ConnectionId,
        conn: &mut Connection,
        done: Completed,
        now: Instant,
    ) -> Result<(), CloseCause> {
        let Completed { peer, path, keys, remote_hello } = done;
        let fail = |reason| CloseCause { reason, remote: false };
        let ticket = Ticket::derive(&keys.resumption_seed, now + self.config.resumption.lifetime);
        let hello = Hello::decode(&remote_hello, self.config.limits.max_peer_protocols);
        let peer_max = hello
            .as_ref()
            .ok()
            .and_then(|h| h.max_message_size)
            .unwrap_or(self.config.limits.max_message_size);
        let peer_window = hello.as_ref().ok().and_then(|h| h.receive_window);
        let shared =
            hello.as_ref().map(|h| protocol::negotiate(&self.config.protocols, h)).unwrap_or_default();
        let mut session = Session::new(
            (keys.send, keys.recv),
            (peer, id),
            shared,
            self.config.protocols.len(),
            PeerLimits { max_message: peer_max, receive_window: peer_window },
            &self.config,
            now,
        );
        let outbound = conn.direction == Direction::Outbound;
        if outbound && path != HandshakePath::Full {
            // Key confirmation for the responder of a 1-RTT path (and a first RTT sample).
            session.start_ping(now);
        }
        let has_shared = !session.protocols().is_empty();
        conn.phase =
            Phase::Established { session: Box::new(session), announced: false, path, ticket: Some(ticket) };
        // A dial that named a node is established with that node or not
        // at all: whoever answers at the address (after a RETRY brought
        // the handshake down to the full path) is refused, not handed out
        // as the node that was dialled.
        if conn.dialled.is_some_and(|t| t != peer) {
            return Err(fail(DisconnectReason::WrongPeer));
        }
        let hello = hello.map_err(|_| fail(DisconnectReason::ProtocolViolation))?;
        if hello.wire_version != WIRE_VERSION {
            return Err(fail(DisconnectReason::IncompatibleVersion));
        }
        if !has_shared {
            return Err(fail(DisconnectReason::NoSharedProtocols));
        }
        if outbound || path == HandshakePath::Full {
            self.announce(id, conn, now)?;
        }
        Ok(())
    }

    /// Makes an established connection the peer's connection: resolves a
    /// duplicate, stores the next resumption ticket and emits `PeerConnected`.
    pub(super) fn announce(
        &mut self,
        id: ConnectionId,
        conn: &mut Connection,
        now: Instant,
    ) -> Result<(), CloseCause> {
        let fail = |reason| CloseCause { reason, remote: false };
        let Phase::Established { session, announced, path, ticket } = &mut conn.phase else {
            return Ok(());
        };
        let peer = session.peer;
        if peer == self.keypair.node_id() {
            return Err(fail(DisconnectReason::DuplicateConnection));
        }
        if let Some(&other) = self.table.peers.get(&peer) {
            let me = self.keypair.node_id();
            let initiator = |d: Direction| if d == Direction::Outbound { me } else { peer };
            let other_dir = self.table.connections.get(&other).map_or(Direction::Inbound, |c| c.direction);
            if initiator(conn.direction) < initiator(other_dir) {
                self.close(other, fail(DisconnectReason::DuplicateConnection), now);
            } else {
                return Err(fail(DisconnectReason::DuplicateConnection));
            }
        }
        if let Some(t) = ticket.take() {
            self.tickets.insert(peer, t, self.config.resumption.max_tickets);
        }
        *announced = true;
        self.table.peers.insert(peer, id);
        self.events.push_back(Event::PeerConnected {
            peer,
            connection: id,
            direction: conn.direction,
            addr: conn.remote,
            protocols: session.protocols(),
            path: *path,
        });
        Ok(())
    }

    /// Handles a datagram received from `from`. No part of the node reads
    /// datagrams yet (discovery will): each is counted in
    /// [`datagrams_dropped`](Self::datagrams_dropped) and dropped. The
    /// buffer may be clobbered.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &mut [u8], now: Instant) {
        let _ = (from, data, now);
        self.datagrams_dropped += 1;
    }

    /// The transport of `id` was closed or reset by the other side or failed.
    pub fn handle_close(&mut self, id: ConnectionId, now: Instant) {
        self.close(id, CloseCause { reason: DisconnectReason::TransportClosed, remote: true }, now);
    }

    /// The transport of `id` can take another buffer: the one last
    /// returned by `poll_transmit` for it has been written, or handed to a
    /// writer that still has room (a runtime may keep a few buffers in
    /// flight; it must still write every one it was given, even after the
    /// connection closes). The connection may be polled again.
    pub fn handle_written(&mut self, id: ConnectionId, _now: Instant) {
        if let Some(c) = self.table.connections.get_mut(&id) {
            c.write_in_flight = false;
        }
        self.maybe_finish_close(id);
    }

    /// Handles timer expiry: handshake and idle timeouts, keepalive pings,
    /// rekeying, and closing connections that did not flush in time. A call
    /// before any deadline does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut to_close = Vec::new();
        let mut to_finish = Vec::new();
        for (&id, c) in self.table.connections.iter_mut() {
            match c.handle_timeout(&self.config, now) {
                Expiry::None => {}
                Expiry::FinishClose => to_finish.push(id),
                Expiry::Close(reason) => to_close.push((id, reason)),
            }
        }
        for id in to_finish {
            self.finish_close(id);
        }
        for (id, reason) in to_close {
            self.close(id, CloseCause { reason, remote: false }, now);
        }
    }
}
