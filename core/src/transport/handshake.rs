//! The handshake sub-machine of a connection: the three first-packet paths
//! (full `XX`, introduced `IK`, resumption `NNpsk0`) and the retry rule
//! (SPEC.md "Handshake").
//!
//! Every handshake frame body starts with a kind byte. The initiator's
//! first frame names the path; a responder that cannot process it answers
//! `RETRY`, and the initiator drops the knowledge that failed and sends a
//! new first frame with less prior knowledge on the same connection:
//! resumption → introduced → full.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRngCore;

use crate::crypto::noise::{HandshakeResult, HandshakeState, Pattern, IK, NNPSK0, XX};
use crate::crypto::CryptoError;
use crate::event::{Event, HandshakePath};
use crate::identity::{Keypair, NodeId};
use crate::ids::ConnectionId;
use crate::knowledge::{Ticket, TicketStore, TICKET_ID_LEN};
use crate::reason::DisconnectReason;
use crate::time::Instant;

/// Handshake frame kinds (the first byte of every handshake frame body).
pub(crate) mod kind {
    /// Initiator, full path: Noise `XX` message 1.
    pub(crate) const FULL_INIT: u8 = 0x01;
    /// Initiator, introduced path: Noise `IK` message 1.
    pub(crate) const INTRODUCED_INIT: u8 = 0x02;
    /// Initiator, resumption path: 16-byte ticket id, then Noise `NNpsk0` message 1.
    pub(crate) const RESUME_INIT: u8 = 0x03;
    /// Responder: the pattern's message 2.
    pub(crate) const RESPONSE: u8 = 0x04;
    /// Initiator, full path: Noise `XX` message 3.
    pub(crate) const FINISH: u8 = 0x05;
    /// Responder: cannot process the first message; retry with less knowledge.
    pub(crate) const RETRY: u8 = 0x06;
    /// Either side: the handshake is abandoned; one reason-code byte follows.
    pub(crate) const REJECT: u8 = 0x07;
}

/// Causes carried by a `RETRY` frame.
pub(crate) mod retry {
    /// The resumption ticket is unknown, expired or already used.
    pub(crate) const UNKNOWN_TICKET: u8 = 1;
    /// The introduced-path message did not decrypt: the initiator has a wrong key for us.
    pub(crate) const WRONG_KEY: u8 = 2;
}

/// Most `RETRY` frames a responder sends on one connection.
const MAX_RETRIES: u8 = 2;

/// The prologue every devp2p handshake starts with: `"devp2p/1"`, the
/// first frame's kind byte and, for resumption, the ticket id.
fn prologue(kind: u8, ticket_id: Option<&[u8; TICKET_ID_LEN]>) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 1 + TICKET_ID_LEN);
    p.extend_from_slice(b"devp2p/1");
    p.push(kind);
    if let Some(id) = ticket_id {
        p.extend_from_slice(id);
    }
    p
}

/// What the handshake needs from its node.
pub(crate) struct HandshakeCtx<'a> {
    pub(crate) keypair: &'a Keypair,
    pub(crate) tickets: &'a mut TicketStore,
    pub(crate) rng: &'a mut dyn CryptoRngCore,
    /// The encoded local hello payload.
    pub(crate) hello: &'a [u8],
    pub(crate) events: &'a mut VecDeque<Event>,
    pub(crate) connection: ConnectionId,
    pub(crate) now: Instant,
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// A frame of a kind not valid at this point.
    UnexpectedFrame(u8),
    /// A Noise message failed (truncated, bad tag, low-order key).
    Crypto(CryptoError),
    /// The responder asked for a retry with no less knowledge left to try.
    RetryExhausted,
    /// The peer rejected the handshake with this reason.
    Rejected(DisconnectReason),
    /// A frame was empty or truncated.
    Malformed,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::UnexpectedFrame(k) => {
                write!(f, "unexpected handshake frame kind {k:#04x}")
            }
            HandshakeError::Crypto(e) => write!(f, "handshake cryptography failed: {e}"),
            HandshakeError::RetryExhausted => f.write_str("retry requested with no fallback left"),
            HandshakeError::Rejected(r) => write!(f, "peer rejected the handshake: {r}"),
            HandshakeError::Malformed => f.write_str("malformed handshake frame"),
        }
    }
}

