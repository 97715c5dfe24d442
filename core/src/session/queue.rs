//! Admission to the send queues: the queue limits per protocol, peer and
//! node (each message counts its payload plus `MESSAGE_OVERHEAD`), and
//! queueing single messages, batches and send batches.

use super::*;

/// What the queue limits count for `messages` messages of `bytes` payload
/// bytes in all: each message costs [`MESSAGE_OVERHEAD`](flow::MESSAGE_OVERHEAD)
/// more than its payload, so that a queue of empty messages is bounded
/// too.
pub(crate) fn queue_cost(messages: usize, bytes: usize) -> usize {
    bytes.saturating_add(messages.saturating_mul(flow::MESSAGE_OVERHEAD as usize))
}

/// The node-wide queue limits a session's sends are checked against.
pub(crate) struct NodeQueue<'a> {
    /// Payload bytes queued on all sessions (`Node::queued_total`).
    pub(crate) queued: &'a mut usize,
    /// Messages queued on all sessions (`Node::queued_messages`).
    pub(crate) messages: &'a mut usize,
    /// `Config::max_queued_total`.
    pub(crate) max: usize,
    /// `Config::max_queued_per_peer`.
    pub(crate) max_per_peer: usize,
}

impl Session {
    /// Queues `msgs` on `protocol` in order, taking them from the front,
    /// until all are queued or one is refused (it stays at the front).
    /// Each is checked as [`admit`](Self::admit) says.
    pub(crate) fn queue_batch(
        &mut self,
        protocol: ProtocolId,
        msgs: &mut VecDeque<(u32, Bytes)>,
        node: &mut NodeQueue<'_>,
    ) -> Result<(), crate::SendError> {
        if let Some((channel, total)) = self.admit_all(protocol, msgs, node) {
            self.count_queued(node, msgs.len(), total);
            self.scheduler.push_many(channel as usize - 1, channel, protocol, msgs.drain(..));
            return Ok(());
        }
        while let Some((msg_type, payload)) = msgs.pop_front() {
            if let Err((e, payload)) = self.queue_one(protocol, msg_type, payload, node) {
                msgs.push_front((msg_type, payload));
                return Err(e);
            }
        }
        Ok(())
    }

    /// The channel and total payload bytes of `msgs` if every one of them
    /// may be queued on `protocol` (checked together: every type defined
    /// and size allowed, and all of them within the queue limits). `None`
    /// means: check them one by one, as some may be refused. Each limit
    /// check of [`admit`](Self::admit) holds for every message if it holds
    /// for the queue with all of them.
    pub(super) fn admit_all(
        &self,
        protocol: ProtocolId,
        msgs: &VecDeque<(u32, Bytes)>,
        node: &NodeQueue<'_>,
    ) -> Option<(u32, usize)> {
        let channel = self.channel(protocol);
        let ch = (channel as usize).checked_sub(1).and_then(|i| self.channels.get(i))?;
        let (mut total, mut longest, mut top_type) = (0usize, 0usize, 0u32);
        for (msg_type, payload) in msgs {
            total += payload.len();
            longest = longest.max(payload.len());
            top_type = top_type.max(*msg_type);
        }
        (top_type < ch.shared.message_count
            && longest as u64 <= self.peer_max_message
            && self.room(channel, node).is_some_and(|room| queue_cost(msgs.len(), total) <= room))
        .then_some((channel, total))
    }

    /// The [`queue_cost`] that may still be queued on `channel` (shared,
    /// not 0) within the protocol's, the peer's and the node's queue limits;
    /// `None` if one of them is already exceeded (by the message a protocol
    /// with nothing queued may always queue).
    pub(super) fn room(&self, channel: u32, node: &NodeQueue<'_>) -> Option<usize> {
        let (messages, bytes) = self.scheduler.depth(channel as usize - 1);
        let peer = node.max_per_peer.checked_sub(queue_cost(self.queued_messages, self.queued_bytes))?;
        let all = node.max.checked_sub(queue_cost(*node.messages, *node.queued))?;
        Some(peer.min(all).min(self.max_queued_per_protocol.checked_sub(queue_cost(messages, bytes))?))
    }

    /// Counts `messages` messages of `bytes` payload bytes as queued.
    pub(super) fn count_queued(&mut self, node: &mut NodeQueue<'_>, messages: usize, bytes: usize) {
        self.queued_bytes += bytes;
        self.queued_messages += messages;
        *node.queued += bytes;
        *node.messages += messages;
    }

