//! Shared helpers for the cross-crate integration tests: nodes on either
//! runtime behind one type, so the same suite runs tokio↔tokio, tokio↔smol
//! and smol↔tokio.

use std::time::Duration;

use devp2p_core::{
    Bytes, Config, Event, Keypair, Message, MessageBatch, NodeId, PeerAddr, PeerMetrics, Protocol, ProtocolId,
};

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

/// The event stream of either runtime.
#[derive(Debug)]
pub enum AnyEvents {
    /// Of a tokio node.
    Tokio(devp2p_tokio::Events),
    /// Of a smol node.
    Smol(devp2p_smol::Events),
}

impl AnyEvents {
    /// The next event.
    pub async fn next(&mut self) -> Option<Event> {
        match self {
            AnyEvents::Tokio(e) => e.next().await,
            AnyEvents::Smol(e) => e.next().await,
        }
    }

    /// Up to `limit` events appended to `out`; how many.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>, limit: usize) -> usize {
        match self {
            AnyEvents::Tokio(e) => e.next_batch(out, limit).await,
            AnyEvents::Smol(e) => e.next_batch(out, limit).await,
        }
    }
}

/// The message stream of one protocol on either runtime.
#[derive(Debug)]
pub enum AnyMessages {
    /// Of a tokio node.
    Tokio(devp2p_tokio::Messages),
    /// Of a smol node.
    Smol(devp2p_smol::Messages),
}

impl AnyMessages {
    /// The next message.
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            AnyMessages::Tokio(m) => m.next().await,
            AnyMessages::Smol(m) => m.next().await,
        }
    }

    /// The next messages that arrived together.
    pub async fn next_batch(&mut self) -> Option<MessageBatch> {
        match self {
            AnyMessages::Tokio(m) => m.next_batch().await,
            AnyMessages::Smol(m) => m.next_batch().await,
        }
    }
}

/// Starts a node on `rt` listening on `listen` with the core configuration `core`.
pub async fn spawn_with_config(rt: Runtime, listen: &str, core: Config) -> (AnyNode, AnyEvents) {
    let addr = listen.parse().expect("addr");
    match rt {
        Runtime::Tokio => {
            let (n, e) = devp2p_tokio::Node::spawn(devp2p_tokio::NodeConfig::new(core).listen(addr))
                .await
                .expect("spawn");
            (AnyNode::Tokio(n), AnyEvents::Tokio(e))
        }
        Runtime::Smol => {
            let (n, e) = devp2p_smol::Node::spawn(devp2p_smol::NodeConfig::new(core).listen(addr))
                .await
                .expect("spawn");
            (AnyNode::Smol(n), AnyEvents::Smol(e))
        }
    }
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
    let addr = listen.parse().expect("addr");
    match rt {
        Runtime::Tokio => {
            let mut cfg = devp2p_tokio::NodeConfig::new(Config::with_protocols(protocols())).listen(addr);
            cfg.keypair = key;
            cfg.event_capacity = event_capacity;
            let (n, e) = devp2p_tokio::Node::spawn(cfg).await.expect("spawn");
            (AnyNode::Tokio(n), AnyEvents::Tokio(e))
        }
        Runtime::Smol => {
            let mut cfg = devp2p_smol::NodeConfig::new(Config::with_protocols(protocols())).listen(addr);
            cfg.keypair = key;
            cfg.event_capacity = event_capacity;
            let (n, e) = devp2p_smol::Node::spawn(cfg).await.expect("spawn");
            (AnyNode::Smol(n), AnyEvents::Smol(e))
        }
    }
}

impl AnyNode {
    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        match self {
            AnyNode::Tokio(n) => n.node_id(),
            AnyNode::Smol(n) => n.node_id(),
        }
    }

    /// `NODEID@addr` of the first listener.
    pub fn peer_addr(&self) -> PeerAddr {
        match self {
            AnyNode::Tokio(n) => n.peer_addr(),
            AnyNode::Smol(n) => n.peer_addr(),
        }
        .expect("listening")
    }

    /// Dials.
    pub async fn dial(&self, addr: PeerAddr) -> Result<NodeId, String> {
        match self {
            AnyNode::Tokio(n) => n.dial(addr).await.map_err(|e| e.to_string()),
            AnyNode::Smol(n) => n.dial(addr).await.map_err(|e| e.to_string()),
        }
    }

    /// Sends, waiting for queue space.
    pub async fn send(&self, peer: NodeId, p: ProtocolId, t: u32, payload: Bytes) -> Result<(), String> {
        match self {
            AnyNode::Tokio(n) => n.send(peer, p, t, payload).await.map_err(|e| e.to_string()),
            AnyNode::Smol(n) => n.send(peer, p, t, payload).await.map_err(|e| e.to_string()),
        }
    }

    /// Sends a batch to one peer on one protocol, in order.
    pub async fn send_batch(
        &self,
        peer: NodeId,
        p: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
    ) -> Result<(), devp2p_core::BatchError> {
        match self {
            AnyNode::Tokio(n) => n.send_batch(peer, p, msgs).await,
            AnyNode::Smol(n) => n.send_batch(peer, p, msgs).await,
        }
    }

    /// Sends a send batch to one peer on one protocol, in order.
    pub async fn send_packed(
        &self,
        peer: NodeId,
        p: ProtocolId,
        batch: devp2p_core::SendBatch,
    ) -> Result<(), devp2p_core::BatchError> {
        match self {
            AnyNode::Tokio(n) => n.send_packed(peer, p, batch).await,
            AnyNode::Smol(n) => n.send_packed(peer, p, batch).await,
        }
    }

    /// A stream of its own for `protocol`'s messages.
    pub async fn messages(&self, protocol: ProtocolId) -> AnyMessages {
        match self {
            AnyNode::Tokio(n) => AnyMessages::Tokio(n.messages(protocol).await),
            AnyNode::Smol(n) => AnyMessages::Smol(n.messages(protocol).await),
        }
    }

    /// Per-peer, per-protocol counters.
    pub async fn metrics(&self) -> Vec<PeerMetrics> {
        match self {
            AnyNode::Tokio(n) => n.metrics().await,
            AnyNode::Smol(n) => n.metrics().await,
        }
    }

    /// Disconnects a peer.
    pub async fn disconnect(&self, peer: NodeId) {
        match self {
            AnyNode::Tokio(n) => n.disconnect(peer).await,
            AnyNode::Smol(n) => n.disconnect(peer).await,
        }
    }

    /// Broadcasts to every peer speaking `p`; returns how many it was queued for.
    pub async fn broadcast(&self, p: ProtocolId, t: u32, payload: Bytes) -> usize {
        match self {
            AnyNode::Tokio(n) => n.broadcast(p, t, payload).await.sent.len(),
            AnyNode::Smol(n) => n.broadcast(p, t, payload).await.sent.len(),
        }
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<NodeId> {
        match self {
            AnyNode::Tokio(n) => n.peers().await,
            AnyNode::Smol(n) => n.peers().await,
        }
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        match self {
            AnyNode::Tokio(n) => n.shutdown().await,
            AnyNode::Smol(n) => n.shutdown().await,
        }
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