impl From<CryptoError> for HandshakeError {
    fn from(e: CryptoError) -> Self {
        HandshakeError::Crypto(e)
    }
}

impl HandshakeError {
    /// The reason reported to the peer and the application.
    pub(crate) fn reason(self) -> DisconnectReason {
        match self {
            HandshakeError::Rejected(r) => r,
            HandshakeError::UnexpectedFrame(_) | HandshakeError::Malformed => {
                DisconnectReason::ProtocolViolation
            }
            HandshakeError::Crypto(_) | HandshakeError::RetryExhausted => DisconnectReason::HandshakeFailed,
        }
    }
}

/// A completed handshake.
pub(crate) struct Completed {
    pub(crate) peer: NodeId,
    pub(crate) path: HandshakePath,
    pub(crate) keys: HandshakeResult,
    /// The peer's raw hello payload.
    pub(crate) remote_hello: Vec<u8>,
}

enum Role {
    Initiator {
        path: HandshakePath,
        noise: HandshakeState,
    },
    /// Waiting for a first frame (`retries` RETRY frames sent so far).
    ResponderAwaitInit {
        retries: u8,
    },
    /// Full path, message 2 sent, waiting for message 3.
    ResponderAwaitFinish {
        noise: HandshakeState,
    },
    /// Terminal placeholder while a transition is in progress.
    Done,
}

/// One side of a handshake in progress.
pub(crate) struct Handshake {
    role: Role,
    /// The node that was dialled (outbound handshakes naming one).
    target: Option<NodeId>,
}

fn pattern_of(path: HandshakePath) -> (&'static Pattern, u8) {
    match path {
        HandshakePath::Full => (&XX, kind::FULL_INIT),
        HandshakePath::Introduced => (&IK, kind::INTRODUCED_INIT),
        HandshakePath::Resumed => (&NNPSK0, kind::RESUME_INIT),
    }
}

