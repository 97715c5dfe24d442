//! The public handle of a running node ([`Node`]), how to start one
//! ([`NodeConfig`]) and the errors of its commands.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::Sender;
use devp2p_core::{
    BatchError, Broadcast, Bytes, Config, ConnectError, DisconnectReason, Keypair, NodeId, PeerAddr,
    PeerMetrics, ProtocolId, SendBatch, SendError,
};
use rand_core::OsRng;

use crate::credit::{CreditShared, Taken};
use crate::driver::{Command, Driver, Setup};
use crate::runtime::Runtime;
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
    /// The node has stopped.
    Stopped,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused(e) => write!(f, "refused: {e}"),
            DialError::Failed(r) => write!(f, "dial failed: {r}"),
            DialError::Stopped => f.write_str("node stopped"),
        }
    }
}

impl std::error::Error for DialError {}

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

struct Inner {
    cmd: Sender<Command>,
    credit: Arc<CreditShared>,
    id: NodeId,
    listen_addrs: Vec<SocketAddr>,
    datagram_addrs: Vec<SocketAddr>,
}

/// A running node on runtime `R` (each runtime crate names its own, as
/// `devp2p_tokio::Node`). Cheap to clone; the node stops when
/// [`shutdown`](Self::shutdown) is called or every clone is dropped.
pub struct Node<R> {
    inner: Arc<Inner>,
    _runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for Node<R> {
    fn clone(&self) -> Self {
        Node { inner: self.inner.clone(), _runtime: PhantomData }
    }
}

impl<R> fmt::Debug for Node<R> {
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
        // Credit goes back when the application takes a message from us.
        let mut core_config = config.core.clone();
        core_config.flow.manual_consume = true;
        let core = devp2p_core::Node::new(core_config, keypair, Box::new(OsRng), devp2p_core::Instant::ZERO)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (cmd_tx, cmd_rx) = async_channel::bounded(1024);
        let (ev_tx, ev_rx) = async_channel::bounded(config.event_capacity.max(1));
        let (wake, credit_wake) = async_channel::bounded(1);
        // A full channel means a wake is already pending.
        let credit = CreditShared::new(move || {
            let _ = wake.try_send(());
        });
        let driver = Driver::new(Setup {
            rt: rt.clone(),
            core,
            commands: cmd_rx,
            events: ev_tx,
            listeners,
            udp,
            credit: credit.clone(),
            credit_wake,
        });
        rt.spawn(driver.run());
        let events = Events::new(ev_rx, Taken::new(credit.clone()));
        let inner = Inner { cmd: cmd_tx, credit, id, listen_addrs, datagram_addrs };
        Ok((Node { inner: Arc::new(inner), _runtime: PhantomData }, events))
    }
}

impl<R> Node<R> {
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

    async fn request<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = async_channel::bounded(1);
        self.inner.cmd.send(make(tx)).await.ok()?;
        rx.recv().await.ok()
    }

    /// Dials `addr` and completes the handshake. With a node ID in the
    /// address the 1-RTT paths are tried first (resumption, then the
    /// introduced key), falling back as SPEC.md describes.
    pub async fn dial(&self, addr: PeerAddr) -> Result<NodeId, DialError> {
        self.request(|reply| Command::Dial { addr, reply }).await.unwrap_or(Err(DialError::Stopped))
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
        self.request(|reply| Command::Send { peer, protocol, msgs: vec![(msg_type, payload)], reply })
            .await
            .unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
            .map_err(|e| NodeError::Send(e.error))
    }

    /// Sends several messages to one peer on one protocol, in order, with one
    /// command to the node instead of one per message: the way to send many
    /// small messages fast. Waits while the queue is full (backpressure).
    /// On a refusal, that message and those after it come back in the error.
    pub async fn send_batch(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
    ) -> Result<(), BatchError> {
        let (reply, rx) = async_channel::bounded(1);
        if let Err(e) = self.inner.cmd.send(Command::Send { peer, protocol, msgs, reply }).await {
            let Command::Send { msgs, .. } = e.into_inner() else { unreachable!("the command sent") };
            return Err(BatchError { error: SendError::NotConnected, unsent: msgs });
        }
        rx.recv().await.unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
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
        let (reply, rx) = async_channel::bounded(1);
        if let Err(e) = self.inner.cmd.send(Command::SendPacked { peer, protocol, batch, reply }).await {
            let Command::SendPacked { batch, .. } = e.into_inner() else { unreachable!("the command sent") };
            return Err(BatchError { error: SendError::NotConnected, unsent: batch.into_messages() });
        }
        rx.recv().await.unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
    }

    /// Queues a message for every connected peer that speaks `protocol`,
    /// sharing one payload buffer; peers with a full queue are reported in
    /// `failed`, not waited for.
    pub async fn broadcast(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Broadcast {
        self.request(|reply| Command::Broadcast { protocol, msg_type, payload, reply })
            .await
            .unwrap_or_default()
    }

    /// A stream of its own for the messages of `protocol`, from every peer,
    /// so that a slow consumer of one protocol holds up no other (the
    /// others keep flowing through [`Events`] or their own streams). Take it
    /// before connecting: messages that arrived earlier went to `Events`.
    /// A second call replaces the first stream. The stream of a protocol
    /// the node does not register ends at once.
    pub async fn messages(&self, protocol: ProtocolId) -> Messages {
        let (tx, rx) = async_channel::unbounded();
        let _ = self.inner.cmd.send(Command::Route { protocol, tx }).await;
        Messages::new(rx, Taken::new(self.inner.credit.clone()))
    }

    /// Disconnects a peer; queued messages come back in `PeerDisconnected`.
    pub async fn disconnect(&self, peer: NodeId) {
        let _ = self.inner.cmd.send(Command::Disconnect { peer }).await;
    }

    /// Per-peer, per-protocol counters and queue depths.
    pub async fn metrics(&self) -> Vec<PeerMetrics> {
        self.request(|reply| Command::Metrics { reply }).await.unwrap_or_default()
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<NodeId> {
        self.request(|reply| Command::Peers { reply }).await.unwrap_or_default()
    }

    /// The last keepalive round-trip time to `peer`.
    pub async fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.request(|reply| Command::Rtt { peer, reply }).await.flatten()
    }

    /// Datagrams received that no part of the node handles (see
    /// [`devp2p_core::Node::handle_datagram`]).
    pub async fn datagrams_dropped(&self) -> u64 {
        self.request(|reply| Command::DatagramsDropped { reply }).await.unwrap_or_default()
    }

    /// Disconnects every peer with `Shutdown`, flushes, closes the sockets
    /// and stops the node. The event stream ends after the last
    /// `PeerDisconnected`.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
    }
}
