//! The node: the endpoint that owns every connection, the identity and the
//! stored knowledge, and turns inputs into transmits, events and deadlines.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;
use core::ops::Bound;
use core::time::Duration;

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::addr::PeerAddr;
use crate::batch::SendBatch;
use crate::config::Config;
use crate::connection::{CloseCause, Closing, Connection, ConnectionId, Phase};
use crate::control::Control;
use crate::error::{ConnectError, SendError};
use crate::event::{Direction, Event, HandshakePath};
use crate::handshake::{kind as hs_kind, Completed, Handshake, HandshakeCtx, HandshakeError};
use crate::identity::{Keypair, NodeId};
use crate::io::Dial;
use crate::knowledge::{Ticket, TicketStore};
use crate::metrics::PeerMetrics;
use crate::protocol::{self, Hello, ProtocolId, MAX_PROTOCOL_NAME, WIRE_VERSION};
use crate::reason::DisconnectReason;
use crate::session::{NodeQueue, PeerLimits, RecordOutcome, Session};
use crate::shaping::TokenBucket;
use crate::time::Instant;

/// A configuration the node cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A protocol name is empty or longer than 64 bytes.
    BadProtocolName,
    /// The hello listing every protocol does not fit in one handshake frame,
    /// or more than 65535 protocols are registered.
    TooManyProtocols,
    /// The same protocol name and version is registered twice.
    DuplicateProtocol,
    /// `max_message_size` exceeds `max_reassembly_per_peer` (messages the
    /// node advertises as acceptable would be refused), or
    /// `max_transmit_size` is zero, or a padding bucket is outside 80..=65535.
    InconsistentLimits,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::BadProtocolName => "protocol names must be 1 to 64 bytes",
            ConfigError::TooManyProtocols => "the registered protocols do not fit in a handshake",
            ConfigError::DuplicateProtocol => "a protocol name and version is registered twice",
            ConfigError::InconsistentLimits => "max_message_size exceeds max_reassembly_per_peer",
        })
    }
}

/// What [`Node::broadcast`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// Peers the message was queued for.
    pub sent: Vec<NodeId>,
    /// Peers that share the protocol but refused it (a full queue, say).
    pub failed: Vec<(NodeId, SendError)>,
}

/// Room the handshake needs besides the hello: kind byte, ticket id, two
/// keys and two tags.
const HANDSHAKE_OVERHEAD: usize = 1 + 16 + 32 + 48 + 16;

