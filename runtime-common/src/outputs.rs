//! Where the driver puts the core's outputs ([`Sink`], the shell's one
//! [`Outputs`]), and the protocols' own streams ([`Routes`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use async_channel::Sender;
use devp2p_core::{
    BatchError, ConnectionId, Consumed, Dial, DialFailure, Event, Message, MessageBatch, NodeId, Outputs,
    ProtocolId,
};

use crate::driver::{ConnIo, Input};
use crate::handle::DialError;
use crate::runtime::Runtime;
use crate::state::{DialReply, SendReply};

/// Largest transmit written by whoever holds the state rather than by the
/// connection's writer task (a message or a few, not a bulk transfer).
const INLINE_WRITE_MAX: usize = 16 << 10;

/// Buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;

/// A protocol's own stream ([`Node::messages`](crate::Node::messages)) and
/// the messages for it gathered during the current turn.
pub(crate) struct Route {
    tx: Sender<Vec<MessageBatch>>,
    batch: Vec<MessageBatch>,
}

impl Route {
    pub(crate) fn new(tx: Sender<Vec<MessageBatch>>) -> Self {
        Route { tx, batch: Vec::new() }
    }
}

/// The protocols' own streams, indexed by protocol id (a lookup per
/// message, so no hashing).
#[derive(Default)]
pub(crate) struct Routes(Vec<Option<Route>>);

impl Routes {
    /// Sets `protocol`'s stream, replacing any earlier one.
    pub(crate) fn insert(&mut self, protocol: ProtocolId, route: Route) {
        let i = usize::from(protocol.0);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(route);
    }

    /// `protocol`'s stream, if it has one that is still read. Whether it
    /// was dropped is asked once per turn (at its first message), not per
    /// message: the channel's state is written by the reading side on
    /// every receive.
    fn live(&mut self, protocol: &ProtocolId) -> Option<&mut Route> {
        self.0.get_mut(usize::from(protocol.0))?.as_mut().filter(|r| !r.batch.is_empty() || !r.tx.is_closed())
    }

    /// Hands each stream the messages of this turn as one list; a stream
    /// dropped since has its messages counted in `discarded` and is
    /// removed (later messages go to `Events`).
    pub(crate) fn send_turn(&mut self, discarded: &mut Consumed) {
        for slot in &mut self.0 {
            let Some(r) = slot else { continue };
            if r.batch.is_empty() {
                if r.tx.is_closed() {
                    *slot = None;
                }
                continue;
            }
            // The next turn's list starts with room for as many batches as
            // this one's (up to 64), instead of growing from nothing again.
            let next = Vec::with_capacity(r.batch.len().min(64));
            if let Err(e) = r.tx.try_send(std::mem::replace(&mut r.batch, next)) {
                for b in e.into_inner() {
                    discarded.add_many(b.connection, b.protocol, b.len() as u64, b.payload_bytes() as u64);
                }
                *slot = None;
            }
        }
    }
}

/// Where the driver puts the core's outputs.
pub(crate) struct Sink<'a, R: Runtime> {
    /// Small transmits may be written here, not by the writer task.
    pub(crate) inline_writes: bool,
    pub(crate) rt: &'a R,
    pub(crate) conns: &'a mut HashMap<ConnectionId, ConnIo<R::TcpStream>>,
    pub(crate) spare: &'a mut Vec<Vec<u8>>,
    pub(crate) backlog: &'a mut VecDeque<Event>,
    pub(crate) routes: &'a mut Routes,
    pub(crate) udp: &'a [(R::UdpSocket, SocketAddr)],
    pub(crate) input: &'a Sender<Input<R::TcpStream>>,
}

impl<R: Runtime> Outputs<DialReply, SendReply> for Sink<'_, R> {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            // It may hold bytes (those of a transport that is gone).
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn write(&mut self, id: ConnectionId, buf: Vec<u8>) -> Result<bool, Vec<u8>> {
        let Some(io) = self.conns.get_mut(&id) else { return Err(buf) };
        let mut buf = buf;
        if self.inline_writes && io.backlog.is_idle() && buf.len() <= INLINE_WRITE_MAX {
            // Nothing is being written and the buffer is small: try the
            // socket first, here, and hand the writer only what it does
            // not take. Larger buffers go to the writer, so that writing
            // them does not hold up the state.
            let mut cx = Context::from_waker(Waker::noop());
            match R::poll_write(&io.stream, &mut cx, &buf) {
                Poll::Ready(Ok(n)) if n == buf.len() => {
                    self.recycle(buf);
                    return Ok(true);
                }
                Poll::Ready(Ok(n)) => {
                    buf.drain(..n);
                }
                // The transport is gone: the core closes the connection.
                Poll::Ready(Err(_)) => return Err(buf),
                Poll::Pending => {}
            }
        }
        io.writer.try_send(buf).map_err(|e| e.into_inner())?;
        Ok(io.backlog.handed())
    }

    fn close(&mut self, id: ConnectionId) {
        // Dropping the transport's handles ends it: the writer finishes
        // what it was given and lingers, within a grace period (see
        // `writer::run`). A dial still connecting has none: its transport
        // is dropped when it opens (the core refuses it then).
        self.conns.remove(&id);
    }

    fn dial(&mut self, dial: Dial) {
        let (rt, tx) = (self.rt.clone(), self.input.clone());
        self.rt.spawn(async move {
            let input = match rt.connect(dial.addr).await {
                Ok(stream) => Input::Connected { id: dial.connection, stream },
                Err(error) => Input::DialFailed { id: dial.connection, error },
            };
            let _ = tx.send(input).await;
        });
    }

    fn datagram(&mut self, to: SocketAddr, buf: Vec<u8>) {
        // The first socket of the destination's family; none: dropped.
        if let Some((s, _)) = self.udp.iter().find(|(_, local)| local.is_ipv4() == to.is_ipv4()) {
            if let Err(e) = R::try_send_to(s, &buf, to) {
                tracing::trace!(%to, error = %e, "datagram not sent");
            }
        }
        self.recycle(buf);
    }

    fn event(&mut self, ev: Event) {
        match &ev {
            Event::PeerConnected { peer, path, direction, addr, .. } => {
                tracing::info!(%peer, %addr, ?path, ?direction, "peer connected");
            }
            Event::ConnectionFailed { connection, reason, .. } => {
                tracing::info!(conn = %connection, %reason, "connection failed");
            }
            Event::PeerDisconnected { peer, reason, unsent, .. } => {
                tracing::info!(%peer, %reason, unsent = unsent.len(), "peer disconnected");
            }
            Event::HandshakeDowngraded { peer, from, to, .. } => {
                tracing::warn!(%peer, ?from, ?to, "handshake downgraded; stale knowledge dropped");
            }
            Event::Message { protocol, .. } | Event::Messages(MessageBatch { protocol, .. }) => {
                if let Some(route) = self.routes.live(protocol) {
                    match Message::try_from(ev) {
                        Ok(m) => route.batch.push(MessageBatch::one(m)),
                        Err(Event::Messages(b)) => route.batch.push(b),
                        Err(_) => {}
                    }
                    return;
                }
            }
            _ => {}
        }
        self.backlog.push_back(ev);
    }

    fn dial_done(&mut self, reply: DialReply, result: Result<NodeId, DialFailure>) {
        let _ = reply.try_send(result.map_err(DialError::from));
    }

    fn send_done(&mut self, reply: SendReply, result: Result<(), BatchError>) {
        let _ = reply.try_send(result);
    }
}
