//! # devp2p-sim
//!
//! A deterministic in-memory network that drives the same sans-IO
//! [`devp2p_core::Node`] the runtimes drive: virtual time, one seeded RNG
//! from which every random choice derives, reliable ordered byte streams
//! (connect, accept, close, reset) and datagrams, with per-link latency,
//! jitter, bandwidth, datagram loss and reordering, partitions and heals,
//! and host crashes and restarts. The same seed gives the same run, byte
//! for byte: [`Sim::trace_hash`] digests every event.
//!
//! ```
//! use devp2p_sim::{Sim, SimConfig};
//! use std::time::Duration;
//!
//! let mut sim = Sim::new(SimConfig::with_seed(7));
//! let a = sim.add_host();
//! let b = sim.add_host();
//! sim.connect(a, b, true);
//! sim.run_for(Duration::from_secs(1));
//! assert!(sim.is_connected(a, b));
//! sim.send(a, b, 0, 1, 100);
//! sim.run_for(Duration::from_secs(1));
//! assert_eq!(sim.ledger().delivered, 1);
//! sim.check_invariants().unwrap();
//! ```
//!
//! A failing run prints its seed; `SimConfig::with_seed(seed)` replays it.

#![warn(missing_docs)]

mod ledger;
mod net;
mod sim;
mod trace;

pub use ledger::{Ledger, Violation};
pub use net::LinkConfig;
pub use sim::{Fault, HostId, Sim, SimConfig, Stats};
