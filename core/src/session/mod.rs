//! An established session: the send queues and their admission
//! (`queue`), sealing records (`seal`), opening them and reassembling
//! messages (`open`), delivering messages as events (`delivery`), and the
//! control channel (keepalive, rekey, disconnect) here. Scheduling between
//! protocols (`scheduler`) and flow control (`flow`) are its children too.

mod delivery;
pub(crate) mod flow;
mod open;
mod queue;
pub(crate) mod scheduler;
mod seal;

#[allow(unused_imports)]
use self::{delivery::*, open::*, seal::*};
pub(crate) use queue::NodeQueue;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::Config;
use crate::crypto::cipher::{Keystream, TAG_LEN};
use crate::crypto::{CipherState, CryptoError};
use crate::event::Event;
use crate::identity::NodeId;
use crate::ids::ConnectionId;
use crate::message::UnsentMessage;
use crate::message::{MessageBatch, SendBatch};
use crate::metrics::{PeerMetrics, ProtocolMetrics};
use crate::protocol::{ProtocolId, SharedProtocol};
use crate::reason::DisconnectReason;
use crate::session::flow::{ReceiveWindow, SendCredit, UpdateDue};
use crate::session::scheduler::Scheduler;
use crate::time::Instant;
use crate::wire::chunk::{self, Chunk, MessageStart};
use crate::wire::control::{Control, MAX_CONTROL_PAYLOAD};
use crate::wire::varint::Reader;

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
    /// Most payload bytes queued on one channel (`Limits::max_queued_per_protocol`).
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
        let scheduler =
            Scheduler::new(weights, config.records.scheduler_quantum, config.records.priority_message_size);
        let channels = channels
            .into_iter()
            .map(|shared| Channel {
                shared,
                stats: ProtocolMetrics { protocol: shared.id, ..ProtocolMetrics::default() },
                partial: None,
                credit: SendCredit::new(limits.receive_window),
                window: ReceiveWindow::new(config.flow.receive_window),
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
            max_queued_per_protocol: config.limits.max_queued_per_protocol,
            scheduler,
            max_in_flight: config.flow.max_in_flight_per_peer,
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
            next_ping: now + config.timeouts.keepalive,
            ping_outstanding: None,
            ping_counter: 0,
            rtt: None,
            last_recv: now,
            rekey: RekeyState { bytes: 0, records: 0, due: now + config.rekey.after_time, queued: false },
            cover_due: config.shaping.cover_traffic_interval.map(|i| now + i),
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

    /// Sends a keepalive ping now (also used as the initiator's first record).
    pub(crate) fn start_ping(&mut self, now: Instant) {
        self.ping_counter += 1;
        self.ping_outstanding = Some((self.ping_counter, now));
        self.control.push_back(Control::Ping(self.ping_counter));
    }

    /// The session's next deadline.
    pub(crate) fn poll_timeout(&self, config: &Config) -> Instant {
        let idle = self.last_recv + config.timeouts.idle;
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
        if now >= self.last_recv + config.timeouts.idle {
            return Err(DisconnectReason::IdleTimeout);
        }
        if self.updates_soon.is_some_and(|u| now >= u) {
            self.updates_soon = None;
            self.updates_due = true;
        }
        if now >= self.next_ping {
            self.start_ping(now);
            self.next_ping = now + config.timeouts.keepalive;
        }
        if let (Some(due), Some(interval)) = (self.cover_due, config.shaping.cover_traffic_interval) {
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

#[cfg(test)]
mod tests;
