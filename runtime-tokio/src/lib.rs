//! # devp2p-tokio
//!
//! Runs a devp2p node on tokio: TCP (IPv4 and IPv6), UDP and timers from
//! tokio, driven by the one async shell (`devp2p-runtime`) around the
//! sans-IO core. No protocol logic lives here: this crate is the
//! [`Runtime`](devp2p_runtime::Runtime) implementation for tokio and the
//! API re-exported under its names.
//!
//! ```no_run
//! use devp2p_tokio::{Config, Event, Node, NodeConfig, Protocol};
//!
//! # async fn example() -> std::io::Result<()> {
//! let mut core = Config::default();
//! let chat = core.register(Protocol::new("chat", 1, 1));
//! let config = NodeConfig::new(core).listen("127.0.0.1:0".parse().unwrap());
//! let (node, mut events) = Node::spawn(config).await?;
//! let peer = node.dial("127.0.0.1:30303".parse().unwrap()).await.expect("dial");
//! node.send(peer, chat, 0, b"hello".to_vec().into()).await.expect("send");
//! while let Some(event) = events.next().await {
//!     if let Event::Message { payload, .. } = event {
//!         println!("{:?}", payload);
//!     }
//! }
//! node.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod runtime;

pub use devp2p_core::{
    bytes, BatchError, Broadcast, Bytes, Config, ConnectionId, Direction, DisconnectReason, Event,
    HandshakePath, Keypair, Message, MessageBatch, NodeId, ParseAddrError, PeerAddr, PeerMetrics, Protocol,
    ProtocolId, ProtocolMetrics, SendBatch, SendError, UnsentMessage,
};
pub use devp2p_runtime::{DialError, Events, Messages, NextEvent, NodeConfig, NodeError};
pub use runtime::Tokio;

/// A running node on tokio (see [`devp2p_runtime::Node`] for its methods).
/// Start one with `Node::spawn(config).await` inside a tokio runtime.
pub type Node = devp2p_runtime::Node<Tokio>;
