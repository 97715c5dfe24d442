//! Closing a connection: the event, the goodbye, and the end of the
//! transport once it is flushed.

use super::*;

impl Node {
    pub(super) fn close(&mut self, id: ConnectionId, cause: CloseCause, now: Instant) {
        let Some(conn) = self.table.connections.get_mut(&id) else {
            return;
        };
        if conn.closing.is_some() {
            if cause.remote {
                self.finish_close(id);
            }
            return;
        }
        match &mut conn.phase {
            Phase::Established { session, announced: true, .. } => {
                let (unsent, (messages, bytes)) = session.take_unsent();
                self.queued_total -= bytes;
                self.queued_messages -= messages;
                let peer = session.peer;
                if self.table.peers.get(&peer) == Some(&id) {
                    self.table.peers.remove(&peer);
                }
                self.events.push_back(Event::PeerDisconnected {
                    peer,
                    reason: cause.reason,
                    remote: cause.remote,
                    unsent,
                });
            }
            Phase::Established { session, announced: false, .. } => {
                // The node dialled, else (inbound) the one that proved its key.
                let peer = conn.dialled.or(Some(session.peer));
                let found = Some(session.peer);
                let reason = cause.reason;
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, found, reason });
            }
            Phase::Handshake(hs) => {
                let peer = hs.target();
                let reason = cause.reason;
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, found: None, reason });
            }
            Phase::Dialing { target } => {
                let peer = *target;
                let reason = cause.reason;
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, found: None, reason });
                // No transport to tell: it ends here.
                self.finish_close(id);
                return;
            }
        }
        if cause.remote {
            self.finish_close(id);
            return;
        }
        // Tell the peer why, then close once that is flushed.
        let code = cause.reason.on_wire().code();
        match &mut conn.phase {
            Phase::Established { session, .. } => {
                session.clear_control_except_disconnect();
                session.queue_control(Control::Disconnect(cause.reason.on_wire()));
            }
            Phase::Dialing { .. } | Phase::Handshake(_) => {
                conn.plain_out.clear();
                conn.push_plain_frame(&[hs_kind::REJECT, code]);
            }
        }
        conn.closing = Some(Closing { deadline: now + self.config.timeouts.close });
        self.maybe_finish_close(id);
    }

    pub(super) fn maybe_finish_close(&mut self, id: ConnectionId) {
        if let Some(c) = self.table.connections.get(&id) {
            if c.closing.is_some() && !c.write_in_flight && !c.has_output() {
                self.finish_close(id);
            }
        }
    }

    pub(super) fn finish_close(&mut self, id: ConnectionId) {
        if let Some(mut c) = self.table.connections.remove(&id) {
            if let Phase::Established { session, .. } = &mut c.phase {
                // A connection closed by the remote while still queued.
                let (_, (messages, bytes)) = session.take_unsent();
                self.queued_total -= bytes;
                self.queued_messages -= messages;
            }
            self.closed.push_back(id);
        }
    }
}
