//! # devp2p-smol
//!
//! Runs a devp2p node on smol: TCP (IPv4 and IPv6), UDP and timers from
//! async-io, tasks on smol's global executor, driven by the one async
//! shell (`devp2p-runtime`) around the sans-IO core. It has the same API
//! as `devp2p-tokio`: this crate is only the
//! [`Runtime`](devp2p_runtime::Runtime) implementation for smol.
//!
//! ```no_run
//! use devp2p_smol::{Config, Event, Node, NodeConfig, Protocol};
//!
//! smol::block_on(async {
//!     let mut core = Config::default();
//!     let chat = core.register(Protocol::new("chat", 1, 1));
//!     let config = NodeConfig::new(core).listen("127.0.0.1:0".parse().unwrap());
//!     let (node, mut events) = Node::spawn(config).await.expect("bind");
//!     let peer = node.dial("127.0.0.1:30303".parse().unwrap()).await.expect("dial");
//!     node.send(peer, chat, 0, b"hello".to_vec().into()).await.expect("send");
//!     while let Some(event) = events.next().await {
//!         if let Event::Message { payload, .. } = event {
//!             println!("{payload:?}");
//!         }
//!     }
//!     node.shutdown().await;
//! });
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod runtime;

pub use devp2p_core::{
    bytes, BatchError, Broadcast, Bytes, Config, ConnectionId, Direction, DisconnectReason, Event,
    HandshakePath, Keypair, Message, MessageBatch, NodeId, ParseAddrError, PeerAddr, PeerMetrics, Protocol,
    ProtocolId, ProtocolMetrics, SendBatch, SendError, UnsentMessage,
};
pub use devp2p_runtime::{DialError, Events, Messages, NextEvent, NodeConfig, NodeError};
pub use runtime::Smol;

/// A running node on smol (see [`devp2p_runtime::Node`] for its methods).
/// Start one with `Node::spawn(config).await` from any executor; the
/// node's tasks run on smol's global executor.
pub type Node = devp2p_runtime::Node<Smol>;
