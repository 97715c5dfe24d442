//! The public handle of a running node and its event stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use devp2p_core::{
    BatchError, Broadcast, Bytes, Event, Keypair, Message, MessageBatch, NodeId, PeerAddr, PeerMetrics,
    ProtocolId, SendBatch, SendError,
};
use devp2p_runtime::{BatchReader, CreditShared, DialError, EventReader, NodeConfig, NodeError, Taken};
use rand_core::OsRng;
use smol::channel::{self, Receiver, Sender};
use smol::net::TcpListener;
use smol::stream::Stream;
use smol::Task;

use crate::driver::{Command, Driver};

/// The application's events. Consume them promptly: when `event_capacity`
/// events are waiting, the node stops reading from the network. A message
/// counts as consumed, and its flow-control credit goes back to the sender,
/// when `next` returns it. Messages come one per [`Event::Message`]: an
/// [`Event::Messages`] from the core is handed out as its messages.
#[derive(Debug)]
pub struct Events {
    /// Pinned: `poll_next` needs it so (the receiver is not `Unpin`).
    rx: Pin<Box<Receiver<Event>>>,
    /// What was received and not yet handed out.
    reader: EventReader,
}

impl Events {
    /// The next event, or `None` once the node has stopped (`.await` it).
    /// Cancel-safe: the future holds nothing, so dropping it (a losing
    /// branch of a `select!`) loses no event.
    // A future, not an `Iterator`'s `next`: the name reads as the
    // `async fn next` of a stream.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> NextEvent<'_> {
        NextEvent { events: self }
    }

    /// The next event if one is ready (`Ready(None)` once the node has
    /// stopped); else registers `cx` to be woken when one arrives. What
    /// [`next`](Self::next)'s future does, for a hand-written `Stream` or
    /// `Future`.
    #[inline(always)]
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.reader.poll_next(cx, |cx| self.rx.as_mut().poll_next(cx))
    }

    /// Waits for events and appends up to `limit` of them to `out`; returns
    /// how many (0 once the node has stopped). Cheaper per event than
    /// [`next`](Self::next) when many arrive.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>, limit: usize) -> usize {
        let Some(first) = self.next().await else { return 0 };
        out.push(first);
        let rx = &mut self.rx;
        1 + self.reader.take_ready(out, limit.saturating_sub(1), || rx.try_recv().ok())
    }
}

/// The future of [`Events::next`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct NextEvent<'a> {
    events: &'a mut Events,
}

impl Future for NextEvent<'_> {
    type Output = Option<Event>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_next(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Nobody will read what is left: it is discarded, which consumes
        // it (its flow-control credit goes back).
        self.rx.close();
        let rest: Vec<Event> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        self.reader.discard(rest);
    }
}

/// The messages of one protocol, from every peer, in a stream of their own
/// (see [`Node::messages`]). Reading is what returns flow-control credit:
/// while the application does not read, the peers stop sending this
/// protocol, once each has used the window it was granted, and nothing else
/// is held up. Dropping the stream discards what it holds; later messages
/// go to [`Events`].
#[derive(Debug)]
pub struct Messages {
    rx: Receiver<MessageBatch>,
    reader: BatchReader,
}

impl Messages {
    pub(crate) fn new(rx: Receiver<MessageBatch>, taken: Taken) -> Self {
        Messages { rx, reader: BatchReader::new(taken) }
    }

    /// The next batch received, waiting if need be; `None` once the node
    /// has stopped.
    async fn recv(&mut self) -> Option<MessageBatch> {
        match self.rx.try_recv() {
            Ok(b) => Some(b),
            Err(channel::TryRecvError::Empty) => {
                // About to wait: hand back the credit of what was read.
                self.reader.flush();
                self.rx.recv().await.ok()
            }
            Err(channel::TryRecvError::Closed) => None,
        }
    }

