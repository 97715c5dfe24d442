//! # devp2p-core
//!
//! The sans-IO heart of devp2p: secure sessions between nodes identified by
//! X25519 keys, carrying typed, ordered datagrams for many sub-protocols
//! over one connection.
//!
//! This crate performs **no I/O**: it opens no sockets, reads no clock,
//! spawns nothing and draws no randomness of its own. Stream bytes and
//! datagrams received (with their addresses), answers to its dials, timer
//! expiries and application commands go in; stream bytes and datagrams to
//! send, transports to open and close, deadlines and application events
//! come out. It decides every dial itself. Time is an [`Instant`] the caller passes;
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
//! Each concept in one place; modules import only downwards (`node` at the
//! top, the codecs and identifiers at the bottom).
//!
//! | module | concept |
//! |---|---|
//! | `node` | the root: [`Node`] (`mod.rs`), its commands, inputs, outputs and closing, one file each |
//! | `transport` | the connection table and admission (`table`), one connection's framing and phases (`connection`), the first-packet paths (`handshake`) |
//! | `session` | an established session: send-queue admission (`queue`), sealing (`seal`), opening and reassembly (`open`), delivery (`delivery`), scheduling (`scheduler`), flow control (`flow`) |
//! | `wire` | pure codecs: `varint`, `chunk`, `control` |
//! | `crypto` | SHA-256/HKDF, ChaCha20-Poly1305 cipher state, Noise handshakes |
//! | `protocol` | sub-protocol registration, the hello payload, negotiation |
//! | `config` | [`Config`], its validation ([`ConfigError`]) |
//! | `message`, `event` | what the application sees: messages and batches, events |
//! | `io` | what the runtime is asked to do besides writing: [`Dial`] |
//! | `knowledge` | resumption tickets |
//! | `shaping` | token buckets for bandwidth caps |
//! | `waiters` | dials and sends a runtime's async API waits on; draining outputs ([`Outputs`]) |
//! | `identity`, `ids`, `addr`, `reason`, `error`, `time`, `rng`, `metrics` | keys and node IDs, connection ids, `NODEID@host:port`, reason codes, command errors, time, seeded randomness, counters |
//!
//! The wire format is specified byte for byte in `SPEC.md`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod addr;
mod config;
mod crypto;
mod error;
mod event;
mod identity;
mod ids;
mod io;
mod knowledge;
mod message;
mod metrics;
mod node;
mod protocol;
mod reason;
mod rng;
mod session;
mod shaping;
mod time;
mod transport;
mod waiters;
mod wire;

#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use addr::{ParseAddrError, PeerAddr};
pub use bytes::{self, Bytes};
pub use config::{
    Config, ConfigError, Flow, Limits, Records, Rekey, Resumption, Shaping, Timeouts, MAX_RECORD_PLAINTEXT,
};
pub use error::{BatchError, ConnectError, SendError};
pub use event::{Delivered, Direction, Event, HandshakePath};
pub use identity::{Keypair, NodeId};
pub use ids::ConnectionId;
pub use io::Dial;
pub use knowledge::{Ticket, TICKET_ID_LEN};
pub use message::{Message, MessageBatch, MessageBatchIntoIter, MessageBatchIter, SendBatch, UnsentMessage};
pub use metrics::{PeerMetrics, ProtocolMetrics};
pub use node::{Broadcast, Node};
pub use protocol::{Protocol, ProtocolId, MAX_PROTOCOL_NAME, WIRE_VERSION};
pub use rand_core;
pub use reason::DisconnectReason;
pub use rng::SeededRng;
pub use session::flow::MESSAGE_OVERHEAD;
pub use time::Instant;
pub use waiters::{Consumed, DialFailure, Outputs, Waiters};
