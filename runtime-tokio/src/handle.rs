//! The public handle of a running node and its event stream.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devp2p_core::{
    Broadcast, Bytes, Config, ConnectError, DisconnectReason, Event, Keypair, NodeId, PeerMetrics,
    ProtocolId, SendError,
};
use rand_core::OsRng;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{Command, Driver};
use devp2p_core::PeerAddr;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The core configuration: sub-protocols and limits.
    pub core: Config,
    /// The identity; a fresh one is generated if `None`.
    pub keypair: Option<Keypair>,
    /// Addresses to listen on (IPv4 and/or IPv6); none for a dial-only node.
    pub listen: Vec<SocketAddr>,
    /// Events buffered for the application before the node stops reading
    /// from the network (default 1024).
    pub event_capacity: usize,
}

impl NodeConfig {
    /// A configuration with a fresh identity and no listener.
    pub fn new(core: Config) -> Self {
        NodeConfig { core, keypair: None, listen: Vec::new(), event_capacity: 1024 }
    }

    /// Adds a listen address.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
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
    /// The TCP connection could not be opened.
    Io(io::Error),
    /// The node refused to open another connection.
    Refused(ConnectError),
    /// The handshake or negotiation failed.
    Handshake(DisconnectReason),
    /// The node has stopped.
    Stopped,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Io(e) => write!(f, "connect failed: {e}"),
            DialError::Refused(e) => write!(f, "refused: {e}"),
            DialError::Handshake(r) => write!(f, "handshake failed: {r}"),
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

/// The application's events. Consume them promptly: when `event_capacity`
/// events are waiting, the node stops reading from the network.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

struct Inner {
    cmd: mpsc::Sender<Command>,
    id: NodeId,
    listen_addrs: Vec<SocketAddr>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A running node. Cheap to clone; the node stops when [`shutdown`](Self::shutdown)
/// is called or every clone is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).field("listen", &self.inner.listen_addrs).finish()
    }
}

impl Node {
    /// Binds the listeners and starts the node on the current tokio runtime.
    pub async fn spawn(config: NodeConfig) -> io::Result<(Node, Events)> {
        let keypair = config.keypair.clone().unwrap_or_else(|| Keypair::generate(&mut OsRng));
        let id = keypair.node_id();
        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr).await?;
            listen_addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let core =
            devp2p_core::Node::new(config.core.clone(), keypair, Box::new(OsRng), devp2p_core::Instant::ZERO)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(1));
        let driver = Driver::new(core, cmd_rx, ev_tx, listeners);
        let task = tokio::spawn(driver.run());
        let inner = Inner { cmd: cmd_tx, id, listen_addrs, task: Mutex::new(Some(task)) };
        Ok((Node { inner: Arc::new(inner) }, Events { rx: ev_rx }))
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound listen addresses (with the actual ports).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// The address other nodes dial to reach this one via its first listener,
    /// with the node ID (`NODEID@host:port`).
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.inner.listen_addrs.first().map(|a| PeerAddr::with_id(self.inner.id, *a))
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd.send(make(tx)).await.ok()?;
        rx.await.ok()
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
        self.request(|reply| Command::Send { peer, protocol, msg_type, payload, reply })
            .await
            .unwrap_or(Err(SendError::NotConnected))
            .map_err(NodeError::Send)
    }

    /// Queues a message for every connected peer that speaks `protocol`,
    /// sharing one payload buffer; peers with a full queue are reported in
    /// `failed`, not waited for.
    pub async fn broadcast(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Broadcast {
        self.request(|reply| Command::Broadcast { protocol, msg_type, payload, reply })
            .await
            .unwrap_or_default()
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

    /// Disconnects every peer with `Shutdown`, flushes, closes the sockets
    /// and stops the node. The event stream ends after the last
    /// `PeerDisconnected`.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}