    /// The next message, or `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.reader.message() {
                return Some(m);
            }
            let b = self.recv().await?;
            self.reader.start(b);
        }
    }

    /// The next messages, as many as arrived together from one peer (at
    /// least one), in one [`MessageBatch`]: the cheapest way to read many
    /// small messages. `None` once the node has stopped.
    pub async fn next_batch(&mut self) -> Option<MessageBatch> {
        match self.reader.rest() {
            Some(rest) => Some(rest),
            None => {
                let b = self.recv().await?;
                Some(self.reader.take(b))
            }
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        // What is left is discarded, which consumes it.
        self.rx.close();
        self.reader.discard(std::iter::from_fn(|| self.rx.try_recv().ok()));
    }
}

struct Inner {
    cmd: Sender<Command>,
    credit: Arc<CreditShared>,
    id: NodeId,
    listen_addrs: Vec<SocketAddr>,
    task: Mutex<Option<Task<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the driver shut down gracefully
        // (it sees the command channel close) instead of cancelling it.
        if let Some(task) = self.task.get_mut().ok().and_then(|t| t.take()) {
            task.detach();
        }
    }
}

/// A running node. Cheap to clone; the node stops when [`shutdown`](Self::shutdown)
/// is called or every clone is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("id", &self.inner.id).field("listen", &self.inner.listen_addrs).finish()
    }
}

