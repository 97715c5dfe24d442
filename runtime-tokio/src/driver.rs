//! The task that owns the core and the sockets: feeds inputs in, drains
//! transmits, closes and events out, and sleeps until the next deadline.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use devp2p_core::{
    BatchError, Broadcast, Bytes, ConnectionId, Consumed, DisconnectReason, Event, Message, MessageBatch,
    NodeId, Outputs, PeerAddr, PeerMetrics, ProtocolId, SendBatch, Waiters,
};
use devp2p_runtime::{CreditShared, DialError, WriterBacklog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ready::{ConnWaker, ReadyQueue};

/// Most bytes read from a socket per input, into the driver's one read
/// buffer. A record (up to 65,537 bytes on the wire) that a read cuts in two
/// is copied whole into the core's partial-frame buffer; with 64 KiB reads
/// that was nearly every record of a bulk transfer. 512 KiB reads cut few:
/// `devp2p bench --only bulk`, 8 interleaved runs each, median 1,079 MB/s
/// against 1,022 with 64 KiB.
const READ_CHUNK: usize = 512 << 10;

/// Reads from one socket before the driver turns to other work.
const READS_PER_TURN: usize = 4;

/// A command from a [`Node`](crate::Node) handle.
pub(crate) enum Command {
    /// Messages for one peer and protocol, in order.
    Dial {
        addr: PeerAddr,
        reply: oneshot::Sender<Result<NodeId, DialError>>,
    },
    Send {
        peer: NodeId,
        protocol: ProtocolId,
        msgs: Vec<(u32, Bytes)>,
        reply: SendReply,
    },
    /// The messages of a send batch for one peer and protocol.
    SendPacked {
        peer: NodeId,
        protocol: ProtocolId,
        batch: SendBatch,
        reply: SendReply,
    },
    Disconnect {
        peer: NodeId,
    },
    Metrics {
        reply: oneshot::Sender<Vec<PeerMetrics>>,
    },
    Broadcast {
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
        reply: oneshot::Sender<Broadcast>,
    },
    Peers {
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    Rtt {
        peer: NodeId,
        reply: oneshot::Sender<Option<Duration>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Messages of `protocol` go to `tx` from now on.
    Route {
        protocol: ProtocolId,
        tx: mpsc::UnboundedSender<Vec<MessageBatch>>,
    },
}

/// Something that happened on a socket.
enum Input {
    Accepted(TcpStream),
    Connected {
        stream: TcpStream,
        target: Option<NodeId>,
        reply: oneshot::Sender<Result<NodeId, DialError>>,
    },
    /// A write failed.
    Eof(ConnectionId),
    Written(ConnectionId, Vec<u8>),
}

struct ConnIo {
    /// Read by the driver, written by the writer task.
    stream: Arc<TcpStream>,
    /// Queues this connection when its socket becomes readable.
    ready: Arc<ConnWaker>,
    waker: Waker,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    writer_task: JoinHandle<()>,
    /// Buffers handed to the writer and not written yet.
    backlog: WriterBacklog,
}

/// How long a closed connection's writer may take to flush its last bytes.
const WRITE_GRACE: Duration = Duration::from_secs(2);

type DialReply = oneshot::Sender<Result<NodeId, DialError>>;
type SendReply = oneshot::Sender<Result<(), BatchError>>;

pub(crate) struct Driver {
    core: devp2p_core::Node,
    start: StdInstant,
    cmd_rx: mpsc::Receiver<Command>,
    input_tx: mpsc::Sender<Input>,
    input_rx: mpsc::Receiver<Input>,
    events: mpsc::Sender<Event>,
    conns: HashMap<ConnectionId, ConnIo>,
    waiters: Waiters<DialReply, SendReply>,
    spare: Vec<Vec<u8>>,
    listeners: Vec<JoinHandle<()>>,
    shutdown: Vec<oneshot::Sender<()>>,
    stopping: bool,
    /// Every handle is gone.
    cmd_closed: bool,
    /// Events the application's channel had no room for yet.
    backlog: VecDeque<Event>,
    /// Protocols whose messages have a stream of their own.
    routes: Routes,
    /// Messages the application took (from `Events` or `Messages`).
    credit: Arc<CreditShared>,
    credit_rx: mpsc::Receiver<()>,
    /// Messages nobody will read (their stream is gone): consumed here.
    discarded: Consumed,
    /// Connections whose sockets became readable.
    ready: Arc<ReadyQueue>,
    /// The connections taken from `ready` (kept to reuse its allocation).
    readable: Vec<ConnectionId>,
    read_buf: Vec<u8>,
}

impl Driver {
    pub(crate) fn new(
        core: devp2p_core::Node,
        cmd_rx: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        listeners: Vec<TcpListener>,
        credit: Arc<CreditShared>,
        credit_rx: mpsc::Receiver<()>,
    ) -> Self {
        let (input_tx, input_rx) = mpsc::channel(256);
        let listeners = listeners
            .into_iter()
            .map(|l| {
                let tx = input_tx.clone();
                tokio::spawn(async move {
                    loop {
                        match l.accept().await {
                            Ok((s, from)) => {
                                tracing::debug!(%from, "accepted");
                                if tx.send(Input::Accepted(s)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Driver {
            core,
            start: StdInstant::now(),
            cmd_rx,
            input_tx,
            input_rx,
            events,
            conns: HashMap::new(),
            waiters: Waiters::default(),
            spare: Vec::new(),
            listeners,
            shutdown: Vec::new(),
            stopping: false,
            cmd_closed: false,
            backlog: VecDeque::new(),
            routes: Routes::default(),
            credit,
            credit_rx,
            discarded: Consumed::default(),
            ready: Arc::default(),
            readable: Vec::new(),
            read_buf: Vec::with_capacity(READ_CHUNK),
        }
    }

    fn now(&self) -> devp2p_core::Instant {
        devp2p_core::Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    fn to_std(&self, t: devp2p_core::Instant) -> StdInstant {
        self.start + Duration::from_nanos(t.as_nanos())
    }

    pub(crate) async fn run(mut self) {
        // One timer for the whole loop, moved only when the core's deadline
        // comes earlier than the one it is set to: deadlines that move later
        // (the credit delay, the idle timeout) leave it alone and cost a
        // spurious wake at most, instead of a timer registration per turn.
        let mut sleep = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
        let mut armed: Option<StdInstant> = None;
        // Handles the select below waits on while `self` is borrowed by the
        // arm that runs: taken once, not per turn (each clone and drop is
        // an atomic update of a count the other threads share).
        let events = self.events.clone();
        let ready = self.ready.clone();
        loop {
            // Timers first, so that busy inputs never starve them.
            let now = self.now();
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.flush();
            if self.stopping && self.core.connection_count() == 0 {
                break;
            }
            if let Some(d) = self.core.poll_timeout().map(|t| self.to_std(t)) {
                if armed.is_none_or(|a| d < a) {
                    sleep.as_mut().reset(d.into());
                    armed = Some(d);
                }
            }
            let backlog = !self.backlog.is_empty();
            let mut readable = std::mem::take(&mut self.readable);
            readable.clear();
            tokio::select! {
                biased;
                () = sleep.as_mut(), if armed.is_some() => {
                    armed = None;
                    let now = self.now();
                    if self.core.poll_timeout().is_some_and(|t| t <= now) {
                        self.core.handle_timeout(now);
                    }
                }
                // Events the application has not taken yet: while any wait,
                // the node stops reading the network but keeps serving
                // commands and timers.
                permit = events.reserve(), if backlog => match permit {
                    Ok(permit) => {
                        if let Some(ev) = self.backlog.pop_front() {
                            permit.send(ev);
                        }
                        self.offer_events();
                    }
                    // Nobody listens any more.
                    Err(_) => self.discard_backlog(),
                },
                // The shared ledger holds the sender: this never ends.
                Some(()) = self.credit_rx.recv() => {
                    self.credit.take().apply(&mut self.core);
                }
                cmd = self.cmd_rx.recv(), if !self.cmd_closed => match cmd {
                    Some(c) => self.handle_command(c),
                    None => {
                        self.cmd_closed = true;
                        self.begin_shutdown();
                    }
                },
                input = self.input_rx.recv() => {
                    // The driver holds a sender, so the channel never closes.
                    if let Some(input) = input {
                        self.handle_input(input);
                    }
                }
                () = std::future::poll_fn(|cx| ready.poll_take(cx, &mut readable)), if !backlog => {
                    self.read_sockets(&readable);
                }
            }
            self.readable = readable;
            // Whatever woke the driver, it also takes the other inputs that
            // are ready, so that none starves another (a busy socket is
            // queued again after every turn; commands can come in floods).
            self.poll_inputs();
        }
        // Hand over the last events (the final PeerDisconnected), waiting a
        // little for an application that is still reading.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Some(ev) = self.backlog.pop_front() {
            if tokio::time::timeout_at(deadline, self.events.send(ev)).await.map_or(true, |r| r.is_err()) {
                break;
            }
        }
        for l in &self.listeners {
            l.abort();
        }
        self.conns.clear();
        for s in self.shutdown.drain(..) {
            let _ = s.send(());
        }
    }

    /// Passes waiting events to the application while its channel has room.
    fn offer_events(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(ev)) => {
                    self.backlog.push_front(ev);
                    self.discard_backlog();
                    return;
                }
            }
        }
    }

    /// Handles the inputs and readable sockets that are ready, without waiting.
    fn poll_inputs(&mut self) {
        for _ in 0..64 {
            match self.input_rx.try_recv() {
                Ok(i) => self.handle_input(i),
                Err(_) => break,
            }
        }
        if self.backlog.is_empty() {
            let mut readable = std::mem::take(&mut self.readable);
            readable.clear();
            self.ready.take(&mut readable);
            if !readable.is_empty() {
                self.read_sockets(&readable);
            }
            self.readable = readable;
        }
    }

    /// Nobody reads events any more: their messages count as consumed.
    fn discard_backlog(&mut self) {
        self.backlog.drain(..).for_each(|ev| self.discarded.add_event(&ev));
        self.discarded.apply(&mut self.core);
    }

    /// Reads the sockets that became readable and feeds the core, a few
    /// reads per socket per turn (a busy socket is queued again).
    fn read_sockets(&mut self, ids: &[ConnectionId]) {
        for &id in ids {
            let Some(io) = self.conns.get(&id) else { continue };
            io.ready.taken();
            let (stream, ready, waker) = (io.stream.clone(), io.ready.clone(), io.waker.clone());
            let mut cx = Context::from_waker(&waker);
            let mut reads = 0;
            loop {
                match stream.poll_read_ready(&mut cx) {
                    // The waker is registered: it queues the socket again.
                    Poll::Pending => break,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        self.core.handle_close(id, self.now());
                        break;
                    }
                }
                self.read_buf.clear();
                match stream.try_read_buf(&mut self.read_buf) {
                    Ok(0) => {
                        self.core.handle_close(id, self.now());
                        break;
                    }
                    Ok(_) => {
                        let now = self.now();
                        self.core.handle_input(id, &mut self.read_buf, now);
                        reads += 1;
                        if reads == READS_PER_TURN {
                            std::task::Wake::wake_by_ref(&ready);
                            break;
                        }
                    }
                    // Readiness was stale; polling again registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.core.handle_close(id, self.now());
                        break;
                    }
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            for l in &self.listeners {
                l.abort();
            }
            let now = self.now();
            self.core.shutdown(now);
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                if self.stopping {
                    let _ = reply.send(Err(DialError::Stopped));
                    return;
                }
                let tx = self.input_tx.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(addr.addr).await {
                        Ok(stream) => {
                            let _ = tx.send(Input::Connected { stream, target: addr.id, reply }).await;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(DialError::Io(e)));
                        }
                    }
                });
            }
            Command::Send { peer, protocol, msgs, reply } => {
                if let Some((reply, r)) = self.waiters.send_batch(&mut self.core, peer, protocol, msgs, reply)
                {
                    let _ = reply.send(r);
                }
            }
            Command::SendPacked { peer, protocol, batch, reply } => {
                if let Some((reply, r)) =
                    self.waiters.send_packed(&mut self.core, peer, protocol, batch, reply)
                {
                    let _ = reply.send(r);
                }
            }
            Command::Disconnect { peer } => {
                let now = self.now();
                self.core.disconnect(&peer, DisconnectReason::Requested, now);
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.core.metrics());
            }
            Command::Broadcast { protocol, msg_type, payload, reply } => {
                let _ = reply.send(self.core.broadcast(protocol, msg_type, payload));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.core.peers().collect());
            }
            Command::Rtt { peer, reply } => {
                let _ = reply.send(self.core.rtt(&peer));
            }
            Command::Shutdown { reply } => {
                self.shutdown.push(reply);
                self.begin_shutdown();
            }
            Command::Route { protocol, tx } => {
                // A protocol the node does not register gets no messages:
                // its stream ends at once (`tx` is dropped).
                if self.core.config().registers(protocol) {
                    self.routes.insert(protocol, Route { tx, batch: Vec::new() });
                }
            }
        }
    }

    fn register(&mut self, stream: TcpStream, id: ConnectionId) {
        let _ = stream.set_nodelay(true);
        let stream = Arc::new(stream);
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (tx, ws) = (self.input_tx.clone(), stream.clone());
        let writer_task = tokio::spawn(async move {
            while let Some(buf) = wrx.recv().await {
                if let Err(e) = write_all(&ws, &buf).await {
                    tracing::debug!(conn = %id, error = %e, "write failed");
                    let _ = tx.send(Input::Eof(id)).await;
                    return;
                }
                if tx.send(Input::Written(id, buf)).await.is_err() {
                    return;
                }
            }
        });
        let (ready, waker) = self.ready.waker(id);
        // Poll the socket once, which registers its waker.
        std::task::Wake::wake_by_ref(&ready);
        self.conns.insert(
            id,
            ConnIo { stream, ready, waker, writer: wtx, writer_task, backlog: WriterBacklog::default() },
        );
    }

    fn handle_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Accepted(stream) => {
                if self.stopping {
                    return;
                }
                match self.core.accept(now) {
                    Ok(id) => self.register(stream, id),
                    Err(e) => tracing::debug!(error = %e, "inbound connection refused"),
                }
            }
            Input::Connected { stream, target, reply } => {
                if self.stopping {
                    let _ = reply.send(Err(DialError::Stopped));
                    return;
                }
                match self.waiters.dial(&mut self.core, target, reply, now) {
                    Ok(id) => self.register(stream, id),
                    Err((reply, e)) => {
                        let _ = reply.send(Err(DialError::Refused(e)));
                    }
                }
            }
            Input::Eof(id) => self.core.handle_close(id, now),
            Input::Written(id, mut buf) => {
                if self.conns.get_mut(&id).is_some_and(|io| io.backlog.written()) {
                    self.core.handle_written(id, now);
                }
                if self.spare.len() < 64 {
                    buf.clear();
                    self.spare.push(buf);
                }
            }
        }
    }

    /// Drains the core's outputs (see `Waiters::drain`), then offers the
    /// application the events it has room for.
    fn flush(&mut self) {
        let now = self.now();
        let mut out = Sink {
            conns: &mut self.conns,
            spare: &mut self.spare,
            backlog: &mut self.backlog,
            routes: &mut self.routes,
        };
        self.waiters.drain(&mut self.core, now, &mut out);
        // Each stream gets this turn's messages as one batch.
        let discarded = &mut self.discarded;
        self.routes.retain(|r| {
            if r.batch.is_empty() {
                return !r.tx.is_closed();
            }
            // The next turn's list starts with room for as many batches as
            // this one's (up to 64), instead of growing from nothing again.
            let next = Vec::with_capacity(r.batch.len().min(64));
            match r.tx.send(std::mem::replace(&mut r.batch, next)) {
                Ok(()) => true,
                Err(e) => {
                    // Dropped since: its messages are discarded (consumed).
                    e.0.iter().for_each(|b| {
                        discarded.add_many(b.connection, b.protocol, b.len() as u64, b.payload_bytes() as u64)
                    });
                    false
                }
            }
        });
        if !self.discarded.is_empty() {
            self.discarded.apply(&mut self.core);
        }
        self.offer_events();
    }
}

