//! An established session: records, chunking, reassembly, the control
//! channel (keepalive, rekey, disconnect) and the send queue.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::batch::{MessageBatch, SendBatch};
use crate::chunk::{self, Chunk, MessageStart};
use crate::config::Config;
use crate::connection::ConnectionId;
use crate::control::{Control, MAX_CONTROL_PAYLOAD};
use crate::crypto::cipher::{Keystream, TAG_LEN};
use crate::crypto::{CipherState, CryptoError};
use crate::event::{Event, UnsentMessage};
use crate::flow::{self, ReceiveWindow, SendCredit, UpdateDue};
use crate::identity::NodeId;
use crate::metrics::{PeerMetrics, ProtocolMetrics};
use crate::protocol::{ProtocolId, SharedProtocol};
use crate::reason::DisconnectReason;
use crate::scheduler::Scheduler;
use crate::time::Instant;
use crate::varint::Reader;

/// A message being reassembled from chunks.
struct Partial {
    msg_type: u32,
    total: usize,
    buf: BytesMut,
    /// Size of the allocation behind `buf` (at least `total`; more if a
    /// kept buffer was reused).
    alloc: usize,
}

/// Everything a session keeps per channel (the send queues aside, which
/// the scheduler owns).
struct Channel {
    /// The negotiated protocol.
    shared: SharedProtocol,
    /// Traffic counters.
    stats: ProtocolMetrics,
    /// The message being reassembled.
    partial: Option<Partial>,
    /// Credit the peer granted for sending on this channel.
    credit: SendCredit,
    /// What the peer may still send on this channel.
    window: ReceiveWindow,
}

/// What the peer's hello says about sending to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerLimits {
    /// Largest message the peer accepts.
    pub(crate) max_message: u64,
    /// Credit the peer grants each channel; `None`: no flow control.
    pub(crate) receive_window: Option<u64>,
}

/// What reading a record asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordOutcome {
    /// Keep going.
    Continue,
    /// The peer sent `DISCONNECT` with this reason.
    RemoteDisconnect(DisconnectReason),
}

/// Send-side rekey bookkeeping.
struct RekeyState {
    bytes: u64,
    records: u64,
    due: Instant,
    /// A `REKEY` control message is queued and not yet sealed.
    queued: bool,
}

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

/// The transport phase of a connection.
pub(crate) struct Session {
    send: CipherState,
    recv: CipherState,
    pub(crate) peer: NodeId,
    /// The connection this session runs on.
    connection: ConnectionId,
    /// Per-channel state; channel `c` is at index `c - 1`.
    channels: Vec<Channel>,
    /// Channel of each local protocol (0: not shared).
    channel_of: Vec<u32>,
    /// Largest message the peer accepts.
    peer_max_message: u64,
    /// Most payload bytes queued on one channel (`Config::max_queued_per_protocol`).
    max_queued_per_protocol: usize,
    scheduler: Scheduler,
    /// `Config::max_in_flight_per_peer`: the credit the channels with data
    /// queued share (local policy, see [`Session::in_flight_share`]).
    max_in_flight: u64,
    /// Some window has consumed credit to return now.
    updates_due: bool,
    /// Some window has caught up with credit to return by this time (or
    /// with the next record written, if that comes first).
    updates_soon: Option<Instant>,
    /// Payload bytes queued and not yet written.
    pub(crate) queued_bytes: usize,
    /// Messages queued and not completely written.
    pub(crate) queued_messages: usize,
    control: VecDeque<Control>,
    /// Bytes reserved by the channels' partial messages.
    reassembly_bytes: usize,
    /// Large pieces of payload in the record being written, encrypted from
    /// their messages at sealing time (offset in the record, piece).
    unsealed: Vec<(usize, Bytes)>,
    /// Where the payloads of small whole messages are copied to (see
    /// [`Delivery::whole`]): one allocation serves many records.
    run_arena: BytesMut,
    /// Buffers of reassembled messages and their sizes: once the
    /// application drops a message, its allocation is reused for another.
    spare: Vec<(BytesMut, usize)>,
    /// Bytes of the spare buffers: with `reassembly_bytes`, within
    /// `max_reassembly_per_peer`.
    spare_bytes: usize,
    next_ping: Instant,
    ping_outstanding: Option<(u64, Instant)>,
    ping_counter: u64,
    rtt: Option<Duration>,
    last_recv: Instant,
    rekey: RekeyState,
    /// When the next cover record is due (cover traffic enabled).
    cover_due: Option<Instant>,
    /// A padding-only record is to be sent.
    cover_pending: bool,
}

impl Session {
    /// A session after a successful handshake and negotiation.
    pub(crate) fn new(
        (send, recv): (CipherState, CipherState),
        (peer, connection): (NodeId, ConnectionId),
        channels: Vec<SharedProtocol>,
        local_protocols: usize,
        limits: PeerLimits,
        config: &Config,
        now: Instant,
    ) -> Self {
        let mut channel_of = alloc::vec![0u32; local_protocols];
        for c in &channels {
            channel_of[c.id.0 as usize] = c.channel;
        }
        let weights = channels.iter().map(|c| config.protocols.get(c.id.0 as usize).map_or(1, |p| p.weight));
        let scheduler = Scheduler::new(weights, config.scheduler_quantum, config.priority_message_size);
        let channels = channels
            .into_iter()
            .map(|shared| Channel {
                shared,
                stats: ProtocolMetrics { protocol: shared.id, ..ProtocolMetrics::default() },
                partial: None,
                credit: SendCredit::new(limits.receive_window),
                window: ReceiveWindow::new(config.receive_window),
            })
            .collect();
        Session {
            send,
            recv,
            peer,
            connection,
            channels,
            channel_of,
            peer_max_message: limits.max_message,
            max_queued_per_protocol: config.max_queued_per_protocol,
            scheduler,
            max_in_flight: config.max_in_flight_per_peer,
            updates_due: false,
            updates_soon: None,
            queued_bytes: 0,
            queued_messages: 0,
            control: VecDeque::new(),
            reassembly_bytes: 0,
            unsealed: Vec::new(),
            run_arena: BytesMut::new(),
            spare: Vec::new(),
            spare_bytes: 0,
            next_ping: now + config.keepalive_interval,
            ping_outstanding: None,
            ping_counter: 0,
            rtt: None,
            last_recv: now,
            rekey: RekeyState { bytes: 0, records: 0, due: now + config.rekey_after_time, queued: false },
            cover_due: config.cover_traffic_interval.map(|i| now + i),
            cover_pending: false,
        }
    }

    /// The shared protocols in channel order.
    pub(crate) fn protocols(&self) -> Vec<ProtocolId> {
        self.channels.iter().map(|c| c.shared.id).collect()
    }