impl Handshake {
    /// Starts an outbound handshake, appending the first frame body to `out`.
    /// With a `target`, the best path the stored knowledge allows is used.
    pub(crate) fn initiate(
        target: Option<NodeId>,
        ctx: &mut HandshakeCtx<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Self, HandshakeError> {
        let path = match target {
            None => HandshakePath::Full,
            Some(_) => HandshakePath::Resumed,
        };
        let mut hs = Handshake { role: Role::Done, target };
        hs.start_attempt(target, path, ctx, out)?;
        Ok(hs)
    }

    /// Starts an inbound handshake.
    pub(crate) fn respond() -> Self {
        Handshake { role: Role::ResponderAwaitInit { retries: 0 }, target: None }
    }

    /// The node that was dialled, for outbound handshakes.
    pub(crate) fn target(&self) -> Option<NodeId> {
        self.target
    }

    /// Writes the first frame for `path`; a resumption attempt without a
    /// valid ticket falls through to the introduced path silently (there
    /// was no knowledge to drop).
    fn start_attempt(
        &mut self,
        target: Option<NodeId>,
        mut path: HandshakePath,
        ctx: &mut HandshakeCtx<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), HandshakeError> {
        let mut ticket: Option<Ticket> = None;
        if path == HandshakePath::Resumed {
            ticket = target.and_then(|t| ctx.tickets.take_for_peer(&t, ctx.now));
            if ticket.is_none() {
                path = HandshakePath::Introduced;
            }
        }
        let (pattern, k) = pattern_of(path);
        out.push(k);
        let mut noise = match path {
            HandshakePath::Full => HandshakeState::new(
                pattern,
                true,
                &prologue(k, None),
                Some(ctx.keypair.dh.clone()),
                None,
                None,
            ),
            HandshakePath::Introduced => {
                let rs = target.map(|t| t.0).ok_or(HandshakeError::RetryExhausted)?;
                HandshakeState::new(
                    pattern,
                    true,
                    &prologue(k, None),
                    Some(ctx.keypair.dh.clone()),
                    Some(rs),
                    None,
                )
            }
            HandshakePath::Resumed => {
                // Checked above: the resumed path always has a ticket.
                let t = ticket.as_ref().ok_or(HandshakeError::RetryExhausted)?;
                out.extend_from_slice(&t.id);
                HandshakeState::new(pattern, true, &prologue(k, Some(&t.id)), None, None, Some(t.secret))
            }
        };
        // The full path's first message carries no payload (it would be in clear).
        let payload = if path == HandshakePath::Full { &[][..] } else { ctx.hello };
        noise.write_message(payload, out, ctx.rng)?;
        self.role = Role::Initiator { path, noise };
        Ok(())
    }

    /// Handles one handshake frame body. Frames to send are appended to
    /// `out` (each as a body; the caller frames it). Returns the completed
    /// handshake once both sides are authenticated.
    pub(crate) fn handle_frame(
        &mut self,
        frame: &[u8],
        ctx: &mut HandshakeCtx<'_>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Completed>, HandshakeError> {
        let (&k, body) = frame.split_first().ok_or(HandshakeError::Malformed)?;
        if k == kind::REJECT {
            let code = body.first().copied().ok_or(HandshakeError::Malformed)?;
            return Err(HandshakeError::Rejected(DisconnectReason::from_code(code)));
        }
        match core::mem::replace(&mut self.role, Role::Done) {
            Role::Initiator { path, mut noise } => match k {
                kind::RESPONSE => {
                    let mut remote_hello = Vec::new();
                    noise.read_message(body, &mut remote_hello)?;
                    if path == HandshakePath::Full {
                        let mut f = Vec::with_capacity(1 + 64 + ctx.hello.len());
                        f.push(kind::FINISH);
                        noise.write_message(ctx.hello, &mut f, ctx.rng)?;
                        out.push(f);
                    }
                    let peer = match (path, noise.remote_static()) {
                        (HandshakePath::Resumed, _) => self.target.ok_or(HandshakeError::Malformed)?,
                        (_, Some(rs)) => NodeId(rs),
                        (_, None) => return Err(HandshakeError::Malformed),
                    };
                    Ok(Some(Completed { peer, path, keys: noise.finish(), remote_hello }))
                }
                kind::RETRY => {
                    let next = match path {
                        HandshakePath::Resumed => HandshakePath::Introduced,
                        HandshakePath::Introduced => HandshakePath::Full,
                        HandshakePath::Full => return Err(HandshakeError::RetryExhausted),
                    };
                    // The resumption ticket was already removed when it was
                    // used; a wrong introduced key is dropped by not being
                    // used again on this connection (the node reports it).
                    let target = self.target;
                    if let Some(peer) = target {
                        ctx.events.push_back(Event::HandshakeDowngraded {
                            connection: ctx.connection,
                            peer,
                            from: path,
                            to: next,
                        });
                    }
                    let mut f = Vec::new();
                    self.start_attempt(target, next, ctx, &mut f)?;
                    out.push(f);
                    Ok(None)
                }
                other => Err(HandshakeError::UnexpectedFrame(other)),
            },
            Role::ResponderAwaitInit { retries } => {
                let first = self.respond_first(k, body, retries, ctx, out)?;
                Ok(first)
            }
            Role::ResponderAwaitFinish { mut noise } => {
                if k != kind::FINISH {
                    return Err(HandshakeError::UnexpectedFrame(k));
                }
                let mut remote_hello = Vec::new();
                noise.read_message(body, &mut remote_hello)?;
                let peer = NodeId(noise.remote_static().ok_or(HandshakeError::Malformed)?);
                Ok(Some(Completed { peer, path: HandshakePath::Full, keys: noise.finish(), remote_hello }))
            }
            Role::Done => Err(HandshakeError::UnexpectedFrame(k)),
        }
    }

    fn retry(
        &mut self,
        cause: u8,
        retries: u8,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Completed>, HandshakeError> {
        if retries >= MAX_RETRIES {
            return Err(HandshakeError::RetryExhausted);
        }
        out.push(alloc::vec![kind::RETRY, cause]);
        self.role = Role::ResponderAwaitInit { retries: retries + 1 };
        Ok(None)
    }

    fn respond_first(
        &mut self,
        k: u8,
        body: &[u8],
        retries: u8,
        ctx: &mut HandshakeCtx<'_>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Completed>, HandshakeError> {
        let mut remote_hello = Vec::new();
        let s = Some(ctx.keypair.dh.clone());
        let (mut noise, path, resumed_peer) = match k {
            kind::FULL_INIT => {
                let mut noise = HandshakeState::new(&XX, false, &prologue(k, None), s, None, None);
                let mut payload = Vec::new();
                noise.read_message(body, &mut payload)?;
                // The full path's first message carries no payload (SPEC.md §5).
                if !payload.is_empty() {
                    return Err(HandshakeError::Malformed);
                }
                let mut f = Vec::with_capacity(1 + 96 + ctx.hello.len());
                f.push(kind::RESPONSE);
                noise.write_message(ctx.hello, &mut f, ctx.rng)?;
                out.push(f);
                self.role = Role::ResponderAwaitFinish { noise };
                return Ok(None);
            }
            kind::INTRODUCED_INIT => {
                let mut noise = HandshakeState::new(&IK, false, &prologue(k, None), s, None, None);
                match noise.read_message(body, &mut remote_hello) {
                    Ok(()) => {}
                    // The static key could not be decrypted: the initiator
                    // holds a wrong key for this node.
                    Err(CryptoError::Decrypt) => return self.retry(retry::WRONG_KEY, retries, out),
                    Err(e) => return Err(e.into()),
                }
                (noise, HandshakePath::Introduced, None)
            }
            kind::RESUME_INIT => {
                if body.len() < TICKET_ID_LEN {
                    return Err(HandshakeError::Malformed);
                }
                let (id, msg) = body.split_at(TICKET_ID_LEN);
                let mut tid = [0u8; TICKET_ID_LEN];
                tid.copy_from_slice(id);
                let Some((peer, ticket)) = ctx.tickets.take_by_id(&tid, ctx.now) else {
                    return self.retry(retry::UNKNOWN_TICKET, retries, out);
                };
                let mut noise = HandshakeState::new(
                    &NNPSK0,
                    false,
                    &prologue(k, Some(&tid)),
                    None,
                    None,
                    Some(ticket.secret),
                );
                match noise.read_message(msg, &mut remote_hello) {
                    Ok(()) => {}
                    Err(CryptoError::Decrypt) => return self.retry(retry::UNKNOWN_TICKET, retries, out),
                    Err(e) => return Err(e.into()),
                }
                (noise, HandshakePath::Resumed, Some(peer))
            }
            other => return Err(HandshakeError::UnexpectedFrame(other)),
        };
        let mut f = Vec::with_capacity(1 + 64 + ctx.hello.len());
        f.push(kind::RESPONSE);
        noise.write_message(ctx.hello, &mut f, ctx.rng)?;
        out.push(f);
        let peer = match resumed_peer {
            Some(p) => p,
            None => NodeId(noise.remote_static().ok_or(HandshakeError::Malformed)?),
        };
        Ok(Some(Completed { peer, path, keys: noise.finish(), remote_hello }))
    }
}

impl core::error::Error for HandshakeError {}