/// A protocol's own stream ([`Node::messages`](crate::Node::messages)) and
/// the messages for it gathered during the current turn.
struct Route {
    tx: mpsc::UnboundedSender<Vec<MessageBatch>>,
    batch: Vec<MessageBatch>,
}

/// The protocols' own streams, indexed by protocol id (a lookup per
/// message, so no hashing).
#[derive(Default)]
struct Routes(Vec<Option<Route>>);

impl Routes {
    /// Sets `protocol`'s stream, replacing any earlier one.
    fn insert(&mut self, protocol: ProtocolId, route: Route) {
        let i = usize::from(protocol.0);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(route);
    }

    /// `protocol`'s stream, if it has one.
    fn get_mut(&mut self, protocol: &ProtocolId) -> Option<&mut Route> {
        self.0.get_mut(usize::from(protocol.0))?.as_mut()
    }

    /// Keeps the streams for which `keep` is true.
    fn retain(&mut self, mut keep: impl FnMut(&mut Route) -> bool) {
        for slot in &mut self.0 {
            if slot.as_mut().is_some_and(|r| !keep(r)) {
                *slot = None;
            }
        }
    }
}

/// Where the tokio driver puts the core's outputs.
struct Sink<'a> {
    conns: &'a mut HashMap<ConnectionId, ConnIo>,
    spare: &'a mut Vec<Vec<u8>>,
    backlog: &'a mut VecDeque<Event>,
    routes: &'a mut Routes,
}

