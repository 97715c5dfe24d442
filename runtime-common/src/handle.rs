//! What the runtimes' public handles share: how to start a
//! node and the errors of its commands. `devp2p-tokio` and `devp2p-smol`
//! re-export these, so both have the same API shape.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use devp2p_core::{Config, ConnectError, DisconnectReason, Keypair, SendError};

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
    /// from the network (default 1024). Several small messages that arrived
    /// together count as one event until `Events` hands them out (flow
    /// control bounds their bytes). Messages of a protocol with a stream
    /// of its own are not counted: flow control bounds those.
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

impl From<io::Error> for DialError {
    fn from(e: io::Error) -> Self {
        DialError::Io(e)
    }
}
