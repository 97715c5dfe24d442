//! An established session: records, chunking, reassembly, the control
//! channel (keepalive, rekey, disconnect) and the send queue.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::chunk::{self, Chunk, MessageStart};
use crate::config::Config;
use crate::control::{Control, MAX_CONTROL_PAYLOAD};
use crate::crypto::cipher::TAG_LEN;
use crate::crypto::{CipherState, CryptoError};
use crate::event::{Event, UnsentMessage};
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

/// The transport phase of a connection.
pub(crate) struct Session {
    send: CipherState,
    recv: CipherState,
    pub(crate) peer: NodeId,
    /// Shared protocols; channel `c` is at index `c - 1`.
    channels: Vec<SharedProtocol>,
    /// Channel of each local protocol (0: not shared).
    channel_of: Vec<u32>,
    /// Largest message the peer accepts.
    peer_max_message: u64,
    scheduler: Scheduler,
    /// Payload bytes queued and not yet written.
    pub(crate) queued_bytes: usize,
    control: VecDeque<Control>,
    /// Counters per channel (index = channel - 1).
    stats: Vec<ProtocolMetrics>,
    /// In-progress messages, indexed by channel - 1.
    reassembly: Vec<Option<Partial>>,
    /// Bytes reserved by `reassembly`.
    reassembly_bytes: usize,
    /// The buffer of the last reassembled message: once the application
    /// drops that message, its allocation is reused for the next one.
    spare: Option<BytesMut>,
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
        peer: NodeId,
        channels: Vec<SharedProtocol>,
        local_protocols: usize,
        peer_max_message: u64,
        config: &Config,
        now: Instant,
    ) -> Self {
        let mut channel_of = alloc::vec![0u32; local_protocols];
        for c in &channels {
            channel_of[c.id.0 as usize] = c.channel;
        }
        let n = channels.len();
        let stats = channels
            .iter()
            .map(|c| ProtocolMetrics { protocol: c.id, ..ProtocolMetrics::default() })
            .collect();
        let weights = channels.iter().map(|c| config.protocols.get(c.id.0 as usize).map_or(1, |p| p.weight));
        let scheduler = Scheduler::new(weights, config.scheduler_quantum, config.priority_message_size);
        let mut reassembly = Vec::with_capacity(n);
        reassembly.resize_with(n, || None);
        Session {
            send,
            recv,
            peer,
            channels,
            channel_of,
            peer_max_message,
            scheduler,
            stats,
            queued_bytes: 0,
            control: VecDeque::new(),
            reassembly,
            reassembly_bytes: 0,
            spare: None,
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
        self.channels.iter().map(|c| c.id).collect()
    }

    /// The last measured round-trip time.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Checks and queues an application message.
    pub(crate) fn queue_message(
        &mut self,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
    ) -> Result<(), crate::SendError> {
        let channel = self.channel_of.get(protocol.0 as usize).copied().unwrap_or(0);
        if channel == 0 {
            return Err(crate::SendError::ProtocolNotShared);
        }
        if msg_type >= self.channels[channel as usize - 1].message_count {
            return Err(crate::SendError::UnknownMessageType);
        }
        if payload.len() as u64 > self.peer_max_message {
            return Err(crate::SendError::MessageTooLarge);
        }
        self.queued_bytes += payload.len();
        self.scheduler.push(channel as usize - 1, channel, protocol, msg_type, payload);
        Ok(())
    }

    /// Queues a control message ahead of application data.
    pub(crate) fn queue_control(&mut self, c: Control) {
        self.control.push_back(c);
    }

    /// True if records are waiting to be written.
    pub(crate) fn has_output(&self) -> bool {
        !self.control.is_empty() || !self.scheduler.is_empty() || self.cover_pending
    }

    /// Removes every queued application message (for closing), partly
    /// written ones included. Returns them and the not-yet-written bytes
    /// they still accounted for.
    pub(crate) fn take_unsent(&mut self) -> (Vec<UnsentMessage>, usize) {
        let accounted = core::mem::take(&mut self.queued_bytes);
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
        self.control.retain(|c| matches!(c, Control::Disconnect(_)));
    }

    /// Writes framed, sealed records into `buf` until it holds at least
    /// `budget` bytes or nothing is left. Returns the application payload
    /// bytes dequeued.
    pub(crate) fn write_records(
        &mut self,
        buf: &mut Vec<u8>,
        budget: usize,
        config: &Config,
        now: Instant,
    ) -> Result<usize, CryptoError> {
        let record_size = config.record_size();
        let mut dequeued = 0usize;
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
                let hl = chunk::data_header_len(0, st, plen as u64);
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
            // Then application data, as many chunks as fit, in the order
            // the scheduler chooses. A record carrying a priority message
            // is not filled up with bulk data: it is sent at once, small.
            let mut urgent = false;
            while let Some((idx, allowance)) = self.scheduler.next() {
                let priority = allowance == usize::MAX;
                if urgent && !priority {
                    break;
                }
                urgent |= priority;
                let Some(m) = self.scheduler.head_mut(idx) else { break };
                let space = limit.saturating_sub(buf.len());
                let remaining = m.payload.len() - m.offset;
                let st = (m.offset == 0).then_some(MessageStart {
                    msg_type: u64::from(m.msg_type),
                    total_len: m.payload.len() as u64,
                });
                let worst = chunk::data_header_len(u64::from(m.channel), st, remaining as u64);
                if space < worst + remaining.min(1) {
                    // Not even a header and one byte fit: the record is full.
                    break;
                }
                let take = remaining.min(space - worst).min(allowance);
                let last = take == remaining;
                let hl = chunk::data_header_len(u64::from(m.channel), st, take as u64);
                let at = buf.len();
                buf.resize(at + hl, 0);
                chunk::write_data_header(&mut buf[at..], u64::from(m.channel), st, last, take as u64);
                buf.extend_from_slice(&m.payload[m.offset..m.offset + take]);
                dequeued += take;
                let st = &mut self.stats[idx];
                st.bytes_out += take as u64;
                st.messages_out += u64::from(last);
                self.scheduler.advance(idx, take);
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
            let tag = self.send.seal_in_place(&[], &mut buf[start..])?;
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
        Ok(dequeued)
    }

    /// Decrypts one record body in place; returns the plaintext length
    /// (the plaintext is `body[..len]`).
    pub(crate) fn open_record(&mut self, body: &mut [u8]) -> Result<usize, DisconnectReason> {
        if body.len() < TAG_LEN {
            return Err(DisconnectReason::ProtocolViolation);
        }
        let len = body.len() - TAG_LEN;
        let (ct, tag) = body.split_at_mut(len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.recv.open_in_place(&[], ct, &t).map_err(|_| DisconnectReason::DecryptFailed)?;
        Ok(len)
    }

    /// Processes the chunks of an opened record, pushing completed messages
    /// to `events`.
    pub(crate) fn process_record(
        &mut self,
        plain: &[u8],
        config: &Config,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> Result<RecordOutcome, DisconnectReason> {
        self.last_recv = now;
        let mut r = Reader::new(plain);
        let mut outcome = RecordOutcome::Continue;
        let mut rekeys = 0u32;
        while let Some(c) = chunk::decode(&mut r).map_err(|_| DisconnectReason::ProtocolViolation)? {
            let Chunk::Data { channel, start, last, data } = c else {
                continue; // padding ends the loop by consuming the rest; extensions are skipped
            };
            if channel == 0 {
                let st = start.ok_or(DisconnectReason::ProtocolViolation)?;
                if !last || data.len() > MAX_CONTROL_PAYLOAD || st.total_len != data.len() as u64 {
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
            self.read_data(channel, start, last, data, config, events)?;
        }
        // Each REKEY in a record advances the receive key once, after the record.
        for _ in 0..rekeys {
            self.recv.rekey();
        }
        Ok(outcome)
    }

    /// Sends a keepalive ping now (also used as the initiator's first record).
    pub(crate) fn start_ping(&mut self, now: Instant) {
        self.ping_counter += 1;
        self.ping_outstanding = Some((self.ping_counter, now));
        self.control.push_back(Control::Ping(self.ping_counter));
    }

    fn read_data(
        &mut self,
        channel: u64,
        start: Option<MessageStart>,
        last: bool,
        data: &[u8],
        config: &Config,
        events: &mut VecDeque<Event>,
    ) -> Result<(), DisconnectReason> {
        let idx = usize::try_from(channel - 1).map_err(|_| DisconnectReason::UnknownMessageType)?;
        let shared = *self.channels.get(idx).ok_or(DisconnectReason::UnknownMessageType)?;
        let slot = &mut self.reassembly[idx];
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
                let msg_type = st.msg_type as u32;
                if last {
                    if data.len() != total {
                        return Err(DisconnectReason::ProtocolViolation);
                    }
                    let st = &mut self.stats[idx];
                    st.messages_in += 1;
                    st.bytes_in += total as u64;
                    events.push_back(Event::Message {
                        peer: self.peer,
                        protocol: shared.id,
                        msg_type,
                        payload: Bytes::copy_from_slice(data),
                    });
                    return Ok(());
                }
                if self.reassembly_bytes + total > config.max_reassembly_per_peer {
                    return Err(DisconnectReason::ResourceLimit);
                }
                self.reassembly_bytes += total;
                let mut buf = self.spare.take().unwrap_or_default();
                buf.clear();
                buf.reserve(total);
                Partial { msg_type, total, buf }
            }
        };
        let mut p = partial;
        if p.buf.len() + data.len() > p.total {
            return Err(DisconnectReason::ProtocolViolation);
        }
        p.buf.extend_from_slice(data);
        if last {
            if p.buf.len() != p.total {
                return Err(DisconnectReason::ProtocolViolation);
            }
            self.reassembly_bytes -= p.total;
            let st = &mut self.stats[idx];
            st.messages_in += 1;
            st.bytes_in += p.total as u64;
            let payload = p.buf.split().freeze();
            self.spare = Some(p.buf);
            events.push_back(Event::Message {
                peer: self.peer,
                protocol: shared.id,
                msg_type: p.msg_type,
                payload,
            });
        } else {
            self.reassembly[idx] = Some(p);
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
        t
    }

    /// Handles timer expiry: keepalive, rekey and the idle timeout.
    pub(crate) fn handle_timeout(&mut self, config: &Config, now: Instant) -> Result<(), DisconnectReason> {
        if now >= self.last_recv + config.idle_timeout {
            return Err(DisconnectReason::IdleTimeout);
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
            .stats
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let (queued_messages, queued_bytes) = self.scheduler.depth(i);
                ProtocolMetrics { queued_messages, queued_bytes, ..*st }
            })
            .collect();
        PeerMetrics { peer: self.peer, rtt: self.rtt, protocols }
    }

    /// Bytes held for partly received messages.
    pub(crate) fn reassembly_bytes(&self) -> usize {
        self.reassembly_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolId;
    use alloc::vec;

    /// A receiving session and the cipher that seals records for it.
    fn receiver(config: &Config) -> (Session, CipherState) {
        let channels = vec![
            SharedProtocol { id: ProtocolId(0), channel: 1, message_count: 4 },
            SharedProtocol { id: ProtocolId(1), channel: 2, message_count: 4 },
        ];
        let s = Session::new(
            (CipherState::new([1; 32]), CipherState::new([2; 32])),
            NodeId([9; 32]),
            channels,
            2,
            u64::MAX,
            config,
            Instant::ZERO,
        );
        (s, CipherState::new([2; 32]))
    }

    fn chunk(out: &mut Vec<u8>, channel: u64, start: Option<(u64, u64)>, last: bool, data: &[u8]) {
        let st = start.map(|(t, n)| MessageStart { msg_type: t, total_len: n });
        let at = out.len();
        out.resize(at + chunk::data_header_len(channel, st, data.len() as u64), 0);
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
        let n = s.open_record(&mut body)?;
        let mut ev = VecDeque::new();
        s.process_record(&body[..n], config, Instant::ZERO, &mut ev)?;
        Ok(ev.into_iter().collect())
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