impl Node {
    /// Binds the listeners and starts the node on smol's global executor.
    pub async fn spawn(config: NodeConfig) -> io::Result<(Node, Events)> {
        let keypair = config.keypair.clone().unwrap_or_else(|| Keypair::generate(&mut OsRng));
        let id = keypair.node_id();
        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        for addr in &config.listen {
            let l = TcpListener::bind(addr).await?;
            listen_addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        // Credit goes back when the application takes a message from us.
        let mut core_config = config.core.clone();
        core_config.manual_consume = true;
        let core = devp2p_core::Node::new(core_config, keypair, Box::new(OsRng), devp2p_core::Instant::ZERO)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (cmd_tx, cmd_rx) = channel::bounded(1024);
        let (ev_tx, ev_rx) = channel::bounded(config.event_capacity.max(1));
        let (wake, credit_rx) = channel::bounded(1);
        // A full channel means a wake is already pending.
        let credit = CreditShared::new(move || {
            let _ = wake.try_send(());
        });
        let driver = Driver::new(core, cmd_rx, ev_tx, listeners, credit.clone(), credit_rx);
        let task = smol::spawn(driver.run());
        let events = Events { rx: Box::pin(ev_rx), reader: EventReader::new(Taken::new(credit.clone())) };
        let inner = Inner { cmd: cmd_tx, credit, id, listen_addrs, task: Mutex::new(Some(task)) };
        Ok((Node { inner: Arc::new(inner) }, events))
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound listen addresses (with the actual ports).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// The address other nodes dial to reach this one via its first listener,
    /// with the node ID (`NODEID@host:port`).
    pub fn peer_addr(&self) -> Option<PeerAddr> {
        self.inner.listen_addrs.first().map(|a| PeerAddr::with_id(self.inner.id, *a))
    }

    async fn request<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = channel::bounded(1);
        self.inner.cmd.send(make(tx)).await.ok()?;
        rx.recv().await.ok()
    }

    /// Dials `addr` and completes the handshake. With a node ID in the
    /// address the 1-RTT paths are tried first (resumption, then the
    /// introduced key), falling back as SPEC.md describes.
    pub async fn dial(&self, addr: PeerAddr) -> Result<NodeId, DialError> {
        self.request(|reply| Command::Dial { addr, reply }).await.unwrap_or(Err(DialError::Stopped))
    }

    /// Sends a message. Waits while the peer's send queue is full
    /// (backpressure); fails if the peer is not connected or does not
    /// speak the protocol.
    pub async fn send(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
    ) -> Result<(), NodeError> {
        self.request(|reply| Command::Send { peer, protocol, msgs: vec![(msg_type, payload)], reply })
            .await
            .unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
            .map_err(|e| NodeError::Send(e.error))
    }

    /// Sends several messages to one peer on one protocol, in order, with one
    /// command to the node instead of one per message: the way to send many
    /// small messages fast. Waits while the queue is full (backpressure).
    /// On a refusal, that message and those after it come back in the error.
    pub async fn send_batch(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
    ) -> Result<(), BatchError> {
        let (reply, rx) = channel::bounded(1);
        if let Err(e) = self.inner.cmd.send(Command::Send { peer, protocol, msgs, reply }).await {
            let Command::Send { msgs, .. } = e.0 else { unreachable!("the command sent") };
            return Err(BatchError { error: SendError::NotConnected, unsent: msgs });
        }
        rx.recv().await.unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
    }

    /// Sends the messages of a [`SendBatch`] to one peer on one protocol,
    /// in order: the cheapest way to send many small messages, as the node
    /// queues the batch as one entry and seals its messages straight from
    /// its buffer. Waits while the queue is full (backpressure), queueing
    /// the batch in parts as room appears. Refused whole, nothing sent, if
    /// a message has an undefined type or is too large for the peer; if
    /// the peer disconnects while it waits, the messages not yet queued
    /// come back (see [`Waiters::send_packed`](devp2p_core::Waiters::send_packed)).
    pub async fn send_packed(
        &self,
        peer: NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
    ) -> Result<(), BatchError> {
        let (reply, rx) = channel::bounded(1);
        if let Err(e) = self.inner.cmd.send(Command::SendPacked { peer, protocol, batch, reply }).await {
            let Command::SendPacked { batch, .. } = e.0 else { unreachable!("the command sent") };
            return Err(BatchError { error: SendError::NotConnected, unsent: batch.into_messages() });
        }
        rx.recv().await.unwrap_or(Err(BatchError { error: SendError::NotConnected, unsent: Vec::new() }))
    }

    /// Queues a message for every connected peer that speaks `protocol`,
    /// sharing one payload buffer; peers with a full queue are reported in
    /// `failed`, not waited for.
    pub async fn broadcast(&self, protocol: ProtocolId, msg_type: u32, payload: Bytes) -> Broadcast {
        self.request(|reply| Command::Broadcast { protocol, msg_type, payload, reply })
            .await
            .unwrap_or_default()
    }

    /// A stream of its own for the messages of `protocol`, from every peer,
    /// so that a slow consumer of one protocol holds up no other (the
    /// others keep flowing through [`Events`] or their own streams). Take it
    /// before connecting: messages that arrived earlier went to `Events`.
    /// A second call replaces the first stream. The stream of a protocol
    /// the node does not register ends at once.
    pub async fn messages(&self, protocol: ProtocolId) -> Messages {
        let (tx, rx) = channel::unbounded();
        let _ = self.inner.cmd.send(Command::Route { protocol, tx }).await;
        Messages::new(rx, Taken::new(self.inner.credit.clone()))
    }

    /// Disconnects a peer; queued messages come back in `PeerDisconnected`.
    pub async fn disconnect(&self, peer: NodeId) {
        let _ = self.inner.cmd.send(Command::Disconnect { peer }).await;
    }

    /// Per-peer, per-protocol counters and queue depths.
    pub async fn metrics(&self) -> Vec<PeerMetrics> {
        self.request(|reply| Command::Metrics { reply }).await.unwrap_or_default()
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<NodeId> {
        self.request(|reply| Command::Peers { reply }).await.unwrap_or_default()
    }

    /// The last keepalive round-trip time to `peer`.
    pub async fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.request(|reply| Command::Rtt { peer, reply }).await.flatten()
    }

    /// Disconnects every peer with `Shutdown`, flushes, closes the sockets
    /// and stops the node. The event stream ends after the last
    /// `PeerDisconnected`.
    pub async fn shutdown(&self) {
        let _ = self.request(|reply| Command::Shutdown { reply }).await;
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            t.await;
        }
    }
}