    /// The last measured round-trip time.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

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
    fn admit_all(
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
    fn room(&self, channel: u32, node: &NodeQueue<'_>) -> Option<usize> {
        let (messages, bytes) = self.scheduler.depth(channel as usize - 1);
        let peer = node.max_per_peer.checked_sub(queue_cost(self.queued_messages, self.queued_bytes))?;
        let all = node.max.checked_sub(queue_cost(*node.messages, *node.queued))?;
        Some(peer.min(all).min(self.max_queued_per_protocol.checked_sub(queue_cost(messages, bytes))?))
    }

    /// Counts `messages` messages of `bytes` payload bytes as queued.
    fn count_queued(&mut self, node: &mut NodeQueue<'_>, messages: usize, bytes: usize) {
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
    fn channel(&self, protocol: ProtocolId) -> u32 {
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
    fn admit(
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

    /// Queues a control message ahead of application data.
    pub(crate) fn queue_control(&mut self, c: Control) {
        self.control.push_back(c);
    }

    /// True if records are waiting to be written: control messages,
    /// credit to return, or data that flow control lets go.
    pub(crate) fn has_output(&self) -> bool {
        !self.control.is_empty()
            || self.updates_due
            || self.cover_pending
            || (!self.scheduler.is_empty() && {
                let share = self.in_flight_share();
                self.scheduler.has_ready(|i, len| self.channels[i].credit.may_start(flow::cost(len), share))
            })
    }

    /// How much credit each channel with data queued may have outstanding
    /// (local policy on top of the peer's windows): `max_in_flight_per_peer`
    /// split evenly between them. One busy protocol may use its whole
    /// window; eight share the limit, which keeps the bytes in flight, and
    /// so waiting unconsumed at the peer, within the caches.
    fn in_flight_share(&self) -> u64 {
        self.max_in_flight / self.scheduler.active_count().max(1) as u64
    }

    /// The application consumed `messages` messages with `bytes` payload
    /// bytes in all on `protocol`: their credit may go back to the peer.
    pub(crate) fn consume(&mut self, protocol: ProtocolId, messages: u64, bytes: u64) {
        let channel = self.channel(protocol);
        if let Some(c) = (channel as usize).checked_sub(1).and_then(|i| self.channels.get_mut(i)) {
            let cost = bytes.saturating_add(messages.saturating_mul(flow::MESSAGE_OVERHEAD));
            match c.window.consume(cost) {
                UpdateDue::Now => self.updates_due = true,
                UpdateDue::Soon => {
                    self.updates_soon.get_or_insert(self.last_recv + flow::CAUGHT_UP_DELAY);
                }
                UpdateDue::No => {}
            }
        }
    }

    /// Removes every queued application message (for closing), partly
    /// written ones included. Returns them, and the messages and
    /// not-yet-written bytes they still accounted for.
    pub(crate) fn take_unsent(&mut self) -> (Vec<UnsentMessage>, (usize, usize)) {
        let accounted = (core::mem::take(&mut self.queued_messages), core::mem::take(&mut self.queued_bytes));
        let unsent = self
            .scheduler
            .take_all()
            .into_iter()
            .map(|m| UnsentMessage { protocol: m.protocol, msg_type: m.msg_type, payload: m.payload })
            .collect();
        (unsent, accounted)
    }

    /// Drops application data, keeping only queued control messages.
    pub(crate) fn clear_control_except_disconnect(&mut self) {
        self.updates_due = false;
        self.updates_soon = None;
        self.control.retain(|c| matches!(c, Control::Disconnect(_)));
    }

    /// Writes framed, sealed records into `buf` until it holds at least
    /// `budget` bytes or nothing is left. Returns the application messages
    /// (completely written) and payload bytes dequeued.
    pub(crate) fn write_records(
        &mut self,
        buf: &mut Vec<u8>,
        budget: usize,
        config: &Config,
        now: Instant,
    ) -> Result<(usize, usize), CryptoError> {
        let record_size = config.record_size();
        let (mut dequeued, mut done) = (0usize, 0usize);
        let closing = self.control.iter().any(|c| matches!(c, Control::Disconnect(_)));
        if !self.rekey.queued
            && !closing
            && (self.rekey.bytes >= config.rekey_after_bytes
                || self.rekey.records >= config.rekey_after_records
                || now >= self.rekey.due)
        {
            self.rekey.queued = true;
            self.control.push_back(Control::Rekey);
        }
        while buf.len() < budget && self.has_output() {
            // Never build a record that cannot be sealed (2^64 - 1 is
            // reserved; rekeying keeps this unreachable in practice).
            if self.send.nonce() == u64::MAX {
                return Err(CryptoError::NonceExhausted);
            }
            let len_pos = buf.len();
            buf.extend_from_slice(&[0, 0]);
            let start = buf.len();
            let limit = start + record_size;
            let mut rekey_here = false;
            // Control messages first: they are small and latency-sensitive.
            while let Some(c) = self.control.front() {
                let mut payload = [0u8; 16];
                let plen = {
                    let mut v = Vec::new();
                    c.encode_payload(&mut v);
                    payload[..v.len()].copy_from_slice(&v);
                    v.len()
                };
                let st = Some(MessageStart { msg_type: c.msg_type(), total_len: plen as u64 });
                let hl = chunk::data_header_len(0, st, true, plen as u64);
                if buf.len() + hl + plen > limit {
                    break;
                }
                let at = buf.len();
                buf.resize(at + hl, 0);
                chunk::write_data_header(&mut buf[at..], 0, st, true, plen as u64);
                buf.extend_from_slice(&payload[..plen]);
                if matches!(c, Control::Rekey) {
                    rekey_here = true;
                }
                self.control.pop_front();
            }
            // Then credit going back to the peer: due now, or due soon and
            // riding along in this record.
            if self.updates_due || self.updates_soon.is_some() {
                self.write_updates(buf, limit);
            }
            // Then application data, as many chunks as fit, in the order
            // the scheduler chooses. A record carrying a priority message
            // is not filled up with bulk data: it is sent at once, small.
            let mut urgent = false;
            let small = self.scheduler.small();
            let share = self.in_flight_share();
            let channels = &mut self.channels;
            while let Some((idx, allowance)) =
                self.scheduler.next(|i, len| channels[i].credit.may_start(flow::cost(len), share))
            {
                let priority = allowance == usize::MAX;
                if urgent && !priority {
                    break;
                }
                let Some(m) = self.scheduler.head_mut(idx) else { break };
                // The tail of a larger message takes the priority lane too
                // (to finish it), but does not close the record early: only
                // a small message (or a piece of one) does.
                urgent |= priority && m.payload.len() <= small;
                let space = limit.saturating_sub(buf.len());
                let remaining = m.payload.len() - m.offset;
                let st = (m.offset == 0).then_some(MessageStart {
                    msg_type: u64::from(m.msg_type),
                    total_len: m.payload.len() as u64,
                });
                let channel = u64::from(m.channel);
                let whole = st.is_some()
                    && remaining <= allowance
                    && chunk::data_header_len(channel, st, true, remaining as u64) + remaining <= space;
                let take = if whole {
                    remaining
                } else {
                    let worst = chunk::data_header_len(channel, st, false, remaining as u64);
                    if space < worst + remaining.min(1) {
                        // Not even a header and one byte fit: the record is full.
                        break;
                    }
                    remaining.min(space - worst).min(allowance)
                };
                let last = take == remaining;
                if st.is_some() {
                    channels[idx].credit.charge(flow::cost(m.payload.len()));
                }
                let hl = chunk::data_header_len(channel, st, last, take as u64);
                let at = buf.len();
                buf.resize(at + hl, 0);
                chunk::write_data_header(&mut buf[at..], channel, st, last, take as u64);
                if take >= SEALED_MIN && !self.send.opens_whole() {
                    // Encrypted from the payload at sealing time (no copy).
                    // (ring seals in place only: there it is copied in.)
                    self.unsealed.push((buf.len() - start, m.payload.slice(m.offset..m.offset + take)));
                    buf.resize(buf.len() + take, 0);
                } else {
                    buf.extend_from_slice(&m.payload[m.offset..m.offset + take]);
                }
                dequeued += take;
                done += usize::from(last);
                let st = &mut channels[idx].stats;
                st.bytes_out += take as u64;
                st.messages_out += u64::from(last);
                self.scheduler.advance(idx, take);
                // The next whole messages of the only busy channel, written
                // without asking the scheduler each time: it would choose
                // this channel again, with the same allowance.
                if !last || allowance < usize::MAX - 1 || self.scheduler.active_count() != 1 {
                    continue;
                }
                let mut run = WholeRun {
                    small,
                    credit: &mut channels[idx].credit,
                    share,
                    limit,
                    urgent,
                    count: 0,
                    bytes: 0,
                };
                'queue: for m in self.scheduler.queue(idx) {
                    if m.offset != 0 || !run.put(buf, m.channel, m.msg_type, &m.payload) {
                        break;
                    }
                    // The rest of a send batch, straight from its buffer.
                    if let Some(p) = &m.more {
                        for (msg_type, payload) in p.rest() {
                            if !run.put(buf, m.channel, msg_type, payload) {
                                break 'queue;
                            }
                        }
                    }
                }
                let (count, bytes) = (run.count, run.bytes);
                urgent = run.urgent;
                dequeued += bytes;
                done += count;
                let st = &mut channels[idx].stats;
                st.bytes_out += bytes as u64;
                st.messages_out += count as u64;
                self.scheduler.pop_whole(idx, count, bytes);
            }
            if buf.len() == start && self.cover_pending {
                // Cover traffic: a record of padding only.
                buf.push(chunk::TAG_PADDING);
            }
            self.cover_pending = false;
            let plain_len = buf.len() - start;
            if plain_len == 0 {
                buf.truncate(len_pos);
                break;
            }
            // Traffic shaping: pad up to the bucket (a padding chunk is a
            // zero tag byte, and the rest of the record is ignored).
            let plain_len = config.padded_len(plain_len);
            buf.resize(start + plain_len, 0);
            let tag = self.send.seal_with_parts(&[], &mut buf[start..], &self.unsealed);
            self.unsealed.clear();
            let tag = tag?;
            buf.extend_from_slice(&tag);
            let body_len = (plain_len + TAG_LEN) as u16;
            buf[len_pos..len_pos + 2].copy_from_slice(&body_len.to_be_bytes());
            self.rekey.bytes += (plain_len + TAG_LEN) as u64;
            self.rekey.records += 1;
            if rekey_here {
                self.send.rekey();
                self.rekey =
                    RekeyState { bytes: 0, records: 0, due: now + config.rekey_after_time, queued: false };
            }
            if urgent {
                // Hand the priority record to the transport on its own,
                // instead of behind more bulk records in the same buffer.
                break;
            }
        }
        self.queued_bytes -= dequeued;
        self.queued_messages -= done;
        Ok((done, dequeued))
    }

    /// Writes the due `WINDOW_UPDATE` chunks that fit before `limit`.
    fn write_updates(&mut self, buf: &mut Vec<u8>, limit: usize) {
        /// Longest update chunk: tag, body length, two 8-byte varints.
        const MAX_UPDATE: usize = 18;
        for (i, w) in self.channels.iter_mut().map(|c| &mut c.window).enumerate() {
            if buf.len() + MAX_UPDATE > limit {
                return; // the rest goes in the next record
            }
            if let Some(inc) = w.take_update() {
                flow::write_update(buf, i as u64 + 1, inc);
            }
        }
        self.updates_due = false;
        self.updates_soon = None;
    }

    /// Opens one record body and handles its chunks, pushing completed
    /// messages to `events`. The tag is checked first; then the body is
    /// decrypted in place as its chunks are read, in windows of at least
    /// 1 KiB ending on block boundaries (a record of many small chunks takes
    /// a few long keystream calls, not one per chunk), except large pieces
    /// of messages being reassembled: those are decrypted straight from the
    /// record into their reassembly buffers, which saves copying them.
    pub(crate) fn read_record(
        &mut self,
        body: &mut [u8],
        config: &Config,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> Result<RecordOutcome, DisconnectReason> {
        if body.len() < TAG_LEN {
            return Err(DisconnectReason::ProtocolViolation);
        }
        let len = body.len() - TAG_LEN;
        let (ct, tag) = body.split_at_mut(len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let mut text = if self.recv.opens_whole() {
            // ring checks and decrypts the record in one call.
            self.recv.open_in_place(&[], ct, &t).map_err(|_| DisconnectReason::DecryptFailed)?;
            let done = ct.len();
            Opening { ct, ks: Keystream::spent(), done }
        } else {
            let ks = self.recv.verify(&[], ct, &t).map_err(|_| DisconnectReason::DecryptFailed)?;
            Opening { ct, ks, done: 0 }
        };
        self.last_recv = now;
        let mut out =
            Delivery::new(core::mem::take(&mut self.run_arena), events, (self.peer, self.connection));
        let result = self.read_chunks(&mut text, config, now, &mut out);
        out.close();
        self.run_arena = out.arena;
        let (outcome, rekeys) = result?;
        // Each REKEY in a record advances the receive key once, after the record.
        for _ in 0..rekeys {
            self.recv.rekey();
        }
        Ok(outcome)
    }

    /// The chunk loop of [`read_record`](Self::read_record); returns the
    /// outcome and the number of `REKEY`s read.
    fn read_chunks(
        &mut self,
        text: &mut Opening<'_>,
        config: &Config,
        now: Instant,
        out: &mut Delivery<'_>,
    ) -> Result<(RecordOutcome, u32), DisconnectReason> {
        let len = text.ct.len();
        let mut outcome = RecordOutcome::Continue;
        let mut rekeys = 0u32;
        let mut pos = 0;
        while pos < len {
            text.decrypt_to((pos + chunk::MAX_HEADER).min(len));
            // The usual small whole message, read without the general decoder.
            if let Some((channel, msg_type, total, header)) = chunk::small_whole_header(&text.ct[pos..]) {
                let from = pos + header;
                let end = from + total;
                if channel != 0 && end <= len {
                    text.decrypt_to(end);
                    self.read_whole(channel, msg_type, &text.ct[from..end], len - from, config, out)?;
                    pos = end;
                    continue;
                }
            }
            let mut r = Reader::new(&text.ct[pos..]);
            let c = chunk::decode(&mut r).map_err(|_| DisconnectReason::ProtocolViolation)?;
            let end = len - r.remaining().len();
            // What the chunk is, with its data as a range of the record (the
            // borrow of the record ends here: the data may still be sealed).
            let (channel, start, last, from) = match c {
                None | Some(Chunk::Padding) => break,
                Some(Chunk::Data { channel, start, last, data }) => (channel, start, last, end - data.len()),
                Some(Chunk::Extension { tag, body }) => {
                    if tag == flow::TAG_WINDOW_UPDATE {
                        let from = end - body.len();
                        text.decrypt_to(end);
                        let (channel, inc) = flow::decode_update(&text.ct[from..end])
                            .ok_or(DisconnectReason::ProtocolViolation)?;
                        let credit = usize::try_from(channel)
                            .ok()
                            .and_then(|c| c.checked_sub(1))
                            .and_then(|i| self.channels.get_mut(i))
                            .map(|c| &mut c.credit)
                            .ok_or(DisconnectReason::UnknownMessageType)?;
                        credit.grant(inc).map_err(|_| DisconnectReason::FlowControlViolation)?;
                    }
                    // Unknown extensions are skipped.
                    pos = end;
                    continue;
                }
            };
            pos = end;
            if channel == 0 {
                text.decrypt_to(end);
                let data = &text.ct[from..end];
                let st = start.ok_or(DisconnectReason::ProtocolViolation)?;
                if !last || data.len() > MAX_CONTROL_PAYLOAD {
                    return Err(DisconnectReason::ProtocolViolation);
                }
                let ctl =
                    Control::decode(st.msg_type, data).map_err(|_| DisconnectReason::ProtocolViolation)?;
                match ctl {
                    Control::Ping(token) => {
                        // At most one PONG is pending: a flood of PINGs
                        // refreshes its token instead of growing the queue.
                        match self.control.iter_mut().find(|c| matches!(c, Control::Pong(_))) {
                            Some(pending) => *pending = Control::Pong(token),
                            None => self.control.push_back(Control::Pong(token)),
                        }
                    }
                    Control::Pong(token) => {
                        if let Some((t, sent)) = self.ping_outstanding {
                            if t == token {
                                self.rtt = Some(now - sent);
                                self.ping_outstanding = None;
                            }
                        }
                    }
                    Control::Disconnect(reason) => outcome = RecordOutcome::RemoteDisconnect(reason),
                    Control::Rekey => rekeys += 1,
                    Control::Unknown => {}
                }
                continue;
            }
            // A large piece of a message being reassembled stays sealed in
            // the record: it is decrypted into its reassembly buffer.
            let piece = if !(start.is_some() && last) && end - from >= SEALED_MIN {
                let plain = text.done.clamp(from, end);
                Piece {
                    plain: &text.ct[from..plain],
                    sealed: &text.ct[plain..end],
                    at: plain,
                    ks: &mut text.ks,
                    rest: len - from,
                }
            } else {
                text.decrypt_to(end);
                Piece { plain: &text.ct[from..end], sealed: &[], at: end, ks: &mut text.ks, rest: len - from }
            };
            let sealed = !piece.sealed.is_empty();
            self.read_data(channel, start, last, piece, config, out)?;
            if sealed {
                // Left as ciphertext: the next window starts after it.
                text.done = text.done.max(end);
            }
        }
        Ok((outcome, rekeys))
    }

    /// Sends a keepalive ping now (also used as the initiator's first record).
    pub(crate) fn start_ping(&mut self, now: Instant) {
        self.ping_counter += 1;
        self.ping_outstanding = Some((self.ping_counter, now));
        self.control.push_back(Control::Ping(self.ping_counter));
    }

    /// A message that arrived whole, in one chunk on `channel` (not 0):
    /// `data` is its payload (`total_len` bytes, see `chunk::decode`), and
    /// `rest` the bytes of the record from it on.
    #[inline(always)]
    fn read_whole(
        &mut self,
        channel: u64,
        msg_type: u64,
        data: &[u8],
        rest: usize,
        config: &Config,
        out: &mut Delivery<'_>,
    ) -> Result<(), DisconnectReason> {
        let idx = usize::try_from(channel - 1).map_err(|_| DisconnectReason::UnknownMessageType)?;
        let ch = self.channels.get_mut(idx).ok_or(DisconnectReason::UnknownMessageType)?;
        if ch.partial.is_some() {
            return Err(DisconnectReason::ProtocolViolation);
        }
        if msg_type >= u64::from(ch.shared.message_count) {
            return Err(DisconnectReason::UnknownMessageType);
        }
        if data.len() as u64 > config.max_message_size {
            return Err(DisconnectReason::MessageTooLarge);
        }
        ch.window.admit(flow::cost(data.len())).map_err(|_| DisconnectReason::FlowControlViolation)?;
        ch.stats.messages_in += 1;
        ch.stats.bytes_in += data.len() as u64;
        out.whole(ch.shared.id, msg_type as u32, data, rest);
        Ok(())
    }

    fn read_data(
        &mut self,
        channel: u64,
        start: Option<MessageStart>,
        last: bool,
        data: Piece<'_>,
        config: &Config,
        out: &mut Delivery<'_>,
    ) -> Result<(), DisconnectReason> {
        if let (Some(st), true) = (start, last) {
            return self.read_whole(channel, st.msg_type, data.plain, data.rest, config, out);
        }
        let idx = usize::try_from(channel - 1).map_err(|_| DisconnectReason::UnknownMessageType)?;
        let ch = self.channels.get_mut(idx).ok_or(DisconnectReason::UnknownMessageType)?;
        let shared = ch.shared;
        let slot = &mut ch.partial;
        let partial = match (start, slot.take()) {
            (Some(_), Some(_)) | (None, None) => return Err(DisconnectReason::ProtocolViolation),
            (None, Some(p)) => p,
            (Some(st), None) => {
                if st.msg_type >= u64::from(shared.message_count) {
                    return Err(DisconnectReason::UnknownMessageType);
                }
                if st.total_len > config.max_message_size {
                    return Err(DisconnectReason::MessageTooLarge);
                }
                let total = st.total_len as usize;
                self.channels[idx]
                    .window
                    .admit(flow::cost(total))
                    .map_err(|_| DisconnectReason::FlowControlViolation)?;
                let msg_type = st.msg_type as u32;
                if self.reassembly_bytes + total > config.max_reassembly_per_peer {
                    return Err(DisconnectReason::ResourceLimit);
                }
                if self.reassembly_bytes + self.spare_bytes + total > config.max_reassembly_per_peer {
                    // Buffers in use come first: the kept ones go.
                    self.spare.clear();
                    self.spare_bytes = 0;
                }
                self.reassembly_bytes += total;
                // A kept buffer the application is done with, large enough
                // and not much larger (it is not pinned by a small message).
                let reusable = self.spare.iter_mut().position(|(buf, size)| {
                    *size >= total && *size <= 2 * total + (64 << 10) && buf.try_reclaim(total)
                });
                let mut buf = match reusable {
                    Some(i) => {
                        let (buf, size) = self.spare.swap_remove(i);
                        self.spare_bytes -= size;
                        buf
                    }
                    None => BytesMut::new(),
                };
                buf.clear();
                buf.reserve(total);
                let alloc = buf.capacity().max(total);
                Partial { msg_type, total, buf, alloc }
            }
        };
        let mut p = partial;
        if p.buf.len() + data.len() > p.total {
            return Err(DisconnectReason::ProtocolViolation);
        }
        data.append_to(&mut p.buf);
        if last {
            if p.buf.len() != p.total {
                return Err(DisconnectReason::ProtocolViolation);
            }
            self.reassembly_bytes -= p.total;
            let st = &mut self.channels[idx].stats;
            st.messages_in += 1;
            st.bytes_in += p.total as u64;
            let payload = p.buf.split().freeze();
            // Kept for reuse only within the reassembly budget.
            if self.spare.len() < MAX_SPARE
                && self.reassembly_bytes + self.spare_bytes + p.alloc <= config.max_reassembly_per_peer
            {
                self.spare_bytes += p.alloc;
                // An empty handle on the allocation, without the unused
                // tail a larger reused buffer leaves: `try_reclaim` on it
                // succeeds only once the application has dropped the message.
                self.spare.push((p.buf.split_to(0), p.alloc));
            }
            out.push(out.message(shared.id, p.msg_type, payload));
        } else {
            self.channels[idx].partial = Some(p);
        }
        Ok(())
    }

    /// The session's next deadline.
    pub(crate) fn poll_timeout(&self, config: &Config) -> Instant {
        let idle = self.last_recv + config.idle_timeout;
        let mut t = idle.min(self.next_ping);
        if !self.rekey.queued {
            t = t.min(self.rekey.due);
        }
        if let Some(c) = self.cover_due {
            t = t.min(c);
        }
        if let Some(u) = self.updates_soon {
            t = t.min(u);
        }
        t
    }

    /// Handles timer expiry: keepalive, rekey and the idle timeout.
    pub(crate) fn handle_timeout(&mut self, config: &Config, now: Instant) -> Result<(), DisconnectReason> {
        if now >= self.last_recv + config.idle_timeout {
            return Err(DisconnectReason::IdleTimeout);
        }
        if self.updates_soon.is_some_and(|u| now >= u) {
            self.updates_soon = None;
            self.updates_due = true;
        }
        if now >= self.next_ping {
            self.start_ping(now);
            self.next_ping = now + config.keepalive_interval;
        }
        if let (Some(due), Some(interval)) = (self.cover_due, config.cover_traffic_interval) {
            if now >= due {
                self.cover_pending = !self.has_output();
                self.cover_due = Some(now + interval);
            }
        }
        if !self.rekey.queued && now >= self.rekey.due {
            self.rekey.queued = true;
            self.control.push_back(Control::Rekey);
        }
        Ok(())
    }

    /// A snapshot of the per-protocol counters and queue depths.
    pub(crate) fn metrics(&self) -> PeerMetrics {
        let protocols = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (queued_messages, queued_bytes) = self.scheduler.depth(i);
                ProtocolMetrics {
                    queued_messages,
                    queued_bytes,
                    send_credit: c.credit.available(),
                    unconsumed: c.window.unconsumed(),
                    ..c.stats
                }
            })
            .collect();
        PeerMetrics { peer: self.peer, rtt: self.rtt, protocols }
    }

    /// Bytes held for partly received messages.
    pub(crate) fn reassembly_bytes(&self) -> usize {
        self.reassembly_bytes
    }
}

/// Pieces of messages at least this large are decrypted straight into
/// their reassembly buffers (see [`Session::read_record`]).
const SEALED_MIN: usize = 8192;

/// Most reassembly buffers a session keeps for reuse.
const MAX_SPARE: usize = 128;

/// Most bytes the arena of small payloads allocates at a time.
const ARENA_MAX: usize = 16 << 10;

/// A small message followed by fewer bytes than this in its record is
/// copied alone: the arena would allocate for nothing else.
const LONE_TAIL: usize = 128;

/// Messages up to this size that arrive whole in one record share one
/// allocation with their neighbours (see [`Delivery::whole`]).
const SHARED_MAX: usize = 4096;

/// A record being opened: its body (ciphertext and plaintext) and the
/// keystream that decrypts it.
struct Opening<'a> {
    ct: &'a mut [u8],
    ks: Keystream,
    /// Everything before it is plaintext, or a sealed piece (handed out).
    done: usize,
}

impl Opening<'_> {
    /// Decrypts in place up to at least `upto`: a window of at least
    /// `WINDOW` bytes, ending on a block boundary.
    fn decrypt_to(&mut self, upto: usize) {
        const WINDOW: usize = 1024;
        if self.done < upto {
            let next = (upto.max(self.done + WINDOW).next_multiple_of(64)).min(self.ct.len());
            self.ks.apply(self.done, &mut self.ct[self.done..next]);
            self.done = next;
        }
    }
}

/// A piece of a message in a record: `plain` (decrypted) followed by
/// `sealed` (still ciphertext, at record offset `at`, which `ks` decrypts).
struct Piece<'a> {
    plain: &'a [u8],
    sealed: &'a [u8],
    at: usize,
    ks: &'a mut Keystream,
    /// Bytes of the record from the piece on.
    rest: usize,
}

