//! The connection table: every connection by id, the peers' connections
//! by node ID, and admission of new connections against the limits.

use alloc::collections::BTreeMap;
use core::net::SocketAddr;

use crate::config::Config;
use crate::error::ConnectError;
use crate::event::Direction;
use crate::identity::NodeId;
use crate::ids::ConnectionId;
use crate::shaping::TokenBucket;
use crate::time::Instant;
use crate::transport::connection::{Connection, Phase};

/// Every connection the node holds, in any phase.
#[derive(Default)]
pub(crate) struct ConnectionTable {
    /// In a `BTreeMap`, so that iteration order, and therefore every run,
    /// is deterministic.
    pub(crate) connections: BTreeMap<ConnectionId, Connection>,
    /// The announced peers and their connections.
    pub(crate) peers: BTreeMap<NodeId, ConnectionId>,
    /// The next id to hand out (ids are never reused).
    next: u64,
}

impl ConnectionTable {
    /// Admits a new connection in `phase` if the limits allow: at most
    /// `max_connections` in all and `max_handshaking` not yet announced.
    pub(crate) fn admit(
        &mut self,
        direction: Direction,
        remote: SocketAddr,
        phase: Phase,
        config: &Config,
        now: Instant,
    ) -> Result<ConnectionId, ConnectError> {
        if self.connections.len() >= config.limits.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        if self.handshaking_count() >= config.limits.max_handshaking {
            return Err(ConnectError::TooManyHandshakes);
        }
        let id = ConnectionId(self.next);
        self.next += 1;
        let rate = config.shaping.max_connection_rate.map(|r| TokenBucket::new(r, config.burst(), now));
        self.connections
            .insert(id, Connection::new(direction, remote, phase, now + config.timeouts.handshake, rate));
        Ok(id)
    }

    /// Connections not yet announced (dialling, handshaking, or a 1-RTT
    /// responder waiting for the first record).
    pub(crate) fn handshaking_count(&self) -> usize {
        self.connections.values().filter(|c| c.is_handshaking()).count()
    }

    /// The connection of an announced peer.
    pub(crate) fn peer(&self, peer: &NodeId) -> Option<&Connection> {
        self.connections.get(self.peers.get(peer)?)
    }
}