    /// Queues the messages of `batch` on `protocol` as one entry. Refused
    /// whole, with nothing queued, if the protocol is not shared or any
    /// message has an undefined type or is too large for the peer. Then the
    /// queue limits apply to the batch as a whole (with no exception for
    /// an empty queue, unlike [`admit`](Self::admit)): if they leave too
    /// little room, `prefix` queues the messages that fit, if any, and the
    /// rest comes back with `QueueFull`; without it nothing is queued.
    pub(crate) fn queue_packed(
        &mut self,
        protocol: ProtocolId,
        mut batch: SendBatch,
        node: &mut NodeQueue<'_>,
        prefix: bool,
    ) -> Result<(), (crate::SendError, SendBatch)> {
        use crate::SendError as E;
        if batch.is_empty() {
            return Ok(());
        }
        let channel = self.channel(protocol);
        let Some(ch) = (channel as usize).checked_sub(1).and_then(|i| self.channels.get(i)) else {
            return Err((E::ProtocolNotShared, batch));
        };
        let (top_type, longest) = batch.top_type_and_longest();
        if top_type >= ch.shared.message_count {
            return Err((E::UnknownMessageType, batch));
        }
        if longest as u64 > self.peer_max_message {
            return Err((E::MessageTooLarge, batch));
        }
        let room = self.room(channel, node);
        let mut rest = None;
        if room.is_none_or(|room| queue_cost(batch.len(), batch.payload_bytes()) > room) {
            let fit = match room {
                Some(room) if prefix => batch.messages_within(room, flow::MESSAGE_OVERHEAD as usize),
                _ => 0,
            };
            if fit == 0 {
                return Err((E::QueueFull, batch));
            }
            rest = Some(batch.split_off(fit));
        }
        self.count_queued(node, batch.len(), batch.payload_bytes());
        let (data, ends) = batch.into_parts();
        self.scheduler.push_packed(channel as usize - 1, channel, protocol, data, ends);
        match rest {
            Some(rest) => Err((E::QueueFull, rest)),
            None => Ok(()),
        }
    }

    /// The [`queue_cost`] of what is queued on `protocol` and not yet
    /// written (0 if nothing is).
    pub(crate) fn queued_on(&self, protocol: ProtocolId) -> usize {
        match self.channel(protocol) {
            0 => 0,
            c => {
                let (messages, bytes) = self.scheduler.depth(c as usize - 1);
                queue_cost(messages, bytes)
            }
        }
    }

    /// `protocol`'s channel in this session (0: not shared).
    pub(super) fn channel(&self, protocol: ProtocolId) -> u32 {
        self.channel_of.get(protocol.0 as usize).copied().unwrap_or(0)
    }

    /// Queues one message on `protocol`, or hands it back with the reason
    /// (checked as [`admit`](Self::admit) says).
    pub(crate) fn queue_one(
        &mut self,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
        node: &mut NodeQueue<'_>,
    ) -> Result<(), (crate::SendError, Bytes)> {
        let channel = self.channel(protocol);
        if let Err(e) = self.admit(channel, msg_type, payload.len(), node) {
            return Err((e, payload));
        }
        self.count_queued(node, 1, payload.len());
        self.scheduler.push(channel as usize - 1, channel, protocol, msg_type, payload);
        Ok(())
    }

    /// Whether a message of `len` bytes may be queued on `channel` (0: the
    /// protocol is not shared). A protocol with nothing queued may always
    /// queue one message whatever the others hold (protocols whose peer
    /// stopped granting credit cannot starve the rest); the node-wide cap
    /// holds regardless.
    pub(super) fn admit(
        &self,
        channel: u32,
        msg_type: u32,
        len: usize,
        node: &NodeQueue<'_>,
    ) -> Result<(), crate::SendError> {
        use crate::SendError as E;
        let idx = (channel as usize).wrapping_sub(1);
        let (protocol_messages, protocol_bytes) =
            self.channels.get(idx).map_or((0, 0), |_| self.scheduler.depth(idx));
        // Each check: something is queued, and this message would go over.
        let over = |messages: usize, bytes: usize, max: usize| {
            messages > 0 && queue_cost(messages + 1, bytes + len) > max
        };
        let peer_full =
            over(self.queued_messages, self.queued_bytes, node.max_per_peer) && protocol_messages > 0;
        if peer_full || over(*node.messages, *node.queued, node.max) {
            return Err(E::QueueFull);
        }
        let Some(ch) = self.channels.get(idx) else { return Err(E::ProtocolNotShared) };
        if msg_type >= ch.shared.message_count {
            return Err(E::UnknownMessageType);
        }
        if len as u64 > self.peer_max_message {
            return Err(E::MessageTooLarge);
        }
        if over(protocol_messages, protocol_bytes, self.max_queued_per_protocol) {
            return Err(E::QueueFull);
        }
        Ok(())
    }
}