impl Piece<'_> {
    fn len(&self) -> usize {
        self.plain.len() + self.sealed.len()
    }

    /// Appends the piece to `buf`, decrypting the sealed part on the way.
    fn append_to(self, buf: &mut BytesMut) {
        buf.extend_from_slice(self.plain);
        if !self.sealed.is_empty() {
            let at = buf.len();
            buf.resize(at + self.sealed.len(), 0);
            self.ks.apply_into(self.at, self.sealed, &mut buf[at..]);
        }
    }
}

/// Where the messages of one record go: the events, with the payloads of
/// small whole messages copied into the session's arena and handed out in
/// runs (one [`Event::Messages`] for consecutive ones of one protocol).
struct Delivery<'a> {
    /// The session's `run_arena`; while a run is open, its payloads are
    /// the arena's bytes.
    arena: BytesMut,
    events: &'a mut VecDeque<Event>,
    /// The peer and connection the record came from.
    from: (NodeId, ConnectionId),
    /// The open run of small messages, if one is open.
    run: Option<Run>,
}

/// Consecutive small whole messages of one protocol in one record, their
/// payloads in the arena.
struct Run {
    protocol: ProtocolId,
    /// The first message's type and payload end.
    first: (u32, u32),
    /// Every message's type and payload end once a second one joins (so a
    /// run of one allocates nothing). Grown by doubling from 8: it holds
    /// at most twice as many entries as messages, 8 bytes each.
    index: Vec<(u32, u32)>,
}

