//! # devp2p-core
//!
//! The sans-IO heart of devp2p: secure sessions between nodes identified by
//! X25519 keys, carrying typed, ordered datagrams for many sub-protocols
//! over one connection.
//!
//! This crate performs **no I/O**: it opens no sockets, reads no clock,
//! spawns nothing and draws no randomness of its own. Bytes received, timer
//! expiries and application commands go in; bytes to send, deadlines and
//! application events come out. Time is an [`Instant`] the caller passes;
//! randomness comes from a caller-provided [`rand_core::CryptoRngCore`].
//! The same state machine is driven by the tokio and smol runtimes, by the
//! deterministic simulator, and by the fuzzers. It is `#![no_std]` and needs
//! only `alloc`.
//!
//! ## Main types
//!
//! * [`Node`]: the endpoint; owns every connection. Its documentation is
//!   the contract for driving it, with the canonical run loop.
//! * [`Config`]: sub-protocols and every limit, with safe defaults.
//! * [`Keypair`], [`NodeId`]: identity.
//! * [`Event`]: what the application learns. Messages come as
//!   [`Event::Message`], or several small ones of a peer that arrived
//!   together as one [`Event::Messages`] ([`MessageBatch`]): read both.
//! * [`SendBatch`]: many small messages for one peer and protocol in one
//!   buffer, queued as one entry by [`Node::send_packed`].
//!
//! ## Module map
//!
//! | module | concept |
//! |---|---|
//! | `crypto` | SHA-256/HKDF, ChaCha20-Poly1305 cipher state, Noise handshakes |
//! | `handshake` | first-packet paths (full, introduced, resumption) and retries |
//! | `protocol` | sub-protocol registration, hello payload, negotiation |
//! | `chunk`, `control`, `varint` | wire codecs |
//! | `session` | records, chunking, reassembly, keepalive, rekey |
//! | `scheduler` | per-protocol send queues: weighted round robin, priority lane |
//! | `flow` | per-protocol credit windows (flow control) |
//! | `shaping` | token buckets for bandwidth caps |
//! | `connection` | framing and phases of one transport |
//! | `knowledge` | resumption tickets |
//! | `node` | the endpoint |
//! | `batch` | messages delivered or sent together in one buffer |
//! | `waiters` | dials and sends a runtime's async API waits on; consumed-message notes |
//! | `addr` | `NODEID@host:port` addresses |
//!
//! The wire format is specified byte for byte in `SPEC.md`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod addr;
mod batch;
mod chunk;
mod config;
mod connection;
mod control;
mod crypto;
mod error;
mod event;
mod flow;
mod handshake;
mod identity;
mod io;
mod knowledge;
mod metrics;
mod node;
mod protocol;
mod reason;
mod rng;
mod scheduler;
mod session;
mod shaping;
mod time;
pub mod varint;
mod waiters;

#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use addr::{ParseAddrError, PeerAddr};
pub use batch::{MessageBatch, MessageBatchIntoIter, MessageBatchIter, SendBatch};
pub use bytes::{self, Bytes};
pub use config::{Config, MAX_RECORD_PLAINTEXT};
pub use connection::ConnectionId;
pub use crypto::{CipherState, CryptoError};
pub use error::{BatchError, ConnectError, SendError};
pub use event::{Delivered, Direction, Event, HandshakePath, Message, UnsentMessage};
pub use flow::MESSAGE_OVERHEAD;
pub use handshake::HandshakeError;
pub use identity::{Keypair, NodeId};
pub use io::Dial;
pub use knowledge::{Ticket, TICKET_ID_LEN};
pub use metrics::{PeerMetrics, ProtocolMetrics};
pub use node::{Broadcast, ConfigError, Node};
pub use protocol::{HelloError, Protocol, ProtocolId, MAX_PROTOCOL_NAME, WIRE_VERSION};
pub use rand_core;
pub use reason::DisconnectReason;
pub use rng::SeededRng;
pub use time::Instant;
pub use waiters::{Consumed, Outputs, Waiters};
