//! The node: the endpoint that owns every connection, the identity and the
//! stored knowledge, and turns inputs into transmits, events and deadlines.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;
use core::ops::Bound;
use core::time::Duration;

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::addr::PeerAddr;
use crate::config::{Config, ConfigError};
use crate::error::{ConnectError, SendError};
use crate::event::{Direction, Event, HandshakePath};
use crate::identity::{Keypair, NodeId};
use crate::ids::ConnectionId;
use crate::io::Dial;
use crate::knowledge::{Ticket, TicketStore};
use crate::message::SendBatch;
use crate::metrics::PeerMetrics;
use crate::protocol::{self, Hello, ProtocolId, WIRE_VERSION};
use crate::reason::DisconnectReason;
use crate::session::{NodeQueue, PeerLimits, RecordOutcome, Session};
use crate::shaping::TokenBucket;
use crate::time::Instant;
use crate::transport::connection::{CloseCause, Closing, Connection, Expiry, Phase};
use crate::transport::handshake::{kind as hs_kind, Completed, Handshake, HandshakeCtx, HandshakeError};
use crate::transport::table::ConnectionTable;
use crate::wire::control::Control;

mod close;
mod commands;
mod input;
mod output;

/// What [`Node::broadcast`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// Peers the message was queued for.
    pub sent: Vec<NodeId>,
    /// Peers that share the protocol but refused it (a full queue, say).
    pub failed: Vec<(NodeId, SendError)>,
}

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
    /// Every connection, and the peers' connections.
    pub(crate) table: ConnectionTable,
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
            .field("connections", &self.table.connections.len())
            .field("peers", &self.table.peers.len())
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
        config.validate()?;
        let mut hello = Vec::new();
        Hello::local(&config.protocols, config.limits.max_message_size, config.flow.receive_window)
            .encode(&mut hello);
        Ok(Node {
            keypair,
            rng,
            hello,
            tickets: TicketStore::default(),
            table: ConnectionTable::default(),
            events: VecDeque::new(),
            closed: VecDeque::new(),
            dials: VecDeque::new(),
            datagrams_out: VecDeque::new(),
            datagrams_dropped: 0,
            queued_total: 0,
            queued_messages: 0,
            transmit_cursor: ConnectionId(0),
            rate: config.shaping.max_node_rate.map(|r| TokenBucket::new(r, config.burst(), now)),
            config,
        })
    }

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
        self.table.peers.keys().copied()
    }

    /// True if `peer` is connected.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.table.peers.contains_key(peer)
    }

    /// The last round-trip time measured by keepalive pings to `peer`.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        match &self.table.peer(peer)?.phase {
            Phase::Established { session, .. } => session.rtt(),
            Phase::Dialing { .. } | Phase::Handshake(_) => None,
        }
    }

    /// Counters and queue depths per shared protocol for every connected peer.
    pub fn metrics(&self) -> Vec<PeerMetrics> {
        self.table.peers.keys().filter_map(|p| self.peer_metrics(p)).collect()
    }

    /// Counters and queue depths per shared protocol for one peer.
    pub fn peer_metrics(&self, peer: &NodeId) -> Option<PeerMetrics> {
        match &self.table.peer(peer)?.phase {
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
        self.table.peer(peer).map_or(0, |c| match &c.phase {
            Phase::Established { session, .. } => session.queued_bytes,
            Phase::Dialing { .. } | Phase::Handshake(_) => 0,
        })
    }

    /// What is queued for `peer` on `protocol` and not yet written, as the
    /// queue limits count it (0 if nothing is).
    pub(crate) fn queued_on(&self, peer: &NodeId, protocol: ProtocolId) -> usize {
        self.table.peer(peer).map_or(0, |c| match &c.phase {
            Phase::Established { session, .. } => session.queued_on(protocol),
            Phase::Dialing { .. } | Phase::Handshake(_) => 0,
        })
    }

    /// True if connection `id` is closing: it flushes its goodbye and
    /// ignores further input.
    pub fn is_closing(&self, id: ConnectionId) -> bool {
        self.table.connections.get(&id).is_some_and(|c| c.closing.is_some())
    }

    /// The remote address of connection `id`: where it was dialled, or
    /// accepted from.
    pub fn remote_addr(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.table.connections.get(&id).map(|c| c.remote)
    }

    /// Datagrams received that no part of the node handles.
    pub fn datagrams_dropped(&self) -> u64 {
        self.datagrams_dropped
    }

    /// Number of open connections, in any phase.
    pub fn connection_count(&self) -> usize {
        self.table.connections.len()
    }

    /// Number of connections still handshaking.
    pub fn handshaking_count(&self) -> usize {
        self.table.handshaking_count()
    }

    /// An upper bound of the bytes the node holds for connections: partial
    /// frames, pending handshake output, queued payload and reassembly.
    pub fn buffered_bytes(&self) -> usize {
        self.table
            .connections
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
            self.tickets.insert(p, t, self.config.resumption.max_tickets);
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
}