impl Outputs<DialReply, SendReply> for Sink<'_> {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 64 {
            // It may hold bytes (those of a transport that is gone).
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn write(&mut self, id: ConnectionId, buf: Vec<u8>) -> Result<bool, Vec<u8>> {
        let Some(io) = self.conns.get_mut(&id) else { return Err(buf) };
        io.writer.send(buf).map_err(|e| e.0)?;
        Ok(io.backlog.handed())
    }

    fn close(&mut self, id: ConnectionId) {
        if let Some(io) = self.conns.remove(&id) {
            // The writer finishes what it was given, then the socket lingers
            // (see `linger`); all within a grace period, so that a peer that
            // never reads cannot pin the socket.
            let (mut writer, stream) = (io.writer_task, io.stream);
            drop(io.writer);
            tokio::spawn(async move {
                let done = tokio::time::timeout(WRITE_GRACE, async {
                    if (&mut writer).await.is_ok() {
                        if let Ok(stream) = Arc::try_unwrap(stream) {
                            linger(stream).await;
                        }
                    }
                })
                .await;
                if done.is_err() {
                    writer.abort();
                }
            });
        }
    }

    fn event(&mut self, ev: Event) {
        match &ev {
            Event::PeerConnected { peer, path, direction, .. } => {
                tracing::info!(%peer, ?path, ?direction, "peer connected");
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
                // Once the stream is dropped, later messages go to `Events`;
                // `flush` counts what the turn's batch held as discarded and
                // removes the route. Whether it was dropped is asked once per
                // turn (at its first message), not per message: the channel's
                // state is written by the reading side on every receive.
                if let Some(route) =
                    self.routes.get_mut(protocol).filter(|r| !r.batch.is_empty() || !r.tx.is_closed())
                {
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

    fn dial_done(&mut self, reply: DialReply, result: Result<NodeId, DisconnectReason>) {
        let _ = reply.send(result.map_err(DialError::Handshake));
    }

    fn send_done(&mut self, reply: SendReply, result: Result<(), BatchError>) {
        let _ = reply.send(result);
    }
}

/// Ends a closed connection's socket: tells the peer we are done (FIN),
/// then reads and drops what it still sends until it closes too. Closing
/// with unread bytes would reset the connection, and a reset can destroy
/// our last records (the `DISCONNECT`) in the peer's receive buffer.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Writes all of `buf`, waiting for the socket to have room.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