impl Run {
    #[inline(always)]
    fn push(&mut self, entry: (u32, u32)) {
        if self.index.is_empty() {
            self.index.reserve(8);
            self.index.push(self.first);
        }
        self.index.push(entry);
    }
}

impl<'a> Delivery<'a> {
    fn new(arena: BytesMut, events: &'a mut VecDeque<Event>, from: (NodeId, ConnectionId)) -> Self {
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
    fn whole(&mut self, protocol: ProtocolId, msg_type: u32, data: &[u8], rest: usize) {
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
    fn whole_otherwise(&mut self, protocol: ProtocolId, msg_type: u32, data: &[u8], rest: usize) {
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

    fn message(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Event {
        let (peer, connection) = self.from;
        Event::Message { peer, connection, protocol, msg_type, payload }
    }

    /// Delivers `ev` after the open run.
    fn push(&mut self, ev: Event) {
        self.close();
        self.events.push_back(ev);
    }

    /// Hands out the open run: one message as [`Event::Message`], more as
    /// [`Event::Messages`].
    fn close(&mut self) {
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

/// The fast loop of `write_records`: whole small messages of the only busy
/// channel, written one after another while flow control, the priority
/// rule and the record allow.
struct WholeRun<'a> {
    small: usize,
    credit: &'a mut SendCredit,
    share: u64,
    /// Where the record's plaintext must end.
    limit: usize,
    /// The record carries a priority message (no larger ones may follow).
    urgent: bool,
    /// Messages and payload bytes written.
    count: usize,
    bytes: usize,
}

impl WholeRun<'_> {
    /// Writes one message whole into `buf`; false (nothing written) if it
    /// may not go in this record this way.
    #[inline(always)]
    fn put(&mut self, buf: &mut Vec<u8>, channel: u32, msg_type: u32, payload: &[u8]) -> bool {
        let len = payload.len();
        if (self.urgent && len > self.small) || len >= SEALED_MIN {
            return false;
        }
        let cost = flow::cost(len);
        if !self.credit.may_start(cost, self.share) {
            return false;
        }
        let (channel, msg_type) = (u64::from(channel), u64::from(msg_type));
        if buf.len() + chunk::whole_header_len(channel, msg_type, len as u64) + len > self.limit {
            return false;
        }
        self.urgent |= len <= self.small;
        self.credit.charge(cost);
        chunk::push_whole_header(buf, channel, msg_type, len as u64);
        buf.extend_from_slice(payload);
        self.count += 1;
        self.bytes += len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Message;
    use crate::protocol::ProtocolId;
    use alloc::vec;

    /// Node-wide queue counts with no limits, for tests that queue on a
    /// session directly.
    #[derive(Default)]
    struct Unlimited {
        queued: usize,
        messages: usize,
    }

    impl Unlimited {
        fn node(&mut self) -> NodeQueue<'_> {
            NodeQueue {
                queued: &mut self.queued,
                messages: &mut self.messages,
                max: usize::MAX,
                max_per_peer: usize::MAX,
            }
        }
    }

    /// A receiving session and the cipher that seals records for it.
    fn receiver(config: &Config) -> (Session, CipherState) {
        receiver_granted(config, None)
    }

    /// The same, with the peer granting `peer_window` credit per channel.
    fn receiver_granted(config: &Config, peer_window: Option<u64>) -> (Session, CipherState) {
        let channels = vec![
            SharedProtocol { id: ProtocolId(0), channel: 1, message_count: 4 },
            SharedProtocol { id: ProtocolId(1), channel: 2, message_count: 4 },
        ];
        // The RustCrypto path (keystream windows, sealed pieces) even when
        // the `ring` feature is on: the node scenarios exercise ring.
        let s = Session::new(
            (CipherState::rustcrypto([1; 32]), CipherState::rustcrypto([2; 32])),
            (NodeId([9; 32]), ConnectionId(0)),
            channels,
            2,
            PeerLimits { max_message: u64::MAX, receive_window: peer_window },
            config,
            Instant::ZERO,
        );
        (s, CipherState::new([2; 32]))
    }

    fn chunk(out: &mut Vec<u8>, channel: u64, start: Option<(u64, u64)>, last: bool, data: &[u8]) {
        let st = start.map(|(t, n)| MessageStart { msg_type: t, total_len: n });
        let at = out.len();
        out.resize(at + chunk::data_header_len(channel, st, last, data.len() as u64), 0);
        chunk::write_data_header(&mut out[at..], channel, st, last, data.len() as u64);
        out.extend_from_slice(data);
    }

    fn feed(
        s: &mut Session,
        c: &mut CipherState,
        plain: &[u8],
        config: &Config,
    ) -> Result<Vec<Event>, DisconnectReason> {
        let mut body = plain.to_vec();
        let tag = c.seal_in_place(&[], &mut body).expect("seal");
        body.extend_from_slice(&tag);
        let mut ev = VecDeque::new();
        s.read_record(&mut body, config, Instant::ZERO, &mut ev)?;
        Ok(ev.into_iter().collect())
    }

    #[test]
    fn small_whole_messages_share_one_allocation_and_large_ones_do_not() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        let big = vec![7u8; SHARED_MAX + 1];
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 3)), true, b"one");
        chunk(&mut r, 2, Some((1, 3)), true, b"two");
        chunk(&mut r, 1, Some((2, big.len() as u64)), true, &big);
        chunk(&mut r, 1, Some((3, 5)), true, b"three");
        let ev = feed(&mut s, &mut c, &r, &config).unwrap();
        let p: Vec<Bytes> = ev
            .into_iter()
            .map(|e| match e {
                Event::Message { payload, .. } => payload,
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!([&p[0][..], &p[1][..], &p[2][..], &p[3][..]], [&b"one"[..], b"two", &big, b"three"]);
        let at = |b: &Bytes| b.as_ptr() as usize;
        // "one", "two" and "three" are copied one after the other into the
        // session's arena ...
        assert_eq!(at(&p[1]), at(&p[0]) + 3);
        assert_eq!(at(&p[3]), at(&p[1]) + 3);
        // ... and the large message, copied alone, is not in it.
        assert!(at(&p[2]) + p[2].len() <= at(&p[0]) || at(&p[2]) >= at(&p[3]) + 5);
    }

    #[test]
    fn small_messages_share_an_allocation_sized_by_their_record() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        // The payloads, and how many events brought them.
        let payloads = |ev: Vec<Event>| -> (Vec<Bytes>, usize) {
            let events = ev.len();
            let all = ev
                .into_iter()
                .flat_map(|e| match e {
                    Event::Message { payload, .. } => vec![payload],
                    Event::Messages(b) => (0..b.len()).filter_map(|i| b.payload(i)).collect(),
                    e => panic!("{e:?}"),
                })
                .collect();
            (all, events)
        };
        let at = |b: &Bytes| b.as_ptr() as usize;
        // A message alone in its record (a request, a reply) is copied alone.
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 3)), true, b"one");
        let (lone, _) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
        assert_eq!(&lone[0][..], b"one");
        assert_eq!(s.run_arena.capacity(), 0, "no arena for a lone message");
        // The 100 small messages of a record share one allocation, sized by
        // the record: the session keeps less than a record of spare room.
        r.clear();
        for _ in 0..100 {
            chunk(&mut r, 1, Some((0, 64)), true, &[9u8; 64]);
        }
        let (held, events) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
        assert_eq!(events, 1, "one batch");
        assert_eq!(at(&held[99]) - at(&held[0]), 99 * 64);
        assert!(s.run_arena.capacity() < r.len(), "{} spare", s.run_arena.capacity());
        // A later small message uses the room left, though `held` is kept.
        r.clear();
        chunk(&mut r, 2, Some((1, 1)), true, b"x");
        let (later, _) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
        assert_eq!(at(&later[0]), at(&held[99]) + 64);
        // A record of 900 small messages: allocations of at most 16 KiB.
        r.clear();
        for _ in 0..900 {
            chunk(&mut r, 1, Some((0, 64)), true, &[5u8; 64]);
        }
        let (many, events) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
        assert_eq!(many.len(), 900);
        // A batch is one allocation: 900 x 64 B need four of 16 KiB.
        assert!((4..=5).contains(&events), "{events} batches");
        assert!(s.run_arena.capacity() <= ARENA_MAX);
        let contiguous = many.windows(2).filter(|w| at(&w[1]) == at(&w[0]) + 64).count();
        assert!(contiguous >= 890, "{contiguous} of 899 neighbours share an allocation");
    }

    #[test]
    fn consecutive_small_messages_of_a_protocol_come_as_one_batch_in_order() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        // A large message starts in one record...
        let mut r = Vec::new();
        chunk(&mut r, 2, Some((3, 2 * SHARED_MAX as u64)), false, &[7u8; SHARED_MAX]);
        assert!(feed(&mut s, &mut c, &r, &config).unwrap().is_empty());
        // ... and ends in the next, between runs of small ones.
        r.clear();
        for (channel, msg_type, body) in [(1, 0, &b"a0"[..]), (1, 1, b"a1"), (1, 2, b""), (1, 2, b"a2")] {
            chunk(&mut r, channel, Some((msg_type, body.len() as u64)), true, body);
        }
        chunk(&mut r, 2, None, true, &[8u8; SHARED_MAX]);
        chunk(&mut r, 2, Some((1, 2)), true, b"b0");
        chunk(&mut r, 2, Some((2, 2)), true, b"b1");
        chunk(&mut r, 1, Some((0, 2)), true, b"c0");
        chunk(&mut r, 1, Some((1, 3)), true, b"c1!");
        chunk(&mut r, 2, Some((3, 2)), true, b"d0");
        let events = feed(&mut s, &mut c, &r, &config).unwrap();
        // Each event as its protocol and (type, payload) pairs.
        type Shape = Vec<(u16, Vec<(u32, Vec<u8>)>)>;
        let shape: Shape = events
            .iter()
            .map(|e| match e {
                Event::Message { protocol, msg_type, payload, .. } => {
                    (protocol.0, vec![(*msg_type, payload.to_vec())])
                }
                Event::Messages(b) => (b.protocol.0, b.iter().map(|(t, p)| (t, p.to_vec())).collect()),
                e => panic!("{e:?}"),
            })
            .collect();
        let large: Vec<u8> = [[7u8; SHARED_MAX], [8u8; SHARED_MAX]].concat();
        let expect: Shape = vec![
            // The empty message is delivered alone; it ends a run.
            (0, vec![(0, b"a0".to_vec()), (1, b"a1".to_vec())]),
            (0, vec![(2, vec![])]),
            (0, vec![(2, b"a2".to_vec())]),
            (1, vec![(3, large)]),
            (1, vec![(1, b"b0".to_vec()), (2, b"b1".to_vec())]),
            (0, vec![(0, b"c0".to_vec()), (1, b"c1!".to_vec())]),
            // Alone at the end of the record: copied alone.
            (1, vec![(3, b"d0".to_vec())]),
        ];
        assert_eq!(shape, expect);
        // The batch's other views agree with its iterator.
        let Event::Messages(b) = &events[5] else { panic!("{:?}", events[5]) };
        assert_eq!((b.len(), b.payload_bytes(), b.is_empty()), (2, 5, false));
        assert_eq!(b.get(1), Some((1, &b"c1!"[..])));
        assert_eq!(b.get(2), None);
        assert_eq!(b.payload(0).as_deref(), Some(&b"c0"[..]));
        assert_eq!(b.iter().len(), 2);
        let owned: Vec<Message> = b.clone().into_messages().collect();
        assert_eq!(owned.len(), 2);
        assert_eq!(
            (owned[1].msg_type, &owned[1].payload[..], owned[1].protocol),
            (1, &b"c1!"[..], ProtocolId(0))
        );
        assert_eq!(owned[0], b.message(0).unwrap());
        let d = crate::event::Delivered {
            connection: ConnectionId(0),
            protocol: ProtocolId(0),
            messages: 2,
            bytes: 5,
        };
        assert_eq!(events[5].delivered(), Some(d));
        // Split: the front keeps the first, the rest re-based on its buffer.
        let mut front = b.clone();
        let rest = front.split_off(1);
        assert_eq!(front.iter().collect::<Vec<_>>(), vec![(0, &b"c0"[..])]);
        assert_eq!(rest.iter().collect::<Vec<_>>(), vec![(1, &b"c1!"[..])]);
        assert_eq!((rest.payload_bytes(), rest.protocol), (3, ProtocolId(0)));
        assert!(front.clone().split_off(5).is_empty());
        // The same messages, one at a time, as a batch of one.
        let one = MessageBatch::one(owned[1].clone());
        assert_eq!(one.iter().collect::<Vec<_>>(), vec![(1, &b"c1!"[..])]);
        assert_eq!(one.message(0), Some(owned[1].clone()));
        assert_eq!(one.get(1), None);
        let (mut kept, mut all) = (one.clone(), one.clone());
        assert!(kept.split_off(1).is_empty() && kept == one);
        assert_eq!(all.split_off(0), one);
        assert!(all.is_empty() && all.payload_bytes() == 0);
    }

    #[test]
    fn a_batch_index_holds_at_most_twice_its_messages() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        // Runs of two 1-byte messages, the protocols alternating: a batch
        // each, whose index must not be sized by the rest of the record.
        let mut r = Vec::new();
        for i in 0..1000 {
            chunk(&mut r, 1 + (i / 2) % 2, Some((0, 1)), true, b"x");
        }
        let events = feed(&mut s, &mut c, &r, &config).unwrap();
        assert_eq!(events.len(), 500);
        for e in &events[..499] {
            let Event::Messages(b) = e else { panic!("{e:?}") };
            assert_eq!(b.len(), 2);
            assert!(b.index_capacity() <= 8, "{} entries for 2 messages", b.index_capacity());
        }
        // A long run grows its index by doubling.
        r.clear();
        for _ in 0..300 {
            chunk(&mut r, 1, Some((1, 8)), true, &[3u8; 8]);
        }
        let events = feed(&mut s, &mut c, &r, &config).unwrap();
        let Some(Event::Messages(b)) = events.first() else { panic!("{events:?}") };
        assert!(
            b.len() >= 150 && b.index_capacity() <= 2 * b.len(),
            "{} for {}",
            b.index_capacity(),
            b.len()
        );
    }

    #[test]
    fn chunks_the_fast_path_leaves_to_the_decoder_batch_the_same() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        // Whole chunks with their length written long (4 bytes for 2): the
        // general decoder reads them, and they still form one batch.
        let mut r = Vec::new();
        for body in [b"ab", b"cd", b"ef"] {
            r.extend_from_slice(&[0x13, 0x01, 0x02, 0x80, 0x00, 0x00, 0x02]);
            r.extend_from_slice(body);
        }
        // (Followed by enough of the record that they are not copied alone.)
        chunk(&mut r, 2, Some((0, 300)), true, &[1u8; 300]);
        let events = feed(&mut s, &mut c, &r, &config).unwrap();
        let Event::Messages(b) = &events[0] else { panic!("{events:?}") };
        let got: Vec<(u32, &[u8])> = b.iter().collect();
        assert_eq!(got, vec![(2, &b"ab"[..]), (2, b"cd"), (2, b"ef")]);
        assert!(matches!(&events[1], Event::Message { msg_type: 0, payload, .. } if payload.len() == 300));
    }

    #[test]
    fn reassembly_buffers_are_reused_once_the_application_drops_their_messages() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        // One message in two chunks (so it is reassembled), in two records.
        let mut message = |s: &mut Session, fill: u8| -> Bytes {
            let half = vec![fill; 1000];
            let (mut r1, mut r2) = (Vec::new(), Vec::new());
            chunk(&mut r1, 1, Some((0, 2000)), false, &half);
            chunk(&mut r2, 1, None, true, &half);
            assert!(feed(s, &mut c, &r1, &config).unwrap().is_empty());
            match feed(s, &mut c, &r2, &config).unwrap().pop() {
                Some(Event::Message { payload, .. }) => {
                    assert!(payload.len() == 2000 && payload.iter().all(|&b| b == fill));
                    payload
                }
                e => panic!("{e:?}"),
            }
        };
        let held: Vec<Bytes> = (0..3).map(|i| message(&mut s, i)).collect();
        let addrs: Vec<usize> = held.iter().map(|p| p.as_ptr() as usize).collect();
        assert_eq!(addrs.iter().collect::<alloc::collections::BTreeSet<_>>().len(), 3, "all three held");
        drop(held);
        // Dropped by the application: the next three reuse those allocations.
        let again: Vec<usize> = (3..6).map(|i| message(&mut s, i).as_ptr() as usize).collect();
        assert!(again.iter().all(|a| addrs.contains(a)), "{addrs:x?} then {again:x?}");
        // (The allocator might hand out freed addresses again anyway; the
        // kept buffers show it: three, not six.)
        assert_eq!((s.spare.len(), s.spare_bytes), (3, 6000));
    }

    #[test]
    fn large_pieces_decrypted_straight_into_reassembly_match_the_plaintext() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        let a: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..30_000u32).map(|i| (i * 13 + 1) as u8).collect();
        // Record 1: a piece of A (sealed), a whole small message, a piece of
        // B (sealed), a tiny piece of A (not sealed), a credit update.
        let mut r1 = Vec::new();
        chunk(&mut r1, 1, Some((0, a.len() as u64)), false, &a[..25_000]);
        chunk(&mut r1, 2, Some((1, 5)), true, b"whole");
        chunk(&mut r1, 2, Some((2, b.len() as u64)), false, &b[..15_000]);
        chunk(&mut r1, 1, None, false, &a[25_000..25_010]);
        crate::flow::write_update(&mut r1, 1, 100);
        // Record 2: the rest of both (sealed), then padding.
        let mut r2 = Vec::new();
        chunk(&mut r2, 2, None, true, &b[15_000..]);
        chunk(&mut r2, 1, None, true, &a[25_010..]);
        r2.extend_from_slice(&[0, 0xee, 0xee]);
        let mut got = feed(&mut s, &mut c, &r1, &config).unwrap();
        got.extend(feed(&mut s, &mut c, &r2, &config).unwrap());
        let payloads: Vec<(u32, Vec<u8>)> = got
            .into_iter()
            .map(|e| match e {
                Event::Message { msg_type, payload, .. } => (msg_type, payload.to_vec()),
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(payloads, vec![(1, b"whole".to_vec()), (2, b), (0, a)]);
    }

    #[test]
    fn a_reused_buffer_is_not_shared_with_a_message_the_application_holds() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        let mut message = |s: &mut Session, len: usize| -> Bytes {
            let half = vec![7u8; len / 2];
            let (mut r1, mut r2) = (Vec::new(), Vec::new());
            chunk(&mut r1, 1, Some((0, len as u64)), false, &half);
            chunk(&mut r2, 1, None, true, &half);
            feed(s, &mut c, &r1, &config).unwrap();
            match feed(s, &mut c, &r2, &config).unwrap().pop() {
                Some(Event::Message { payload, .. }) => payload,
                e => panic!("{e:?}"),
            }
        };
        drop(message(&mut s, 20_000));
        // The 20,000-byte buffer is reused for a 10,000-byte message, which
        // the application keeps ...
        let held = message(&mut s, 10_000);
        // ... so the next message must not go into the rest of it.
        let next = message(&mut s, 3_000);
        let (start, p) = (held.as_ptr() as usize, next.as_ptr() as usize);
        assert!(!(start..start + 20_000).contains(&p), "shares the held message's allocation");
    }

    #[test]
    fn interleaved_channels_reassemble() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((1, 6)), false, b"abc");
        chunk(&mut r, 2, Some((2, 2)), false, b"x");
        chunk(&mut r, 1, None, true, b"def");
        chunk(&mut r, 2, None, true, b"y");
        let ev = feed(&mut s, &mut c, &r, &config).unwrap();
        let payloads: Vec<&[u8]> = ev
            .iter()
            .map(|e| match e {
                Event::Message { payload, .. } => &payload[..],
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(payloads, vec![&b"abcdef"[..], &b"xy"[..]]);
    }

    #[test]
    fn reassembly_memory_is_capped_per_peer() {
        let config =
            Config { max_message_size: 100_000, max_reassembly_per_peer: 150_000, ..Config::default() };
        let (mut s, mut c) = receiver(&config);
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 100_000)), false, b"start");
        assert!(feed(&mut s, &mut c, &r, &config).unwrap().is_empty());
        assert_eq!(s.reassembly_bytes(), 100_000);
        r.clear();
        chunk(&mut r, 2, Some((0, 100_000)), false, b"start");
        assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::ResourceLimit));
    }

    #[test]
    fn malformed_chunk_sequences_are_rejected() {
        let config = Config { max_message_size: 1000, ..Config::default() };
        let cases: Vec<(Vec<u8>, DisconnectReason)> = {
            let mut v = Vec::new();
            let mut r = Vec::new();
            chunk(&mut r, 1, Some((0, 2000)), false, b"x");
            v.push((r, DisconnectReason::MessageTooLarge));
            let mut r = Vec::new();
            chunk(&mut r, 1, None, true, b"x");
            v.push((r, DisconnectReason::ProtocolViolation));
            let mut r = Vec::new();
            chunk(&mut r, 3, Some((0, 1)), true, b"x");
            v.push((r, DisconnectReason::UnknownMessageType));
            let mut r = Vec::new();
            chunk(&mut r, 1, Some((4, 1)), true, b"x");
            v.push((r, DisconnectReason::UnknownMessageType));
            // A whole message's data is `total_len` bytes: 3 announced, 1 there.
            let mut r = Vec::new();
            chunk(&mut r, 1, Some((0, 3)), true, b"x");
            v.push((r, DisconnectReason::ProtocolViolation));
            let mut r = Vec::new();
            chunk(&mut r, 1, Some((0, 3)), false, b"x");
            chunk(&mut r, 1, Some((0, 3)), false, b"x");
            v.push((r, DisconnectReason::ProtocolViolation));
            let mut r = Vec::new();
            chunk(&mut r, 0, Some((0, 3)), true, b"xyz");
            v.push((r, DisconnectReason::ProtocolViolation));
            v.push((vec![0x05], DisconnectReason::ProtocolViolation));
            v
        };
        for (plain, want) in cases {
            let (mut s, mut c) = receiver(&config);
            assert_eq!(feed(&mut s, &mut c, &plain, &config), Err(want), "{plain:02x?}");
        }
    }

    #[test]
    fn flow_control_violations_close_with_a_reason() {
        let config = Config { receive_window: 100, ..Config::default() };
        // Within credit, then beyond it.
        let (mut s, mut c) = receiver(&config);
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 60)), true, &[1; 60]);
        assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
        assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::FlowControlViolation));
        // A larger-than-window message is fine alone, not after another.
        let (mut s, mut c) = receiver(&config);
        let mut r = Vec::new();
        chunk(&mut r, 2, Some((0, 500)), true, &[2; 500]);
        assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
        let mut r = Vec::new();
        chunk(&mut r, 2, Some((0, 0)), true, b"");
        assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::FlowControlViolation));
        // Consuming it returns the credit in a WINDOW_UPDATE.
        s.consume(ProtocolId(1), 1, 500);
        assert!(s.has_output());
        let mut out = Vec::new();
        s.write_records(&mut out, 1, &config, Instant::ZERO).unwrap();
        let mut tx = CipherState::new([1; 32]);
        let body = &mut out[2..];
        let n = body.len() - TAG_LEN;
        let (ct, tag) = body.split_at_mut(n);
        tx.open_in_place(&[], ct, &<[u8; TAG_LEN]>::try_from(&tag[..]).unwrap()).unwrap();
        assert_eq!(&ct[..], &[flow::TAG_WINDOW_UPDATE, 3, 2, 0x42, 0x04][..], "channel 2, 516");
        assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
        // Malformed or impossible updates.
        for (update, want) in [
            (vec![0x30, 2, 0, 1], DisconnectReason::UnknownMessageType),
            (vec![0x30, 2, 3, 1], DisconnectReason::UnknownMessageType),
            (vec![0x30, 1, 1], DisconnectReason::ProtocolViolation),
            (vec![0x30, 3, 1, 1, 1], DisconnectReason::ProtocolViolation),
            (
                vec![0x30, 9, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                DisconnectReason::FlowControlViolation,
            ),
        ] {
            let (mut s, mut c) = receiver_granted(&config, Some(100));
            assert_eq!(feed(&mut s, &mut c, &update, &config), Err(want), "{update:02x?}");
        }
    }

    proptest::proptest! {
        /// A batch is admitted exactly as its messages one by one: the
        /// same queued, the same refused (and the rest handed back), the
        /// same written, whichever path `queue_batch` takes.
        #[test]
        fn a_batch_is_admitted_as_its_messages_one_by_one(
            first in proptest::collection::vec((0u32..5, 0usize..300), 0..4),
            batch in proptest::collection::vec((0u32..5, 0usize..300), 0..12),
            protocol in 0u16..3,
            per_protocol in 0usize..2000,
            per_peer in 0usize..3000,
            total in 0usize..3000,
            held_elsewhere in 0usize..1000,
        ) {
            let config = Config { max_queued_per_protocol: per_protocol, ..Config::default() };
            let run = |one_by_one: bool| {
                let (mut s, _) = receiver_granted(&config, None);
                let mut queued = held_elsewhere;
                let mut messages = usize::from(held_elsewhere > 0);
                let mut node =
                    NodeQueue { queued: &mut queued, messages: &mut messages, max: total, max_per_peer: per_peer };
                let mk = |v: &[(u32, usize)]| -> VecDeque<(u32, Bytes)> {
                    v.iter().map(|&(t, n)| (t, Bytes::from(vec![t as u8; n]))).collect()
                };
                // Something queued before, so the limits are reached midway.
                let _ = s.queue_batch(ProtocolId(0), &mut mk(&first), &mut node);
                let mut msgs = mk(&batch);
                let result = if one_by_one {
                    let mut r = Ok(());
                    while let Some((t, p)) = msgs.pop_front() {
                        if let Err((e, p)) = s.queue_one(ProtocolId(protocol), t, p, &mut node) {
                            msgs.push_front((t, p));
                            r = Err(e);
                            break;
                        }
                    }
                    r
                } else {
                    s.queue_batch(ProtocolId(protocol), &mut msgs, &mut node)
                };
                let mut out = Vec::new();
                let _ = s.write_records(&mut out, usize::MAX, &config, Instant::ZERO);
                (result, msgs, (s.queued_messages, s.queued_bytes), (messages, queued), out)
            };
            proptest::prop_assert_eq!(run(false), run(true));
        }
    }

    proptest::proptest! {
        /// A send batch goes out exactly as its messages sent one by one:
        /// the same records byte for byte, the same queue depths after each
        /// transmit, and the same messages handed back if the connection
        /// closes midway; whatever the record size, the credit, the
        /// priority size and another protocol's traffic.
        #[test]
        fn a_send_batch_goes_out_as_its_messages_one_by_one(
            batch in proptest::collection::vec((0u32..4, 0usize..9000), 1..40),
            other in proptest::collection::vec((0u32..4, 0usize..9000), 0..6),
            record in 64usize..20000,
            window in proptest::option::of(1000u64..40000),
            budget in 1usize..40000,
            small in 0usize..600,
            close_after in 0usize..12,
        ) {
            let config = Config {
                max_record_size: record,
                priority_message_size: small,
                ..Config::default()
            };
            let run = |packed: bool| {
                let (mut s, _) = receiver_granted(&config, window);
                let mut counts = Unlimited::default();
                let mut node = counts.node();
                let payload = |t: u32, n: usize, k: usize| Bytes::from(vec![(t as usize * 31 + k) as u8; n]);
                let mut others: VecDeque<_> =
                    other.iter().enumerate().map(|(k, &(t, n))| (t, payload(t, n, k))).collect();
                s.queue_batch(ProtocolId(1), &mut others, &mut node).unwrap();
                let msgs: Vec<(u32, Bytes)> =
                    batch.iter().enumerate().map(|(k, &(t, n))| (t, payload(t, n, k + 100))).collect();
                if packed {
                    let b: SendBatch = msgs.iter().map(|(t, p)| (*t, &p[..])).collect();
                    s.queue_packed(ProtocolId(0), b, &mut node, false).map_err(|(e, _)| e).unwrap();
                } else {
                    s.queue_batch(ProtocolId(0), &mut msgs.into_iter().collect(), &mut node).unwrap();
                }
                let mut out = Vec::new();
                let mut depths = Vec::new();
                for _ in 0..close_after {
                    if !s.has_output() {
                        // The peer consumed everything: its credit comes back.
                        for c in &mut s.channels {
                            let spent = window.map_or(0, |w| w as i64 - c.credit.available());
                            let _ = c.credit.grant(spent.max(0) as u64);
                        }
                    }
                    let budget = out.len() + budget;
                    let _ = s.write_records(&mut out, budget, &config, Instant::ZERO);
                    depths.push((s.scheduler.depth(0), s.scheduler.depth(1), s.queued_bytes));
                }
                let unsent = s.take_unsent();
                (out, depths, unsent)
            };
            proptest::prop_assert_eq!(run(true), run(false));
        }
    }

    #[test]
    fn the_tail_of_a_large_message_does_not_close_its_record_early() {
        // Records of 1,000 bytes; two 1,500-byte messages. The first's
        // small tail (below the 512-byte priority size) shares its record
        // with the start of the second: three full-size records, not a
        // record holding the tail alone.
        let config = Config { max_record_size: 1000, ..Config::default() };
        let (mut s, _) = receiver_granted(&config, None);
        let mut msgs: VecDeque<_> = (0..2).map(|i| (0, Bytes::from(vec![i as u8; 1500]))).collect();
        let mut counts = Unlimited::default();
        let mut node = counts.node();
        s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
        let mut out = Vec::new();
        s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
        let mut sizes = Vec::new();
        let mut rest = &out[..];
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            sizes.push(n);
            rest = &rest[2 + n..];
        }
        assert_eq!(sizes.len(), 4, "{sizes:?}");
        assert!(sizes[..3].iter().all(|&n| n == 1000 + TAG_LEN), "{sizes:?}");
        // A small message split across records still closes its record.
        let config = Config { max_record_size: 300, ..Config::default() };
        let (mut s, _) = receiver_granted(&config, None);
        let mut counts = Unlimited::default();
        let mut node = counts.node();
        let mut msgs: VecDeque<_> =
            [(0, Bytes::from(vec![1u8; 400])), (0, Bytes::from(vec![2u8; 2000]))].into();
        s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
        let mut out = Vec::new();
        s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
        assert!(out.len() < 2 * (2 + 300 + TAG_LEN), "one record, then the small message's end alone");
    }

    #[test]
    fn a_message_that_fits_a_record_whole_is_not_split() {
        // 95 bytes take 5 header bytes whole (no `len`), 7 as a first piece:
        // in a record of 100 they fit only whole.
        let config = Config { max_record_size: 100, ..Config::default() };
        let (mut s, _) = receiver_granted(&config, None);
        let mut msgs: VecDeque<_> = [(0, Bytes::from(vec![7u8; 95]))].into();
        let mut counts = Unlimited::default();
        let mut node = counts.node();
        s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
        let mut out = Vec::new();
        while s.has_output() {
            s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
        }
        assert_eq!(out.len(), 2 + 100 + TAG_LEN, "one record of 100 plaintext bytes");
    }

    #[test]
    fn a_sender_waits_for_credit() {
        let config = Config::default();
        let (mut s, _) = receiver_granted(&config, Some(1000));
        let mut msgs: VecDeque<_> = (0..3).map(|_| (0, Bytes::from(vec![0; 400]))).collect();
        let mut counts = Unlimited::default();
        let mut node = counts.node();
        s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
        assert_eq!((counts.messages, counts.queued), (3, 1200));
        let mut out = Vec::new();
        s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
        assert_eq!(s.scheduler.depth(0), (1, 400), "two fit in 1000 bytes of credit");
        assert!(!s.has_output(), "nothing to write until credit comes back");
        assert_eq!(s.channels[0].credit.available(), 1000 - 2 * 416);
        s.channels[0].credit.grant(416).unwrap();
        assert!(s.has_output());
        s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
        assert_eq!(s.scheduler.depth(0), (0, 0));
    }

    #[test]
    fn a_ping_flood_leaves_one_pending_pong() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        for round in 0..10u64 {
            let mut r = Vec::new();
            for i in 0..4000u64 {
                chunk(
                    &mut r,
                    0,
                    Some((crate::control::kind::PING, 8)),
                    true,
                    &(round * 4000 + i).to_be_bytes(),
                );
            }
            feed(&mut s, &mut c, &r, &config).unwrap();
        }
        assert_eq!(s.control.len(), 1);
        assert_eq!(s.control.front(), Some(&Control::Pong(39_999)), "the latest token is echoed");
    }

    #[test]
    fn two_rekeys_in_one_record_advance_the_key_twice() {
        let config = Config::default();
        let (mut s, mut c) = receiver(&config);
        let mut r = Vec::new();
        for _ in 0..2 {
            chunk(&mut r, 0, Some((crate::control::kind::REKEY, 0)), true, b"");
        }
        feed(&mut s, &mut c, &r, &config).unwrap();
        c.rekey();
        c.rekey();
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 2)), true, b"ok");
        assert_eq!(feed(&mut s, &mut c, &r, &config).unwrap().len(), 1);
    }
}
