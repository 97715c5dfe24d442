//! The public handle of a running node ([`Node`]), how to start one
//! ([`NodeConfig`]) and the errors of its commands.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use devp2p_core::{
    BatchError, Broadcast, Bytes, Config, ConnectError, DialFailure, DisconnectReason, Keypair, NodeId,
    PeerAddr, PeerMetrics, ProtocolId, SendBatch, SendError, MESSAGE_OVERHEAD,
};
use rand_core::OsRng;

use crate::credit::{CreditShared, Taken};
use crate::driver::Driver;
use crate::outputs::Route;
use crate::runtime::Runtime;
use crate::state::{SendReply, Shared, State};
use crate::streams::{Events, Messages};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The core configuration: sub-protocols and limits.
    pub core: Config,
    /// The identity; a fresh one is generated if `None`.
    pub keypair: Option<Keypair>,
    /// TCP addresses to listen on (IPv4 and/or IPv6); none for a dial-only node.
    pub listen: Vec<SocketAddr>,
    /// UDP addresses to bind for datagrams (at most one per address
    /// family is used to send); none by default.
    pub datagram_listen: Vec<SocketAddr>,
    /// Events buffered for the application before the node stops reading
    /// from the network (default 1024). Several small messages that arrived
    /// together count as one event until `Events` hands them out (flow
    /// control bounds their bytes). Messages of a protocol with a stream
    /// of its own are not counted: flow control bounds those.
    pub event_capacity: usize,
}

impl NodeConfig {
    /// A configuration with a fresh identity and no listener.
    pub fn new(core: Config) -> Self {
        NodeConfig {
            core,
            keypair: None,
            listen: Vec::new(),
            datagram_listen: Vec::new(),
            event_capacity: 1024,
        }
    }

    /// Adds a listen address.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Adds a UDP address to bind for datagrams.
    pub fn datagram_listen(mut self, addr: SocketAddr) -> Self {
        self.datagram_listen.push(addr);
        self
    }

    /// Sets the identity.
    pub fn keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }
}

/// Why a dial failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum DialError {
    /// The node refused to open another connection.
    Refused(ConnectError),
    /// The connection failed: it could not be opened
    /// ([`DisconnectReason::Unreachable`]), or the handshake or the
    /// negotiation failed.
    Failed(DisconnectReason),
    /// The dial named node `dialled`, but the node that answered at the
    /// address proved another key, `found`: the connection was closed
    /// ([`DisconnectReason::WrongPeer`]). To connect to whoever holds an
    /// address, dial it without a node ID.
    WrongPeer {
        /// The node the dial named.
        dialled: NodeId,
        /// The key that answered.
        found: NodeId,
    },
    /// The node has stopped.
    Stopped,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused(e) => write!(f, "refused: {e}"),
            DialError::Failed(r) => write!(f, "dial failed: {r}"),
            DialError::WrongPeer { dialled, found } => {
                write!(f, "dialled {dialled} but {found} answered: connection refused")
            }
            DialError::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for DialError {}

impl From<DialFailure> for DialError {
    fn from(f: DialFailure) -> Self {
        match f {
            DialFailure {
                reason: DisconnectReason::WrongPeer,
                dialled: Some(dialled),
                found: Some(found),
            } => DialError::WrongPeer { dialled, found },
            DialFailure { reason, .. } => DialError::Failed(reason),
        }
    }
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    /// The core refused the message.
    Send(SendError),
    /// The node has stopped.
    Stopped,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Send(e) => write!(f, "send failed: {e}"),
            NodeError::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<NodeError> for io::Error {
    fn from(e: NodeError) -> Self {
        io::Error::other(e)
    }
}

/// Sends of at most this many bytes (payload plus per-message overhead)
/// are sealed and written by the sending task itself; larger ones are
/// left to the driver.
const INLINE_SEND_MAX: usize = 16 << 10;

struct Inner<R: Runtime> {
    shared: Arc<Shared<R>>,
    credit: Arc<CreditShared>,
    id: NodeId,
    listen_addrs: Vec<SocketAddr>,
    datagram_addrs: Vec<SocketAddr>,
}

impl<R: Runtime> Drop for Inner<R> {
    /// The last handle is gone: the node shuts down (every peer is told).
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let stop = async move { shared.with(|st, now| st.begin_shutdown(now)).await };
        match self.shared.try_lock() {
            Some(mut st) => {
                let now = st.now();
                st.begin_shutdown(now);
                drop(st);
                self.shared.kick();
            }
            // The driver holds the state: tell it from a task of its own.
            None => R::default().spawn(stop),
        }
    }
}

