//! # devp2p-tokio
//!
//! Runs a [`devp2p_core::Node`] on tokio: owns TCP sockets (IPv4 and IPv6)
//! and timers, and drives the sans-IO core. No protocol logic lives here;
//! everything about handshakes, sessions and limits is in the core.
//!
//! ```no_run
//! use devp2p_tokio::{Config, Event, Node, NodeConfig, Protocol, ProtocolId};
//!
//! # async fn example() -> std::io::Result<()> {
//! let config = NodeConfig::new(Config::with_protocols(vec![Protocol::new("chat", 1, 1)]))
//!     .listen("127.0.0.1:0".parse().unwrap());
//! let (node, mut events) = Node::spawn(config).await?;
//! let peer = node.dial("127.0.0.1:30303".parse().unwrap()).await.expect("dial");
//! node.send(peer, ProtocolId(0), 0, b"hello".to_vec().into()).await.expect("send");
//! while let Some(event) = events.next().await {
//!     if let Event::Message { payload, .. } = event {
//!         println!("{:?}", payload);
//!     }
//! }
//! node.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod driver;
mod handle;
mod ready;

pub mod bench;
pub mod demo;

pub use devp2p_core::{
    BatchError, Broadcast, Bytes, Config, ConnectionId, Direction, DisconnectReason, Event, HandshakePath,
    Keypair, Message, MessageBatch, NodeId, ParseAddrError, PeerAddr, PeerMetrics, Protocol, ProtocolId,
    ProtocolMetrics, SendBatch, SendError, UnsentMessage,
};
pub use devp2p_runtime::{DialError, NodeConfig, NodeError};
pub use handle::{Events, Messages, NextEvent, Node};