/// A devp2p node as a pure state machine.
///
/// The node never performs I/O and never reads a clock. The runtime that
/// drives it owns the sockets and timers and talks to it through four
/// families of methods:
///
/// * **inputs** (`handle_*`): [`handle_input`](Self::handle_input) for bytes
///   received on a connection, [`handle_written`](Self::handle_written) when
///   the transport can take another buffer from `poll_transmit` (once the
///   last one is written, or earlier if the runtime's writer holds a few),
///   [`handle_close`](Self::handle_close) when a transport ended,
///   [`handle_connected`](Self::handle_connected) and
///   [`handle_dial_failed`](Self::handle_dial_failed) to answer a dial,
///   [`handle_datagram`](Self::handle_datagram) for a datagram received
///   with its source address, and [`handle_timeout`](Self::handle_timeout)
///   when the deadline from `poll_timeout` is reached;
/// * **commands**: [`dial`](Self::dial) (the node decides to open a
///   transport and asks the runtime to, through `poll_dial`),
///   [`accept`](Self::accept) for an inbound transport with its remote
///   address, [`send`](Self::send), [`disconnect`](Self::disconnect),
///   [`shutdown`](Self::shutdown);
/// * **outputs** (`poll_*`), each drained until it returns `None`:
///   [`poll_transmit`](Self::poll_transmit) (stream bytes for a
///   connection), [`poll_dial`](Self::poll_dial) (transports to open),
///   [`poll_datagram`](Self::poll_datagram) (datagrams for an address),
///   [`poll_event`](Self::poll_event) (application events),
///   [`poll_close`](Self::poll_close) (transports to close) and finally
///   [`poll_timeout`](Self::poll_timeout) (when to call `handle_timeout`);
/// * **getters** such as [`node_id`](Self::node_id) and [`peers`](Self::peers).
///
/// After any input or command, drain the outputs in that order
/// ([`Waiters::drain`](crate::Waiters::drain) does, for a runtime). Every
/// method that depends on time takes `now`, which must never decrease.
///
/// A connection's life, as the runtime sees it: it gets a
/// [`ConnectionId`] from `accept`, or from a [`Dial`] (then answers with
/// `handle_connected` or `handle_dial_failed`); it feeds the transport's
/// bytes to `handle_input`, writes what `poll_transmit` gives it and
/// acknowledges with `handle_written`; it ends with exactly one
/// `poll_close` for that id, after which the id is never used again.
///
/// # Run loop
///
/// ```no_run
/// # use devp2p_core::{Node, Config, Keypair, Instant, SeededRng};
/// # fn write(_: devp2p_core::ConnectionId, _: &[u8]) {}
/// # fn close(_: devp2p_core::ConnectionId) {}
/// # fn open(_: devp2p_core::Dial) {}
/// # fn send_to(_: std::net::SocketAddr, _: &[u8]) {}
/// # let mut rng = SeededRng::from_u64(1);
/// # let key = Keypair::generate(&mut rng);
/// let mut node = Node::new(Config::default(), key, Box::new(rng), Instant::ZERO).unwrap();
/// let now = Instant::ZERO;
/// loop {
///     // ... feed inputs: node.handle_input(conn, &mut bytes, now),
///     // node.handle_connected(conn, now), node.handle_datagram(from, &mut bytes, now), etc.
///     let mut buf = Vec::new();
///     while let Some(conn) = node.poll_transmit(now, &mut buf) {
///         write(conn, &buf); // then, once written:
///         node.handle_written(conn, now);
///         buf.clear();
///     }
///     while let Some(dial) = node.poll_dial() { open(dial); }
///     while let Some(to) = node.poll_datagram(&mut buf) { send_to(to, &buf); buf.clear(); }
///     while let Some(event) = node.poll_event() { println!("{event:?}"); }
///     while let Some(conn) = node.poll_close() { close(conn); }
///     let _deadline = node.poll_timeout();
///     # break;
/// }
/// ```
pub struct Node {
    config: Config,
    keypair: Keypair,
    rng: Box<dyn CryptoRngCore + Send>,
    /// The encoded local hello.
    hello: Vec<u8>,
    tickets: TicketStore,
    connections: BTreeMap<ConnectionId, Connection>,
    next_connection: u64,
    peers: BTreeMap<NodeId, ConnectionId>,
    events: VecDeque<Event>,
    closed: VecDeque<ConnectionId>,
    /// Transports the runtime must open.
    dials: VecDeque<Dial>,
    /// Datagrams to send, with their destinations.
    datagrams_out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Datagrams received that no part of the node handles.
    datagrams_dropped: u64,
    /// Payload bytes queued to all peers.
    queued_total: usize,
    /// Messages queued to all peers (see [`session::queue_cost`]).
    queued_messages: usize,
    /// The connection `poll_transmit` served last (round robin).
    transmit_cursor: ConnectionId,
    /// Node-wide bandwidth cap, if configured.
    rate: Option<TokenBucket>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.node_id())
            .field("connections", &self.connections.len())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with identity `keypair`, drawing randomness from `rng`.
    pub fn new(
        config: Config,
        keypair: Keypair,
        rng: Box<dyn CryptoRngCore + Send>,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        if config.protocols.iter().any(|p| p.name.is_empty() || p.name.len() > MAX_PROTOCOL_NAME) {
            return Err(ConfigError::BadProtocolName);
        }
        if config.protocols.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyProtocols);
        }
        for (i, p) in config.protocols.iter().enumerate() {
            if config.protocols[..i].iter().any(|q| q.name == p.name && q.version == p.version) {
                return Err(ConfigError::DuplicateProtocol);
            }
        }
        if config.max_message_size > config.max_reassembly_per_peer as u64
            || config.max_transmit_size == 0
            || config.padding_buckets.iter().any(|b| !(64 + 16..=65_535).contains(b))
        {
            return Err(ConfigError::InconsistentLimits);
        }
        let mut hello = Vec::new();
        Hello::local(&config.protocols, config.max_message_size, config.receive_window).encode(&mut hello);
        if hello.len() + HANDSHAKE_OVERHEAD > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyProtocols);
        }
        Ok(Node {
            keypair,
            rng,
            hello,
            tickets: TicketStore::default(),
            connections: BTreeMap::new(),
            next_connection: 0,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
            closed: VecDeque::new(),
            dials: VecDeque::new(),
            datagrams_out: VecDeque::new(),
            datagrams_dropped: 0,
            queued_total: 0,
            queued_messages: 0,
            transmit_cursor: ConnectionId(0),
            rate: config.max_node_rate.map(|r| TokenBucket::new(r, Self::burst(&config), now)),
            config,
        })
    }

    // ----- getters -----

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.keypair.node_id()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connected peers (handshake done and announced).
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// True if `peer` is connected.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The last round-trip time measured by keepalive pings to `peer`.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        match &self.connections.get(self.peers.get(peer)?)?.phase {
            Phase::Established { session, .. } => session.rtt(),
            Phase::Dialing { .. } | Phase::Handshake(_) => None,
        }
    }

    /// Counters and queue depths per shared protocol for every connected peer.
    pub fn metrics(&self) -> Vec<PeerMetrics> {
        self.peers.keys().filter_map(|p| self.peer_metrics(p)).collect()
    }

    /// Counters and queue depths per shared protocol for one peer.
    pub fn peer_metrics(&self, peer: &NodeId) -> Option<PeerMetrics> {
        match &self.connections.get(self.peers.get(peer)?)?.phase {
            Phase::Established { session, .. } => Some(session.metrics()),
            Phase::Dialing { .. } | Phase::Handshake(_) => None,
        }
    }

    /// The node-wide queue counters: messages and payload bytes queued to
    /// all peers and not yet written.
    #[cfg(test)]
    pub(crate) fn queued_totals(&self) -> (usize, usize) {
        (self.queued_messages, self.queued_total)
    }

    /// Payload bytes queued for `peer` and not yet written.
    pub fn queued_bytes(&self, peer: &NodeId) -> usize {
        self.peers.get(peer).and_then(|c| self.connections.get(c)).map_or(0, |c| match &c.phase {
            Phase::Established { session, .. } => session.queued_bytes,
            Phase::Dialing { .. } | Phase::Handshake(_) => 0,
        })
    }

    /// What is queued for `peer` on `protocol` and not yet written, as the
    /// queue limits count it (0 if nothing is).
    pub(crate) fn queued_on(&self, peer: &NodeId, protocol: ProtocolId) -> usize {
        self.peers.get(peer).and_then(|c| self.connections.get(c)).map_or(0, |c| match &c.phase {
            Phase::Established { session, .. } => session.queued_on(protocol),
            Phase::Dialing { .. } | Phase::Handshake(_) => 0,
        })
    }

    /// True if connection `id` is closing: it flushes its goodbye and
    /// ignores further input.
    pub fn is_closing(&self, id: ConnectionId) -> bool {
        self.connections.get(&id).is_some_and(|c| c.closing.is_some())
    }

    /// The remote address of connection `id`: where it was dialled, or
    /// accepted from.
    pub fn remote_addr(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.connections.get(&id).map(|c| c.remote)
    }

    /// Datagrams received that no part of the node handles.
    pub fn datagrams_dropped(&self) -> u64 {
        self.datagrams_dropped
    }

    /// Number of open connections, in any phase.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Number of connections still handshaking.
    pub fn handshaking_count(&self) -> usize {
        self.connections.values().filter(|c| c.is_handshaking()).count()
    }

    /// An upper bound of the bytes the node holds for connections: partial
    /// frames, pending handshake output, queued payload and reassembly.
    pub fn buffered_bytes(&self) -> usize {
        self.connections
            .values()
            .map(|c| {
                c.partial.capacity()
                    + c.plain_out.capacity()
                    + match &c.phase {
                        Phase::Established { session, .. } => {
                            session.queued_bytes + session.reassembly_bytes()
                        }
                        Phase::Dialing { .. } | Phase::Handshake(_) => 0,
                    }
            })
            .sum()
    }

    /// The resumption tickets held, for persisting them across restarts.
    pub fn export_tickets(&self) -> Vec<(NodeId, Ticket)> {
        self.tickets.export()
    }

    /// Restores tickets saved with [`export_tickets`](Self::export_tickets).
    /// Tickets are single-use: the ones exported must not be used elsewhere.
    pub fn import_tickets(&mut self, tickets: impl IntoIterator<Item = (NodeId, Ticket)>) {
        for (p, t) in tickets {
            self.tickets.insert(p, t, self.config.max_resumption_tickets);
        }
    }

    /// True if a resumption ticket for `peer` is held.
    pub fn has_ticket(&self, peer: &NodeId) -> bool {
        self.tickets.contains(peer)
    }

    /// Forgets the resumption ticket for `peer`.
    pub fn forget_ticket(&mut self, peer: &NodeId) {
        self.tickets.remove_peer(peer);
    }

    // ----- commands -----

    fn new_connection(
        &mut self,
        direction: Direction,
        remote: SocketAddr,
        phase: Phase,
        now: Instant,
    ) -> Result<ConnectionId, ConnectError> {
        if self.connections.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        if self.handshaking_count() >= self.config.max_handshaking {
            return Err(ConnectError::TooManyHandshakes);
        }
        let id = ConnectionId(self.next_connection);
        self.next_connection += 1;
        self.connections.insert(
            id,
            Connection {
                direction,
                remote,
                phase,
                partial: Vec::new(),
                plain_out: Vec::new(),
                write_in_flight: false,
                closing: None,
                handshake_deadline: now + self.config.handshake_timeout,
                rate: self
                    .config
                    .max_connection_rate
                    .map(|r| TokenBucket::new(r, Self::burst(&self.config), now)),
            },
        );
        Ok(id)
    }

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
        let id =
            self.new_connection(Direction::Outbound, addr.addr, Phase::Dialing { target: addr.id }, now)?;
        self.dials.push_back(Dial { connection: id, addr: addr.addr });
        Ok(id)
    }

    /// The transport of dial `id` is open: the handshake starts, and its
    /// first frame is ready in `poll_transmit` on return. Returns false if
    /// the node no longer wants that transport (the dial timed out or the
    /// node shut down: it was in `poll_close` already); the runtime then
    /// closes it.
    pub fn handle_connected(&mut self, id: ConnectionId, now: Instant) -> bool {
        let target = match self.connections.get(&id) {
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
        let Some(conn) = self.connections.get_mut(&id) else { return false };
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
        if matches!(self.connections.get(&id), Some(Connection { phase: Phase::Dialing { .. }, .. })) {
            self.close(id, CloseCause { reason: DisconnectReason::Unreachable, remote: true }, now);
        }
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
        self.new_connection(Direction::Inbound, remote, phase, now)
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
    fn sendable(&mut self, peer: &NodeId) -> Result<(&mut Session, NodeQueue<'_>), SendError> {
        let Node { peers, connections, config, queued_total, queued_messages, .. } = self;
        let node = NodeQueue {
            queued: queued_total,
            messages: queued_messages,
            max: config.max_queued_total,
            max_per_peer: config.max_queued_per_peer,
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
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
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
        let Some(conn) = self.connections.get_mut(&connection) else { return };
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
        if let Some(&id) = self.peers.get(peer) {
            self.close(id, CloseCause { reason, remote: false }, now);
        }
    }

    /// Closes one connection, in any phase, with `reason`.
    pub fn close_connection(&mut self, id: ConnectionId, reason: DisconnectReason, now: Instant) {
        self.close(id, CloseCause { reason, remote: false }, now);
    }

    /// Disconnects every connection with [`DisconnectReason::Shutdown`].
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            self.close(id, CloseCause { reason: DisconnectReason::Shutdown, remote: false }, now);
        }
    }

    // ----- inputs -----

    /// Handles bytes received on connection `id`. The bytes are decrypted
    /// in place, so the caller's buffer is clobbered. Unknown connections
    /// are ignored.
    pub fn handle_input(&mut self, id: ConnectionId, data: &mut [u8], now: Instant) {
        let Some(mut conn) = self.connections.remove(&id) else {
            return;
        };
        if conn.closing.is_some() {
            self.connections.insert(id, conn);
            return;
        }
        let mut partial = core::mem::take(&mut conn.partial);
        let result =
            Connection::split_frames(&mut partial, data, |frame| self.on_frame(id, &mut conn, frame, now));
        conn.partial = partial;
        self.connections.insert(id, conn);
        if let Err(cause) = result {
            self.close(id, cause, now);
        }
    }

    /// Handles one frame body. `Ok(true)`: keep reading.
    fn on_frame(
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
    fn establish(
        &mut self,
        id: ConnectionId,
        conn: &mut Connection,
        done: Completed,
        now: Instant,
    ) -> Result<(), CloseCause> {
        let Completed { peer, path, keys, remote_hello } = done;
        let fail = |reason| CloseCause { reason, remote: false };
        let ticket = Ticket::derive(&keys.resumption_seed, now + self.config.resumption_lifetime);
        let hello = Hello::decode(&remote_hello, self.config.max_peer_protocols);
        let peer_max =
            hello.as_ref().ok().and_then(|h| h.max_message_size).unwrap_or(self.config.max_message_size);
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
    fn announce(&mut self, id: ConnectionId, conn: &mut Connection, now: Instant) -> Result<(), CloseCause> {
        let fail = |reason| CloseCause { reason, remote: false };
        let Phase::Established { session, announced, path, ticket } = &mut conn.phase else {
            return Ok(());
        };
        let peer = session.peer;
        if peer == self.keypair.node_id() {
            return Err(fail(DisconnectReason::DuplicateConnection));
        }
        if let Some(&other) = self.peers.get(&peer) {
            let me = self.keypair.node_id();
            let initiator = |d: Direction| if d == Direction::Outbound { me } else { peer };
            let other_dir = self.connections.get(&other).map_or(Direction::Inbound, |c| c.direction);
            if initiator(conn.direction) < initiator(other_dir) {
                self.close(other, fail(DisconnectReason::DuplicateConnection), now);
            } else {
                return Err(fail(DisconnectReason::DuplicateConnection));
            }
        }
        if let Some(t) = ticket.take() {
            self.tickets.insert(peer, t, self.config.max_resumption_tickets);
        }
        *announced = true;
        self.peers.insert(peer, id);
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
        if let Some(c) = self.connections.get_mut(&id) {
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
        for (&id, c) in self.connections.iter_mut() {
            if let Some(cl) = c.closing {
                if now >= cl.deadline {
                    to_finish.push(id);
                }
                continue;
            }
            match &mut c.phase {
                Phase::Dialing { .. } | Phase::Handshake(_) => {
                    if now >= c.handshake_deadline {
                        to_close.push((id, DisconnectReason::HandshakeTimeout));
                    }
                }
                Phase::Established { announced: false, .. } => {
                    // Not confirmed yet: still bound by the handshake timeout.
                    if now >= c.handshake_deadline {
                        to_close.push((id, DisconnectReason::HandshakeTimeout));
                    }
                }
                Phase::Established { session, .. } => {
                    if let Err(reason) = session.handle_timeout(&self.config, now) {
                        to_close.push((id, reason));
                    }
                }
            }
        }
        for id in to_finish {
            self.finish_close(id);
        }
        for (id, reason) in to_close {
            self.close(id, CloseCause { reason, remote: false }, now);
        }
    }

    // ----- closing -----

    fn close(&mut self, id: ConnectionId, cause: CloseCause, now: Instant) {
        let Some(conn) = self.connections.get_mut(&id) else {
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
                if self.peers.get(&peer) == Some(&id) {
                    self.peers.remove(&peer);
                }
                self.events.push_back(Event::PeerDisconnected {
                    peer,
                    reason: cause.reason,
                    remote: cause.remote,
                    unsent,
                });
            }
            Phase::Established { session, announced: false, .. } => {
                let peer = Some(session.peer);
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, reason: cause.reason });
            }
            Phase::Handshake(hs) => {
                let peer = hs.target();
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, reason: cause.reason });
            }
            Phase::Dialing { target } => {
                let peer = *target;
                self.events.push_back(Event::ConnectionFailed { connection: id, peer, reason: cause.reason });
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
        conn.closing = Some(Closing { deadline: now + self.config.close_timeout });
        self.maybe_finish_close(id);
    }

    fn maybe_finish_close(&mut self, id: ConnectionId) {
        if let Some(c) = self.connections.get(&id) {
            if c.closing.is_some() && !c.write_in_flight && !c.has_output() {
                self.finish_close(id);
            }
        }
    }

    fn finish_close(&mut self, id: ConnectionId) {
        if let Some(mut c) = self.connections.remove(&id) {
            if let Phase::Established { session, .. } = &mut c.phase {
                // A connection closed by the remote while still queued.
                let (_, (messages, bytes)) = session.take_unsent();
                self.queued_total -= bytes;
                self.queued_messages -= messages;
            }
            self.closed.push_back(id);
        }
    }

    // ----- outputs -----

    /// Writes the next connection's pending bytes into `buf` (appending up
    /// to about `max_transmit_size` bytes) and returns which connection they
    /// are for. The connection is not polled again until
    /// [`handle_written`](Self::handle_written) is called for it, which is
    /// how a peer that does not read exerts backpressure. Connections are
    /// served round robin.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<ConnectionId> {
        let mut allowance = self.config.max_transmit_size;
        if let Some(rate) = &mut self.rate {
            allowance = allowance.min(rate.available(now));
            if allowance == 0 {
                return None;
            }
        }
        let cursor = self.transmit_cursor;
        let ready = |c: &Connection| !c.write_in_flight && c.has_output();
        let id = if self.config.max_connection_rate.is_none() {
            self.connections
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(self.connections.range(..=cursor))
                .find(|(_, c)| ready(c))
                .map(|(id, _)| *id)?
        } else {
            // Paced: the first ready connection whose own bucket has tokens.
            let ids: Vec<ConnectionId> = self
                .connections
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(self.connections.range(..=cursor))
                .filter(|(_, c)| ready(c))
                .map(|(id, _)| *id)
                .collect();
            let mut found = None;
            for id in ids {
                let c = self.connections.get_mut(&id)?;
                let avail = c.rate.as_mut().map_or(usize::MAX, |r| r.available(now));
                if avail > 0 {
                    allowance = allowance.min(avail);
                    found = Some(id);
                    break;
                }
            }
            found?
        };
        let conn = self.connections.get_mut(&id)?;
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

    /// The next transport the runtime must close. Everything returned by
    /// `poll_transmit` for it has been acknowledged with `handle_written`;
    /// a runtime that acknowledged buffers before writing them closes the
    /// transport once they are written. Every connection ends with exactly
    /// one `poll_close`.
    #[must_use]
    pub fn poll_close(&mut self) -> Option<ConnectionId> {
        self.closed.pop_front()
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
        if !self.config.manual_consume {
            if let Some(d) = ev.delivered() {
                self.consume(d.connection, d.protocol, d.messages, d.bytes);
            }
        }
        Some(ev)
    }

    /// When `handle_timeout` should next be called, or `None` if no timer
    /// runs. With a bandwidth cap, this includes when paced output may go.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let shaped = self.rate.is_some() || self.config.max_connection_rate.is_some();
        let shaping = shaped
            .then(|| {
                let node = self.rate.as_ref().and_then(TokenBucket::ready_at);
                self.connections
                    .values()
                    .filter(|c| !c.write_in_flight && c.has_output())
                    .filter_map(|c| c.rate.as_ref().and_then(TokenBucket::ready_at).max(node))
                    .min()
            })
            .flatten();
        self.connections
            .values()
            .map(|c| match (&c.closing, &c.phase) {
                (Some(cl), _) => cl.deadline,
                (None, Phase::Dialing { .. } | Phase::Handshake(_)) => c.handshake_deadline,
                (None, Phase::Established { announced: false, .. }) => c.handshake_deadline,
                (None, Phase::Established { session, .. }) => session.poll_timeout(&self.config),
            })
            .chain(shaping)
            .min()
    }

    /// The burst of a bandwidth cap: one full record and its framing.
    fn burst(config: &Config) -> u64 {
        (config.record_size() + 18) as u64
    }
}

impl core::error::Error for ConfigError {}