/// A running node on runtime `R` (each runtime crate names its own, as
/// `devp2p_tokio::Node`). Cheap to clone; the node stops when
/// [`shutdown`](Self::shutdown) is called or every clone is dropped.
///
/// Its commands run in the caller's task: `send` queues the message,
/// seals what the core has ready and writes it to the socket itself, so a
/// message takes no hand-off to another task on its way out; only a send
/// that must wait for queue space, and a dial, wait for a reply.
pub struct Node<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Node<R> {
    fn clone(&self) -> Self {
        Node { inner: self.inner.clone() }
    }
}

impl<R: Runtime> fmt::Debug for Node<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).field("listen", &self.inner.listen_addrs).finish()
    }
}

impl<R: Runtime> Node<R> {
    /// Binds the listeners and starts the node on the runtime (from within
    /// it: on tokio, inside a tokio runtime).
    pub async fn spawn(config: NodeConfig) -> io::Result<(Node<R>, Events)> {
        let rt = R::default();
        let keypair = config.keypair.clone().unwrap_or_else(|| Keypair::generate(&mut OsRng));
        let id = keypair.node_id();
        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        for addr in &config.listen {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            listen_addrs.push(l.local_addr()?);
            listeners.push(rt.tcp_listener(l)?);
        }
        let mut udp = Vec::new();
        for addr in &config.datagram_listen {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            let local = s.local_addr()?;
            udp.push((rt.udp_socket(s)?, local));
        }
        let datagram_addrs = udp.iter().map(|(_, a)| *a).collect();
        let udp: Arc<[(R::UdpSocket, SocketAddr)]> = udp.into();
        // Credit goes back when the application takes a message from us.
        let mut core_config = config.core.clone();
        core_config.flow.manual_consume = true;
        let core = devp2p_core::Node::new(core_config, keypair, Box::new(OsRng), devp2p_core::Instant::ZERO)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (ev_tx, ev_rx) = async_channel::bounded(config.event_capacity.max(1));
        let (kick, kicks) = async_channel::bounded(1);
        let (ops_tx, ops) = async_channel::bounded(1024);
        let (input_tx, input_rx) = async_channel::bounded(256);
        let state = State::new(rt.clone(), core, ev_tx, udp.clone(), input_tx.clone());
        let shared = Shared::new(state, kick.clone(), ops_tx);
        // A full channel means a wake is already pending.
        let credit = CreditShared::new(move || {
            let _ = kick.try_send(());
        });
        let driver = Driver::new(
            rt.clone(),
            shared.clone(),
            (kicks, ops),
            (input_tx, input_rx),
            listeners,
            udp,
            credit.clone(),
        );
        rt.spawn(driver.run());
        let events = Events::new(ev_rx, Taken::new(credit.clone()));
        let inner = Inner { shared, credit, id, listen_addrs, datagram_addrs };
        Ok((Node { inner: Arc::new(inner) }, events))
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound TCP listen addresses (with the actual ports).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// The bound UDP addresses (with the actual ports).
    pub fn datagram_addrs(&self) -> &[SocketAddr] {
        &self.inner.datagram_addrs
    }

    /// The address other nodes dial to reach this one via its first listener,
    /// with the node ID (`NODEID@host:port`).
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.inner.listen_addrs.first().map(|a| PeerAddr::with_id(self.inner.id, *a))
    }

    /// Dials `addr` and completes the handshake. With a node ID in the
    /// address the 1-RTT paths are tried first (resumption, then the
    /// introduced key), falling back as SPEC.md describes.
    pub async fn dial(&self, addr: PeerAddr) -> Result<NodeId, DialError> {
        let (reply, rx) = async_channel::bounded(1);
        let refused = self
            .inner
            .shared
            .with(|st, now| {
                if st.stopping {
                    return Some(DialError::Stopped);
                }
                st.waiters.dial(&mut st.core, addr, reply, now).err().map(|(_, e)| DialError::Refused(e))
            })
            .await;
        if let Some(e) = refused {
            return Err(e);
        }
        rx.recv().await.unwrap_or(Err(DialError::Stopped))
    }

    /// Queues `msgs` (or a send batch) for `peer`, waiting while the queue
    /// is full. A small send runs here and writes what the core sealed at
    /// once; a large one is left to the driver.
    async fn send_with(
        &self,
        bytes: usize,
        start: impl FnOnce(&mut State<R>, SendReply) -> Option<(SendReply, Result<(), BatchError>)>
            + Send
            + 'static,
    ) -> Result<(), BatchError> {
        let (reply, rx) = async_channel::bounded(1);
        let gone = || BatchError { error: SendError::NotConnected, unsent: Vec::new() };
        if bytes <= INLINE_SEND_MAX {
            if let Some((_, r)) = self.inner.shared.with(|st, _| start(st, reply)).await {
                return r;
            }
        } else {
            let op = Box::new(move |st: &mut State<R>, _now| {
                if let Some((reply, r)) = start(st, reply) {
                    let _ = reply.try_send(r);
                }
            });
            if !self.inner.shared.defer(op).await {
                return Err(gone());
            }
        }
        rx.recv().await.unwrap_or_else(|_| Err(gone()))
    }

