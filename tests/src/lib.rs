//! Shared helpers for the cross-crate integration tests: nodes on either
//! runtime behind one type, so the same suite runs tokio↔tokio, tokio↔smol
//! and smol↔tokio. Both runtimes share the shell's stream types, so only
//! the node handle differs.

use std::net::SocketAddr;
use std::time::Duration;

use devp2p_core::{
    BatchError, Bytes, Config, Event, Keypair, NodeId, PeerAddr, PeerMetrics, Protocol, ProtocolId,
};
use devp2p_tokio::{DialError, NodeConfig};

/// The event stream of a node on either runtime (one type, from the shell).
pub type AnyEvents = devp2p_tokio::Events;

/// The message stream of one protocol on either runtime.
pub type AnyMessages = devp2p_tokio::Messages;

/// The protocols every test node registers.
pub fn protocols() -> Vec<Protocol> {
    vec![Protocol::new("chat", 1, 4), Protocol::new("blocks", 1, 8), Protocol::new("state", 2, 2)]
}

/// Which runtime drives a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `devp2p-tokio`.
    Tokio,
    /// `devp2p-smol`.
    Smol,
}

/// A node on either runtime.
#[derive(Clone, Debug)]
pub enum AnyNode {
    /// A tokio node.
    Tokio(devp2p_tokio::Node),
    /// A smol node.
    Smol(devp2p_smol::Node),
}

/// Calls the same method on the node whatever its runtime.
macro_rules! on {
    ($node:expr, $n:ident => $call:expr) => {
        match $node {
            AnyNode::Tokio($n) => $call,
            AnyNode::Smol($n) => $call,
        }
    };
}

/// Starts a node on `rt` with `config`.
pub async fn spawn_node(rt: Runtime, config: NodeConfig) -> (AnyNode, AnyEvents) {
    match rt {
        Runtime::Tokio => {
            let (n, e) = devp2p_tokio::Node::spawn(config).await.expect("spawn");
            (AnyNode::Tokio(n), e)
        }
        Runtime::Smol => {
            let (n, e) = devp2p_smol::Node::spawn(config).await.expect("spawn");
            (AnyNode::Smol(n), e)
        }
    }
}

/// Starts a node on `rt` listening on `listen` with the core configuration `core`.
pub async fn spawn_with_config(rt: Runtime, listen: &str, core: Config) -> (AnyNode, AnyEvents) {
    spawn_node(rt, NodeConfig::new(core).listen(listen.parse().expect("addr"))).await
}

/// Starts a node on `rt` listening on `listen`, with identity `key` if given.
pub async fn spawn_on(rt: Runtime, listen: &str, key: Option<Keypair>) -> (AnyNode, AnyEvents) {
    spawn_with_capacity(rt, listen, key, 1024).await
}

/// Like [`spawn_on`], buffering at most `event_capacity` events for the application.
pub async fn spawn_with_capacity(
    rt: Runtime,
    listen: &str,
    key: Option<Keypair>,
    event_capacity: usize,
) -> (AnyNode, AnyEvents) {
    let mut cfg = NodeConfig::new(Config::with_protocols(protocols())).listen(listen.parse().expect("addr"));
    cfg.keypair = key;
    cfg.event_capacity = event_capacity;
    spawn_node(rt, cfg).await
}

impl AnyNode {
    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        on!(self, n => n.node_id())
    }

    /// `NODEID@addr` of the first listener.
    pub fn peer_addr(&self) -> PeerAddr {
        on!(self, n => n.peer_addr()).expect("listening")
    }

    /// The bound UDP addresses.
    pub fn datagram_addrs(&self) -> Vec<SocketAddr> {
        on!(self, n => n.datagram_addrs().to_vec())
    }

    /// Dials.
    pub async fn dial(&self, addr: PeerAddr) -> Result<NodeId, String> {
        self.dial_typed(addr).await.map_err(|e| e.to_string())
    }

    /// Dials, with the typed error.
    pub async fn dial_typed(&self, addr: PeerAddr) -> Result<NodeId, DialError> {
        on!(self, n => n.dial(addr).await)
    }

    /// Sends, waiting for queue space.
    pub async fn send(&self, peer: NodeId, p: ProtocolId, t: u32, payload: Bytes) -> Result<(), String> {
        on!(self, n => n.send(peer, p, t, payload).await.map_err(|e| e.to_string()))
    }

    /// Sends a batch to one peer on one protocol, in order.
    pub async fn send_batch(
        &self,
        peer: NodeId,
        p: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
    ) -> Result<(), BatchError> {
        on!(self, n => n.send_batch(peer, p, msgs).await)
    }

    /// Sends a send batch to one peer on one protocol, in order.
    pub async fn send_packed(
        &self,
        peer: NodeId,
        p: ProtocolId,
        batch: devp2p_core::SendBatch,
    ) -> Result<(), BatchError> {
        on!(self, n => n.send_packed(peer, p, batch).await)
    }

    /// A stream of its own for `protocol`'s messages.
    pub async fn messages(&self, protocol: ProtocolId) -> AnyMessages {
        on!(self, n => n.messages(protocol).await)
    }

    /// Per-peer, per-protocol counters.
    pub async fn metrics(&self) -> Vec<PeerMetrics> {
        on!(self, n => n.metrics().await)
    }

    /// Datagrams received that no part of the node handles.
    pub async fn datagrams_dropped(&self) -> u64 {
        on!(self, n => n.datagrams_dropped().await)
    }

    /// Disconnects a peer.
    pub async fn disconnect(&self, peer: NodeId) {
        on!(self, n => n.disconnect(peer).await)
    }

    /// Broadcasts to every peer speaking `p`; returns how many it was queued for.
    pub async fn broadcast(&self, p: ProtocolId, t: u32, payload: Bytes) -> usize {
        on!(self, n => n.broadcast(p, t, payload).await.sent.len())
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<NodeId> {
        on!(self, n => n.peers().await)
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        on!(self, n => n.shutdown().await)
    }
}

/// Waits for the first event matching `f`, failing after 30 s.
pub async fn expect_event(events: &mut AnyEvents, mut f: impl FnMut(&Event) -> bool) -> Event {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = events.next().await.expect("events ended");
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .expect("timed out waiting for event")
}
