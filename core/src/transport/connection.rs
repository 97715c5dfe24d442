//! One transport connection: stream framing, then the handshake, then the
//! session. The [`Node`](crate::Node) owns every connection by value.

use alloc::vec::Vec;
use core::net::SocketAddr;

use crate::config::Config;
use crate::event::{Direction, HandshakePath};
use crate::identity::NodeId;

use crate::knowledge::Ticket;
use crate::reason::DisconnectReason;
use crate::session::Session;
use crate::shaping::TokenBucket;
use crate::time::Instant;
use crate::transport::handshake::Handshake;

/// Length of the frame header: a big-endian `u16` body length.
pub(crate) const FRAME_HEADER: usize = 2;

/// The phase a connection is in.
pub(crate) enum Phase {
    /// An outbound transport the runtime is opening (see [`crate::Dial`]).
    Dialing {
        /// The node named by the dial, if any.
        target: Option<NodeId>,
    },
    /// Handshake frames are exchanged.
    Handshake(alloc::boxed::Box<Handshake>),
    /// Records are exchanged.
    Established {
        session: alloc::boxed::Box<Session>,
        /// `PeerConnected` was emitted.
        announced: bool,
        /// The path the handshake took.
        path: HandshakePath,
        /// The next resumption ticket, stored when the peer is announced.
        ticket: Option<Ticket>,
    },
}

/// A connection that is closing: it flushes what is queued, then the
/// runtime is told to close the transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    /// Close the transport at this time even if not flushed.
    pub(crate) deadline: Instant,
}

/// One connection's state.
pub(crate) struct Connection {
    pub(crate) direction: Direction,
    /// The remote end of the transport: dialled, or accepted from.
    pub(crate) remote: SocketAddr,
    /// The node ID the dial named, if any: the only key this connection
    /// may be established with.
    pub(crate) dialled: Option<NodeId>,
    pub(crate) phase: Phase,
    /// Bytes of an incomplete frame.
    pub(crate) partial: Vec<u8>,
    /// Plain handshake frames (already framed) waiting to be transmitted.
    pub(crate) plain_out: Vec<u8>,
    /// A buffer from `poll_transmit` has not been acknowledged by `handle_written`.
    pub(crate) write_in_flight: bool,
    pub(crate) closing: Option<Closing>,
    /// The handshake must complete by then.
    pub(crate) handshake_deadline: Instant,
    /// Per-connection bandwidth cap, if configured.
    pub(crate) rate: Option<TokenBucket>,
}

impl Connection {
    /// A connection in `phase` that must be announced by `handshake_deadline`.
    pub(crate) fn new(
        direction: Direction,
        remote: SocketAddr,
        phase: Phase,
        handshake_deadline: Instant,
        rate: Option<TokenBucket>,
    ) -> Self {
        let dialled = match &phase {
            Phase::Dialing { target } => *target,
            _ => None,
        };
        Connection {
            direction,
            remote,
            dialled,
            phase,
            partial: Vec::new(),
            plain_out: Vec::new(),
            write_in_flight: false,
            closing: None,
            handshake_deadline,
            rate,
        }
    }

    /// True until the peer is announced (handshake in progress, or a
    /// 1-RTT responder waiting for the initiator's first record).
    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(
            self.phase,
            Phase::Dialing { .. } | Phase::Handshake(_) | Phase::Established { announced: false, .. }
        )
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: the close
    /// deadline while closing, the handshake deadline until the peer is
    /// announced, then the session's (keepalive, idle, rekey, credit).
    pub(crate) fn poll_timeout(&self, config: &Config) -> Instant {
        match (&self.closing, &self.phase) {
            (Some(cl), _) => cl.deadline,
            (None, Phase::Established { session, announced: true, .. }) => session.poll_timeout(config),
            (None, _) => self.handshake_deadline,
        }
    }

    /// Runs the connection's timers at `now`: what the node must do.
    pub(crate) fn handle_timeout(&mut self, config: &Config, now: Instant) -> Expiry {
        if let Some(cl) = self.closing {
            return if now >= cl.deadline { Expiry::FinishClose } else { Expiry::None };
        }
        match &mut self.phase {
            Phase::Established { session, announced: true, .. } => {
                session.handle_timeout(config, now).err().map_or(Expiry::None, Expiry::Close)
            }
            // Dialling, handshaking, or a 1-RTT responder not confirmed
            // yet: bound by the handshake timeout.
            _ if now >= self.handshake_deadline => Expiry::Close(DisconnectReason::HandshakeTimeout),
            _ => Expiry::None,
        }
    }

    /// True if bytes are waiting for `poll_transmit`.
    pub(crate) fn has_output(&self) -> bool {
        !self.plain_out.is_empty()
            || match &self.phase {
                Phase::Established { session, .. } => session.has_output(),
                Phase::Dialing { .. } | Phase::Handshake(_) => false,
            }
    }

    /// Appends a framed handshake body to the plain output.
    pub(crate) fn push_plain_frame(&mut self, body: &[u8]) {
        // Handshake frames are far below 64 KiB: a hello is bounded by the
        // registered protocols, and the node refuses to start with a hello
        // that does not fit (see `Node::new`).
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        self.plain_out.extend_from_slice(&len.to_be_bytes());
        self.plain_out.extend_from_slice(&body[..usize::from(len)]);
    }

    /// Splits `data` into complete frames, calling `f` on each body, and
    /// keeps an incomplete trailing frame. Stops at the first error.
    pub(crate) fn split_frames<E>(
        partial: &mut Vec<u8>,
        mut data: &mut [u8],
        mut f: impl FnMut(&mut [u8]) -> Result<bool, E>,
    ) -> Result<(), E> {
        if !partial.is_empty() {
            if partial.len() < FRAME_HEADER {
                let take = (FRAME_HEADER - partial.len()).min(data.len());
                partial.extend_from_slice(&data[..take]);
                data = &mut data[take..];
                if partial.len() < FRAME_HEADER {
                    return Ok(());
                }
            }
            let need = FRAME_HEADER + usize::from(u16::from_be_bytes([partial[0], partial[1]]));
            let take = (need - partial.len()).min(data.len());
            partial.extend_from_slice(&data[..take]);
            data = &mut data[take..];
            if partial.len() < need {
                return Ok(());
            }
            let mut frame = core::mem::take(partial);
            let keep_going = f(&mut frame[FRAME_HEADER..])?;
            frame.clear();
            *partial = frame;
            if !keep_going {
                return Ok(());
            }
        }
        while data.len() >= FRAME_HEADER {
            let need = FRAME_HEADER + usize::from(u16::from_be_bytes([data[0], data[1]]));
            if data.len() < need {
                break;
            }
            let (frame, rest) = data.split_at_mut(need);
            if !f(&mut frame[FRAME_HEADER..])? {
                return Ok(());
            }
            data = rest;
        }
        partial.extend_from_slice(data);
        Ok(())
    }
}

/// What a connection's timer asks of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing is due.
    None,
    /// The close deadline passed: end the transport, flushed or not.
    FinishClose,
    /// Close the connection with this reason.
    Close(DisconnectReason),
}

/// How a connection ends, decided by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseCause {
    pub(crate) reason: DisconnectReason,
    /// The peer decided (sent `DISCONNECT`/`REJECT` or closed the transport).
    pub(crate) remote: bool,
}