    /// Sends a message. Waits while the peer's send queue is full
    /// (backpressure); fails if the peer is not connected or does not
    /// speak the protocol.
    pub async fn send(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
    ) -> Result<(), NodeError> {
        self.send_batch(peer, protocol, vec![(msg_type, payload)]).await.map_err(|e| NodeError::Send(e.error))
    }

    /// Sends several messages to one peer on one protocol, in order, in one
    /// call instead of one per message: the way to send many small
    /// messages you already hold as `Bytes`. Waits while the queue is full
    /// (backpressure). On a refusal, that message and those after it come
    /// back in the error.
    pub async fn send_batch(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
    ) -> Result<(), BatchError> {
        let bytes = msgs.iter().map(|(_, p)| p.len() + MESSAGE_OVERHEAD as usize).sum();
        self.send_with(bytes, move |st, reply| {
            st.waiters.send_batch(&mut st.core, peer, protocol, msgs, reply)
        })
        .await
    }

    /// Sends the messages of a [`SendBatch`] to one peer on one protocol,
    /// in order: the cheapest way to send many small messages, as the node
    /// queues the batch as one entry and seals its messages straight from
    /// its buffer. Waits while the queue is full (backpressure), queueing
    /// the batch in parts as room appears. Refused whole, nothing sent, if
    /// a message has an undefined type or is too large for the peer; if
    /// the peer disconnects while it waits, the messages not yet queued
    /// come back (see [`Waiters::send_packed`](devp2p_core::Waiters::send_packed)).
    pub async fn send_packed(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
    ) -> Result<(), BatchError> {
        let bytes = batch.payload_bytes() + batch.len() * MESSAGE_OVERHEAD as usize;
        self.send_with(bytes, move |st, reply| {
            st.waiters.send_packed(&mut st.core, peer, protocol, batch, reply)
        })
        .await
    }

    /// Queues a message for every connected peer that speaks `protocol`,
    /// sharing one payload buffer; peers with a full queue are reported in
    /// `failed`, not waited for.
    pub async fn broadcast(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Broadcast {
        self.inner.shared.with(|st, _| st.core.broadcast(protocol, msg_type, payload)).await
    }

    /// A stream of its own for the messages of `protocol`, from every peer,
    /// so that a slow consumer of one protocol holds up no other (the
    /// others keep flowing through [`Events`] or their own streams). Take it
    /// before connecting: messages that arrived earlier went to `Events`.
    /// A second call replaces the first stream. The stream of a protocol
    /// the node does not register ends at once.
    pub async fn messages(&self, protocol: ProtocolId) -> Messages {
        let (tx, rx) = async_channel::unbounded();
        self.inner
            .shared
            .with(|st, _| {
                // A protocol the node does not register gets no messages: its
                // stream ends at once (`tx` is dropped).
                if st.core.config().registers(protocol) {
                    st.routes.insert(protocol, Route::new(tx));
                }
            })
            .await;
        Messages::new(rx, Taken::new(self.inner.credit.clone()))
    }

    /// Disconnects a peer; queued messages come back in `PeerDisconnected`.
    pub async fn disconnect(&self, peer: NodeId) {
        self.inner.shared.with(|st, now| st.core.disconnect(&peer, DisconnectReason::Requested, now)).await;
    }

    /// Per-peer, per-protocol counters and queue depths.
    pub async fn metrics(&self) -> Vec<PeerMetrics> {
        self.inner.shared.lock().await.core.metrics()
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<NodeId> {
        self.inner.shared.lock().await.core.peers().collect()
    }

    /// The last keepalive round-trip time to `peer`.
    pub async fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.inner.shared.lock().await.core.rtt(&peer)
    }

    /// Datagrams received that no part of the node handles (see
    /// [`devp2p_core::Node::handle_datagram`]).
    pub async fn datagrams_dropped(&self) -> u64 {
        self.inner.shared.lock().await.core.datagrams_dropped()
    }

    /// Disconnects every peer with `Shutdown`, flushes, closes the sockets
    /// and stops the node. The event stream ends after the last
    /// `PeerDisconnected`.
    pub async fn shutdown(&self) {
        let (reply, rx) = async_channel::bounded(1);
        let running = self
            .inner
            .shared
            .with(|st, now| {
                // Once the driver has stopped nobody answers.
                if !st.finished {
                    st.stopped.push(reply);
                }
                st.begin_shutdown(now);
                !st.finished
            })
            .await;
        if running {
            let _ = rx.recv().await;
        }
    }
}
