//! Delivery: complete messages into events, consecutive small whole
//! messages of one protocol gathered into one `MessageBatch` whose
//! payloads share one arena allocation.

use super::*;

/// Most bytes the arena of small payloads allocates at a time.
pub(super) const ARENA_MAX: usize = 16 << 10;

/// A small message followed by fewer bytes than this in its record is
/// copied alone: the arena would allocate for nothing else.
pub(super) const LONE_TAIL: usize = 128;

/// Messages up to this size that arrive whole in one record share one
/// allocation with their neighbours (see [`Delivery::whole`]).
pub(super) const SHARED_MAX: usize = 4096;

/// Where the messages of one record go: the events, with the payloads of
/// small whole messages copied into the session's arena and handed out in
/// runs (one [`Event::Messages`] for consecutive ones of one protocol).
pub(super) struct Delivery<'a> {
    /// The session's `run_arena`; while a run is open, its payloads are
    /// the arena's bytes.
    pub(super) arena: BytesMut,
    pub(super) events: &'a mut VecDeque<Event>,
    /// The peer and connection the record came from.
    pub(super) from: (NodeId, ConnectionId),
    /// The open run of small messages, if one is open.
    pub(super) run: Option<Run>,
}

/// Consecutive small whole messages of one protocol in one record, their
/// payloads in the arena.
pub(super) struct Run {
    pub(super) protocol: ProtocolId,
    /// The first message's type and payload end.
    pub(super) first: (u32, u32),
    /// Every message's type and payload end once a second one joins (so a
    /// run of one allocates nothing). Grown by doubling from 8: it holds
    /// at most twice as many entries as messages, 8 bytes each.
    pub(super) index: Vec<(u32, u32)>,
}

impl Run {
    #[inline(always)]
    pub(super) fn push(&mut self, entry: (u32, u32)) {
        if self.index.is_empty() {
            self.index.reserve(8);
            self.index.push(self.first);
        }
        self.index.push(entry);
    }
}

impl<'a> Delivery<'a> {
    pub(super) fn new(
        arena: BytesMut,
        events: &'a mut VecDeque<Event>,
        from: (NodeId, ConnectionId),
    ) -> Self {
        Delivery { arena, events, from, run: None }
    }

    /// Delivers a message that arrived whole (`rest`: bytes of the record
    /// from it on). Small ones are copied into the session's arena, one
    /// allocation for many messages, not one each; an allocation is as
    /// large as the rest of the record (the most its small messages can
    /// need) up to 16 KiB, so a session keeps at most 16 KiB of spare room.
    /// A payload kept alive keeps its allocation alive. Larger messages,
    /// and a small one that ends its record, are copied alone.
    #[inline(always)]
    pub(super) fn whole(&mut self, protocol: ProtocolId, msg_type: u32, data: &[u8], rest: usize) {
        // The usual case first: the next message of the open run.
        if let Some(run) = &mut self.run {
            let room = self.arena.capacity() - self.arena.len() >= data.len();
            if run.protocol == protocol && room && !data.is_empty() && data.len() <= SHARED_MAX {
                self.arena.extend_from_slice(data);
                run.push((msg_type, self.arena.len() as u32));
                return;
            }
        }
        self.whole_otherwise(protocol, msg_type, data, rest);
    }

    /// [`whole`](Self::whole) for a message that does not simply join the
    /// open run.
    #[inline(never)]
    pub(super) fn whole_otherwise(&mut self, protocol: ProtocolId, msg_type: u32, data: &[u8], rest: usize) {
        let room = self.arena.capacity() - self.arena.len() >= data.len();
        // Empty (pins nothing); large; or alone at the end of its record
        // (one message per record, as a request or a reply): copied alone.
        if data.is_empty() || data.len() > SHARED_MAX || (!room && rest < data.len() + LONE_TAIL) {
            let payload = if data.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(data) };
            self.push(self.message(protocol, msg_type, payload));
            return;
        }
        if self.run.as_ref().is_some_and(|r| r.protocol != protocol) || !room {
            self.close();
        }
        if !room {
            // The last allocation again if the application has dropped every
            // message cut from it and it is large enough, else a fresh one of
            // exactly this size (`reserve` could double it).
            let want = rest.clamp(data.len(), ARENA_MAX);
            if !self.arena.try_reclaim(want) {
                self.arena = BytesMut::with_capacity(want);
            }
        }
        self.arena.extend_from_slice(data);
        let entry = (msg_type, self.arena.len() as u32);
        match &mut self.run {
            Some(run) => run.push(entry),
            None => self.run = Some(Run { protocol, first: entry, index: Vec::new() }),
        }
    }

    pub(super) fn message(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Event {
        let (peer, connection) = self.from;
        Event::Message { peer, connection, protocol, msg_type, payload }
    }

    /// Delivers `ev` after the open run.
    pub(super) fn push(&mut self, ev: Event) {
        self.close();
        self.events.push_back(ev);
    }

    /// Hands out the open run: one message as [`Event::Message`], more as
    /// [`Event::Messages`].
    pub(super) fn close(&mut self) {
        let Some(Run { protocol, first: (msg_type, _), index }) = self.run.take() else { return };
        let data = self.arena.split().freeze();
        let ev = if index.is_empty() {
            self.message(protocol, msg_type, data)
        } else {
            let (peer, connection) = self.from;
            Event::Messages(MessageBatch::from_parts((peer, connection, protocol), data, index))
        };
        self.events.push_back(ev);
    }
}
