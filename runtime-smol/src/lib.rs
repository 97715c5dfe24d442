//! # devp2p-smol
//!
//! Runs a [`devp2p_core::Node`] on smol: owns TCP sockets (IPv4 and IPv6)
//! and timers, and drives the sans-IO core. It has the same API shape as
//! `devp2p-tokio` (`Node::spawn`, `dial`, `send`, an event stream,
//! `shutdown`); the protocol logic, and the bookkeeping of dials and
//! waiting sends ([`devp2p_core::Waiters`]), live in the core.
//!
//! ```no_run
//! use devp2p_smol::{Config, Event, Node, NodeConfig, Protocol, ProtocolId};
//!
//! smol::block_on(async {
//!     let config = NodeConfig::new(Config::with_protocols(vec![Protocol::new("chat", 1, 1)]))
//!         .listen("127.0.0.1:0".parse().unwrap());
//!     let (node, mut events) = Node::spawn(config).await.expect("bind");
//!     let peer = node.dial("127.0.0.1:30303".parse().unwrap()).await.expect("dial");
//!     node.send(peer, ProtocolId(0), 0, b"hello".to_vec().into()).await.expect("send");
//!     while let Some(event) = events.next().await {
//!         if let Event::Message { payload, .. } = event {
//!             println!("{payload:?}");
//!         }
//!     }
//!     node.shutdown().await;
//! });
//! ```

#![warn(missing_docs)]

mod driver;
mod handle;

pub use devp2p_core::{
    BatchError, Broadcast, Bytes, Config, ConnectionId, Direction, DisconnectReason, Event, HandshakePath,
    Keypair, Message, MessageBatch, NodeId, ParseAddrError, PeerAddr, PeerMetrics, Protocol, ProtocolId,
    ProtocolMetrics, SendBatch, SendError, UnsentMessage,
};
pub use devp2p_runtime::{DialError, NodeConfig, NodeError};
pub use handle::{Events, Messages, NextEvent, Node};
