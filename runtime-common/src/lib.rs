//! What the devp2p runtimes (`devp2p-tokio`, `devp2p-smol`) share, kept
//! out of the sans-IO core because it needs the standard library:
//!
//! * the types of their public handles ([`NodeConfig`], [`DialError`],
//!   [`NodeError`]), which both runtimes re-export, so that they have the
//!   same API shape;
//! * flow-control credit returned from the application's readers to the
//!   driver task ([`CreditShared`], [`Taken`]), for a core run with
//!   [`Config::manual_consume`](devp2p_core::Config::manual_consume);
//! * the reading side of their streams ([`BatchReader`], [`EventReader`]),
//!   and how many transmit buffers a writer holds ([`WriterBacklog`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod credit;
mod handle;
mod reader;
mod writer;

pub use credit::{CreditShared, Taken};
pub use handle::{DialError, NodeConfig, NodeError};
pub use reader::{BatchReader, EventReader};
pub use writer::{WriterBacklog, WRITE_DEPTH};
