//! # devp2p-runtime
//!
//! The one async shell of devp2p: it runs a [`devp2p_core::Node`] on any
//! async runtime that implements [`Runtime`] (spawn, TCP, UDP, a timer).
//! `devp2p-tokio` and `devp2p-smol` implement that trait and re-export
//! this crate's API under their own names; applications use those.
//!
//! What lives here, once:
//!
//! * the driver task that owns the core and every socket (`driver`): it
//!   feeds bytes, datagrams, dial answers, timer expiries and commands in,
//!   and carries out the core's outputs (stream bytes to writer tasks,
//!   dials, datagrams, closes, events);
//! * the public handle [`Node`] and its errors, and the streams the
//!   application reads ([`Events`], the main way to receive, and
//!   [`Messages`], one protocol's messages in a stream of their own);
//! * flow-control credit returned from the application's readers to the
//!   driver ([`CreditShared`], [`Taken`]), for a core run with
//!   [`Config::manual_consume`](devp2p_core::Config::manual_consume), and
//!   the reading side of the streams ([`BatchReader`], [`EventReader`]).
//!
//! No protocol logic lives here: everything that decides anything is in
//! the core.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod credit;
mod driver;
mod handle;
mod outputs;
mod reader;
mod ready;
mod runtime;
mod state;
mod streams;
mod writer;

pub use credit::{CreditShared, Taken};
pub use handle::{DialError, Node, NodeConfig, NodeError};
pub use reader::{BatchReader, EventReader};
pub use runtime::Runtime;
pub use streams::{Events, Messages, NextEvent};
