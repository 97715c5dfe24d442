//! Outputs for the runtime, drained in the order of the contract on
//! [`Node`]: stream bytes, dials, datagrams, events, closes, the deadline.

use super::*;

impl Node {
    /// Writes the next connection's pending bytes into `buf` (appending up
    /// to about `max_transmit_size` bytes) and returns which connection they
    /// are for. The connection is not polled again until
    /// [`handle_written`](Self::handle_written) is called for it, which is
    /// how a peer that does not read exerts backpressure. Connections are
    /// served round robin.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<ConnectionId> {
        let mut allowance = self.config.records.max_transmit_size;
        if let Some(rate) = &mut self.rate {
            allowance = allowance.min(rate.available(now));
            if allowance == 0 {
                return None;
            }
        }
        let cursor = self.transmit_cursor;
        let ready = |c: &Connection| !c.write_in_flight && c.has_output();
        let id = if self.config.shaping.max_connection_rate.is_none() {
            self.table
                .connections
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(self.table.connections.range(..=cursor))
                .find(|(_, c)| ready(c))
                .map(|(id, _)| *id)?
        } else {
            // Paced: the first ready connection whose own bucket has tokens.
            let ids: Vec<ConnectionId> = self
                .table
                .connections
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(self.table.connections.range(..=cursor))
                .filter(|(_, c)| ready(c))
                .map(|(id, _)| *id)
                .collect();
            let mut found = None;
            for id in ids {
                let c = self.table.connections.get_mut(&id)?;
                let avail = c.rate.as_mut().map_or(usize::MAX, |r| r.available(now));
                if avail > 0 {
                    allowance = allowance.min(avail);
                    found = Some(id);
                    break;
                }
            }
            found?
        };
        let conn = self.table.connections.get_mut(&id)?;
        let start = buf.len();
        buf.extend_from_slice(&conn.plain_out);
        conn.plain_out.clear();
        let mut failed = false;
        if let Phase::Established { session, .. } = &mut conn.phase {
            match session.write_records(buf, start + allowance, &self.config, now) {
                Ok((messages, bytes)) => {
                    self.queued_total -= bytes;
                    self.queued_messages -= messages;
                }
                // Only nonce exhaustion, which rekeying prevents.
                Err(_) => failed = true,
            }
        }
        conn.write_in_flight = true;
        let written = buf.len() - start;
        if let Some(r) = &mut conn.rate {
            r.spend(written);
        }
        if let Some(r) = &mut self.rate {
            r.spend(written);
        }
        self.transmit_cursor = id;
        if failed {
            // Nothing more can be sealed, not even a DISCONNECT: report and
            // close the transport after what is already in `buf`.
            self.close(id, CloseCause { reason: DisconnectReason::ResourceLimit, remote: false }, now);
            self.finish_close(id);
        }
        Some(id)
    }

    /// The next transport the runtime must open (see [`Dial`]).
    #[must_use]
    pub fn poll_dial(&mut self) -> Option<Dial> {
        self.dials.pop_front()
    }

    /// The next datagram to send: appends it to `buf` and returns its
    /// destination. Datagrams need no acknowledgement; a runtime that
    /// cannot send one drops it (datagrams may be lost).
    #[must_use]
    pub fn poll_datagram(&mut self, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        let (to, data) = self.datagrams_out.pop_front()?;
        buf.extend_from_slice(&data);
        Some(to)
    }

    /// The next application event. Messages come as [`Event::Message`] or,
    /// several small ones that arrived together, [`Event::Messages`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if !self.config.flow.manual_consume {
            if let Some(d) = ev.delivered() {
                self.consume(d.connection, d.protocol, d.messages, d.bytes);
            }
        }
        Some(ev)
    }

    /// The next transport the runtime must close. Everything returned by
    /// `poll_transmit` for it has been acknowledged with `handle_written`;
    /// a runtime that acknowledged buffers before writing them closes the
    /// transport once they are written. Every connection ends with exactly
    /// one `poll_close`.
    #[must_use]
    pub fn poll_close(&mut self) -> Option<ConnectionId> {
        self.closed.pop_front()
    }

    /// When `handle_timeout` should next be called, or `None` if no timer
    /// runs. With a bandwidth cap, this includes when paced output may go.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let shaped = self.rate.is_some() || self.config.shaping.max_connection_rate.is_some();
        let shaping = shaped
            .then(|| {
                let node = self.rate.as_ref().and_then(TokenBucket::ready_at);
                self.table
                    .connections
                    .values()
                    .filter(|c| !c.write_in_flight && c.has_output())
                    .filter_map(|c| c.rate.as_ref().and_then(TokenBucket::ready_at).max(node))
                    .min()
            })
            .flatten();
        self.table.connections.values().map(|c| c.poll_timeout(&self.config)).chain(shaping).min()
    }
}
