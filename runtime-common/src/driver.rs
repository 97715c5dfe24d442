//! The task that owns the core and the sockets: feeds inputs in, drains
//! the core's outputs (see [`crate::outputs`]), and sleeps until the next
//! input or deadline. Written once over [`Runtime`].
//!
//! It reads every socket itself: each connection's socket has a waker of
//! its own ([`ReadyQueue`]) that queues the connection and wakes the
//! driver, which then reads only the sockets that are ready, into one
//! reused buffer. Each connection has a writer task, so sealing (here) and
//! the write system calls (there) run in parallel. Listeners and UDP
//! sockets are polled by the driver too; a dial runs in a task of its own
//! until the transport is open.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use async_channel::{Receiver, Sender, TrySendError};
use devp2p_core::{
    BatchError, Broadcast, Bytes, ConnectionId, Consumed, DisconnectReason, Event, MessageBatch, NodeId,
    PeerAddr, PeerMetrics, ProtocolId, SendBatch, Waiters,
};
use futures_lite::future::poll_fn;
use futures_lite::Stream;

use crate::credit::CreditShared;
use crate::handle::DialError;
use crate::outputs::{Route, Routes, Sink};
use crate::ready::{ConnWaker, ReadyQueue};
use crate::runtime::Runtime;
use crate::writer::{self, WriterBacklog};

/// Most bytes read from a socket per input, into the driver's one read
/// buffer. Large, so that few records are cut in two by a read (the core
/// copies a cut record's head into its partial-frame buffer).
const READ_CHUNK: usize = 512 << 10;

/// Reads from one socket before the driver turns to other work.
const READS_PER_TURN: usize = 4;

/// Datagrams read from one UDP socket per turn.
const DATAGRAMS_PER_TURN: usize = 16;

/// The largest datagram read (larger ones are truncated by the OS).
const MAX_DATAGRAM: usize = 2048;

/// How long the listeners rest after a failed accept (the process may be
/// out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long the last events wait for an application that is still reading
/// when the node stops.
const LAST_EVENTS_GRACE: Duration = Duration::from_secs(2);

pub(crate) type Reply<T> = Sender<T>;
pub(crate) type DialReply = Reply<Result<NodeId, DialError>>;
pub(crate) type SendReply = Reply<Result<(), BatchError>>;

/// A command from a [`Node`](crate::Node) handle.
pub(crate) enum Command {
    Dial {
        addr: PeerAddr,
        reply: DialReply,
    },
    /// Messages for one peer and protocol, in order.
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
        reply: Reply<Vec<PeerMetrics>>,
    },
    Broadcast {
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
        reply: Reply<Broadcast>,
    },
    Peers {
        reply: Reply<Vec<NodeId>>,
    },
    Rtt {
        peer: NodeId,
        reply: Reply<Option<Duration>>,
    },
    DatagramsDropped {
        reply: Reply<u64>,
    },
    Shutdown {
        reply: Reply<()>,
    },
    /// Messages of `protocol` go to `tx` from now on.
    Route {
        protocol: ProtocolId,
        tx: Sender<Vec<MessageBatch>>,
    },
}

/// Something a task of the node reports to the driver.
pub(crate) enum Input<S> {
    /// A dial's transport is open.
    Connected { id: ConnectionId, stream: S },
    /// A dial's transport could not be opened.
    DialFailed { id: ConnectionId, error: io::Error },
    /// A write failed: the transport is gone.
    WriteFailed(ConnectionId),
    /// A writer wrote this buffer (given back for reuse).
    Written(ConnectionId, Vec<u8>),
    /// The listeners may accept again (see [`ACCEPT_BACKOFF`]).
    ResumeAccept,
}

/// What the driver holds for an open transport.
pub(crate) struct ConnIo<S> {
    /// Read by the driver, written by the writer task. Declared first so
    /// that it is dropped before the writer's channel closes: the writer
    /// then owns the last reference and can linger on the socket.
    pub(crate) stream: Arc<S>,
    /// Queues this connection when its socket becomes readable.
    ready: Arc<ConnWaker>,
    waker: Waker,
    /// Buffers for the writer task.
    pub(crate) writer: Sender<Vec<u8>>,
    /// Dropped (never sent on) when the connection closes: the writer then
    /// has a grace period to flush and linger.
    _closed: Sender<()>,
    /// Buffers handed to the writer and not written yet.
    pub(crate) backlog: WriterBacklog,
}

/// An event handed to the application's full channel, waiting for room
/// (it holds the event; the error gives it back if nobody listens).
type PendingEvent = Pin<Box<dyn Future<Output = Result<(), Event>> + Send>>;

/// What woke the driver.
enum Wake<S> {
    Timer,
    /// The event that waited for room was handed over (or nobody listens).
    Delivered(Result<(), Event>),
    /// The application took messages: their credit can go back.
    Credit,
    Command(Option<Command>),
    Input(Input<S>),
    Accepted(io::Result<(S, SocketAddr)>),
    /// A datagram of this length, in `dgram_buf`, from this address.
    Datagram(usize, SocketAddr),
    /// These connections' sockets may be readable.
    Readable(Vec<ConnectionId>),
}

/// The sockets and channels a driver starts with.
pub(crate) struct Setup<R: Runtime> {
    pub(crate) rt: R,
    pub(crate) core: devp2p_core::Node,
    pub(crate) commands: Receiver<Command>,
    pub(crate) events: Sender<Event>,
    pub(crate) listeners: Vec<R::TcpListener>,
    pub(crate) udp: Vec<(R::UdpSocket, SocketAddr)>,
    pub(crate) credit: Arc<CreditShared>,
    pub(crate) credit_wake: Receiver<()>,
}

pub(crate) struct Driver<R: Runtime> {
    rt: R,
    core: devp2p_core::Node,
    start: StdInstant,
    cmd_rx: Pin<Box<Receiver<Command>>>,
    input_tx: Sender<Input<R::TcpStream>>,
    input_rx: Pin<Box<Receiver<Input<R::TcpStream>>>>,
    events: Sender<Event>,
    /// The first event the application's channel had no room for.
    pending_event: Option<PendingEvent>,
    /// Events behind it.
    backlog: VecDeque<Event>,
    conns: HashMap<ConnectionId, ConnIo<R::TcpStream>>,
    waiters: Waiters<DialReply, SendReply>,
    spare: Vec<Vec<u8>>,
    listeners: Vec<R::TcpListener>,
    accept_paused: bool,
    udp: Vec<(R::UdpSocket, SocketAddr)>,
    dgram_buf: Vec<u8>,
    shutdown: Vec<Reply<()>>,
    stopping: bool,
    /// Every handle is gone.
    cmd_closed: bool,
    /// Protocols whose messages have a stream of their own.
    routes: Routes,
    /// Messages the application took (from `Events` or `Messages`).
    credit: Arc<CreditShared>,
    credit_rx: Pin<Box<Receiver<()>>>,
    /// Messages nobody will read (their stream is gone): consumed here.
    discarded: Consumed,
    /// Connections whose sockets became readable.
    ready: Arc<ReadyQueue>,
    /// The connections taken from `ready` (kept to reuse its allocation).
    readable: Vec<ConnectionId>,
    read_buf: Vec<u8>,
    /// One timer for the whole loop, moved only when the core's deadline
    /// comes earlier than the one it is set to: deadlines that move later
    /// (the credit delay, the idle timeout) leave it alone and cost a
    /// spurious wake at most, instead of a timer registration per turn.
    timer: R::Timer,
    armed: Option<StdInstant>,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(setup: Setup<R>) -> Self {
        let Setup { rt, core, commands, events, listeners, udp, credit, credit_wake } = setup;
        let (input_tx, input_rx) = async_channel::bounded(256);
        let start = StdInstant::now();
        let timer = rt.timer(start);
        Driver {
            core,
            start,
            cmd_rx: Box::pin(commands),
            input_tx,
            input_rx: Box::pin(input_rx),
            events,
            pending_event: None,
            backlog: VecDeque::new(),
            conns: HashMap::new(),
            waiters: Waiters::default(),
            spare: Vec::new(),
            listeners,
            accept_paused: false,
            udp,
            dgram_buf: vec![0; MAX_DATAGRAM],
            shutdown: Vec::new(),
            stopping: false,
            cmd_closed: false,
            routes: Routes::default(),
            credit,
            credit_rx: Box::pin(credit_wake),
            discarded: Consumed::default(),
            ready: Arc::default(),
            readable: Vec::new(),
            read_buf: vec![0; READ_CHUNK],
            timer,
            armed: None,
            rt,
        }
    }

    fn now(&self) -> devp2p_core::Instant {
        devp2p_core::Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    fn to_std(&self, t: devp2p_core::Instant) -> StdInstant {
        self.start + Duration::from_nanos(t.as_nanos())
    }

    /// While events wait for the application, the node stops reading the
    /// network (which pushes back on the peers through TCP) but keeps
    /// serving commands and timers.
    fn reading_paused(&self) -> bool {
        self.pending_event.is_some() || !self.backlog.is_empty()
    }

    pub(crate) async fn run(mut self) {
        loop {
            // Timers first, so that busy inputs never starve them.
            self.fire_timers();
            self.flush();
            if self.stopping && self.core.connection_count() == 0 {
                break;
            }
            if let Some(d) = self.core.poll_timeout().map(|t| self.to_std(t)) {
                if self.armed.is_none_or(|a| d < a) {
                    R::reset_timer(&mut self.timer, d);
                    self.armed = Some(d);
                }
            }
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            self.handle_wake(wake);
            // Whatever woke the driver, it also takes the other inputs that
            // are ready, so that none starves another (a busy socket is
            // queued again after every turn; commands can come in floods).
            self.poll_inputs();
        }
        self.hand_over_last_events().await;
        self.listeners.clear();
        self.conns.clear();
        for s in self.shutdown.drain(..) {
            let _ = s.try_send(());
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// The first source that is ready, in priority order; registers the
    /// driver's waker with every source otherwise.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake<R::TcpStream>> {
        if self.armed.is_some() && R::poll_timer(&mut self.timer, cx).is_ready() {
            self.armed = None;
            return Poll::Ready(Wake::Timer);
        }
        if let Some(f) = &mut self.pending_event {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                self.pending_event = None;
                return Poll::Ready(Wake::Delivered(r));
            }
        }
        // The shared ledger holds the sender: this never ends.
        if let Poll::Ready(Some(())) = self.credit_rx.as_mut().poll_next(cx) {
            return Poll::Ready(Wake::Credit);
        }
        if !self.cmd_closed {
            if let Poll::Ready(c) = self.cmd_rx.as_mut().poll_next(cx) {
                return Poll::Ready(Wake::Command(c));
            }
        }
        // The driver holds a sender, so the channel never ends.
        if let Poll::Ready(Some(i)) = self.input_rx.as_mut().poll_next(cx) {
            return Poll::Ready(Wake::Input(i));
        }
        if self.reading_paused() {
            return Poll::Pending;
        }
        if !self.accept_paused {
            for l in &self.listeners {
                if let Poll::Ready(r) = R::poll_accept(l, cx) {
                    return Poll::Ready(Wake::Accepted(r));
                }
            }
        }
        for (s, _) in &self.udp {
            match R::poll_recv_from(s, cx, &mut self.dgram_buf) {
                Poll::Ready(Ok((n, from))) => return Poll::Ready(Wake::Datagram(n, from)),
                Poll::Ready(Err(e)) => tracing::trace!(error = %e, "datagram receive failed"),
                Poll::Pending => {}
            }
        }
        let mut readable = std::mem::take(&mut self.readable);
        readable.clear();
        match self.ready.poll_take(cx, &mut readable) {
            Poll::Ready(()) => Poll::Ready(Wake::Readable(readable)),
            Poll::Pending => {
                self.readable = readable;
                Poll::Pending
            }
        }
    }

    fn handle_wake(&mut self, wake: Wake<R::TcpStream>) {
        match wake {
            Wake::Timer => self.fire_timers(),
            Wake::Delivered(Ok(())) => self.offer_events(),
            Wake::Delivered(Err(ev)) => {
                self.discarded.add_event(&ev);
                self.discard_backlog();
            }
            Wake::Credit => self.credit.take().apply(&mut self.core),
            Wake::Command(Some(c)) => self.handle_command(c),
            Wake::Command(None) => {
                self.cmd_closed = true;
                self.begin_shutdown();
            }
            Wake::Input(i) => self.handle_input(i),
            Wake::Accepted(Ok((stream, from))) => self.accept(stream, from),
            Wake::Accepted(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                self.pause_accepting();
            }
            Wake::Datagram(n, from) => {
                let now = self.now();
                self.core.handle_datagram(from, &mut self.dgram_buf[..n], now);
                self.read_datagrams(DATAGRAMS_PER_TURN - 1);
            }
            Wake::Readable(ids) => {
                self.read_sockets(&ids);
                self.readable = ids;
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
        if !self.reading_paused() {
            let mut readable = std::mem::take(&mut self.readable);
            readable.clear();
            self.ready.take(&mut readable);
            if !readable.is_empty() {
                self.read_sockets(&readable);
            }
            self.readable = readable;
        }
    }

    /// Passes waiting events to the application while its channel has
    /// room; the first that finds it full waits in `pending_event`.
    fn offer_events(&mut self) {
        if self.pending_event.is_some() {
            return;
        }
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    let tx = self.events.clone();
                    self.pending_event = Some(Box::pin(async move { tx.send(ev).await.map_err(|e| e.0) }));
                    return;
                }
                Err(TrySendError::Closed(ev)) => {
                    self.discarded.add_event(&ev);
                    self.discard_backlog();
                    return;
                }
            }
        }
    }

    /// Nobody reads events any more: their messages count as consumed.
    fn discard_backlog(&mut self) {
        self.backlog.drain(..).for_each(|ev| self.discarded.add_event(&ev));
        self.discarded.apply(&mut self.core);
    }

    /// Hands over the last events (the final `PeerDisconnected`s), waiting
    /// a little for an application that is still reading.
    async fn hand_over_last_events(&mut self) {
        let mut timer = self.rt.timer(StdInstant::now() + LAST_EVENTS_GRACE);
        let (pending, backlog, events) =
            (self.pending_event.take(), std::mem::take(&mut self.backlog), &self.events);
        let deliver = async move {
            if let Some(p) = pending {
                if p.await.is_err() {
                    return;
                }
            }
            for ev in backlog {
                if events.send(ev).await.is_err() {
                    return;
                }
            }
        };
        futures_lite::future::or(deliver, poll_fn(|cx| R::poll_timer(&mut timer, cx))).await;
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
                match R::poll_read(&stream, &mut cx, &mut self.read_buf) {
                    // The waker is registered: it queues the socket again.
                    Poll::Pending => break,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.core.handle_close(id, self.now());
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        let now = self.now();
                        self.core.handle_input(id, &mut self.read_buf[..n], now);
                        reads += 1;
                        if reads == READS_PER_TURN {
                            std::task::Wake::wake_by_ref(&ready);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Reads up to `limit` more datagrams that are ready, without waiting.
    fn read_datagrams(&mut self, limit: usize) {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..limit {
            let mut got = None;
            for (s, _) in &self.udp {
                if let Poll::Ready(Ok(r)) = R::poll_recv_from(s, &mut cx, &mut self.dgram_buf) {
                    got = Some(r);
                    break;
                }
            }
            let Some((n, from)) = got else { return };
            let now = self.now();
            self.core.handle_datagram(from, &mut self.dgram_buf[..n], now);
        }
    }

    fn pause_accepting(&mut self) {
        self.accept_paused = true;
        let (rt, tx) = (self.rt.clone(), self.input_tx.clone());
        let mut timer = rt.timer(StdInstant::now() + ACCEPT_BACKOFF);
        self.rt.spawn(async move {
            poll_fn(|cx| R::poll_timer(&mut timer, cx)).await;
            let _ = tx.send(Input::ResumeAccept).await;
        });
    }

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            // Closes the listening sockets.
            self.listeners.clear();
            let now = self.now();
            self.core.shutdown(now);
        }
    }

    fn accept(&mut self, stream: R::TcpStream, from: SocketAddr) {
        if self.stopping {
            return;
        }
        tracing::debug!(%from, "accepted");
        match self.core.accept(from, self.now()) {
            Ok(id) => self.register(stream, id),
            Err(e) => tracing::debug!(%from, error = %e, "inbound connection refused"),
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Dial { addr, reply } => {
                if self.stopping {
                    let _ = reply.try_send(Err(DialError::Stopped));
                } else if let Err((reply, e)) = self.waiters.dial(&mut self.core, addr, reply, now) {
                    let _ = reply.try_send(Err(DialError::Refused(e)));
                }
            }
            Command::Send { peer, protocol, msgs, reply } => {
                if let Some((reply, r)) = self.waiters.send_batch(&mut self.core, peer, protocol, msgs, reply)
                {
                    let _ = reply.try_send(r);
                }
            }
            Command::SendPacked { peer, protocol, batch, reply } => {
                if let Some((reply, r)) =
                    self.waiters.send_packed(&mut self.core, peer, protocol, batch, reply)
                {
                    let _ = reply.try_send(r);
                }
            }
            Command::Disconnect { peer } => self.core.disconnect(&peer, DisconnectReason::Requested, now),
            Command::Metrics { reply } => {
                let _ = reply.try_send(self.core.metrics());
            }
            Command::Broadcast { protocol, msg_type, payload, reply } => {
                let _ = reply.try_send(self.core.broadcast(protocol, msg_type, payload));
            }
            Command::Peers { reply } => {
                let _ = reply.try_send(self.core.peers().collect());
            }
            Command::Rtt { peer, reply } => {
                let _ = reply.try_send(self.core.rtt(&peer));
            }
            Command::DatagramsDropped { reply } => {
                let _ = reply.try_send(self.core.datagrams_dropped());
            }
            Command::Shutdown { reply } => {
                self.shutdown.push(reply);
                self.begin_shutdown();
            }
            Command::Route { protocol, tx } => {
                // A protocol the node does not register gets no messages:
                // its stream ends at once (`tx` is dropped).
                if self.core.config().registers(protocol) {
                    self.routes.insert(protocol, Route::new(tx));
                }
            }
        }
    }

    /// Starts reading and writing the transport of connection `id`.
    fn register(&mut self, stream: R::TcpStream, id: ConnectionId) {
        let _ = R::set_nodelay(&stream);
        let stream = Arc::new(stream);
        let (wtx, wrx) = async_channel::unbounded::<Vec<u8>>();
        let (closed_tx, closed_rx) = async_channel::bounded::<()>(1);
        let task = writer::run(self.rt.clone(), id, stream.clone(), wrx, closed_rx, self.input_tx.clone());
        self.rt.spawn(task);
        let (ready, waker) = self.ready.waker(id);
        // Poll the socket once, which registers its waker.
        std::task::Wake::wake_by_ref(&ready);
        self.conns.insert(
            id,
            ConnIo {
                stream,
                ready,
                waker,
                writer: wtx,
                _closed: closed_tx,
                backlog: WriterBacklog::default(),
            },
        );
    }

    fn handle_input(&mut self, input: Input<R::TcpStream>) {
        let now = self.now();
        match input {
            Input::Connected { id, stream } => {
                // Refused if the core gave up on the dial meanwhile (the
                // stream is dropped, which closes it).
                if !self.stopping && self.core.handle_connected(id, now) {
                    self.register(stream, id);
                }
            }
            Input::DialFailed { id, error } => {
                tracing::debug!(conn = %id, %error, "dial failed");
                self.core.handle_dial_failed(id, now);
            }
            Input::WriteFailed(id) => self.core.handle_close(id, now),
            Input::Written(id, mut buf) => {
                if self.conns.get_mut(&id).is_some_and(|io| io.backlog.written()) {
                    self.core.handle_written(id, now);
                }
                if self.spare.len() < 64 {
                    buf.clear();
                    self.spare.push(buf);
                }
            }
            Input::ResumeAccept => self.accept_paused = false,
        }
    }

    /// Drains the core's outputs (see `Waiters::drain`), hands each
    /// protocol stream its turn's messages, then offers the application
    /// the events it has room for.
    fn flush(&mut self) {
        let now = self.now();
        let mut out = Sink::<R> {
            rt: &self.rt,
            conns: &mut self.conns,
            spare: &mut self.spare,
            backlog: &mut self.backlog,
            routes: &mut self.routes,
            udp: &self.udp,
            input: &self.input_tx,
        };
        self.waiters.drain(&mut self.core, now, &mut out);
        self.routes.send_turn(&mut self.discarded);
        if !self.discarded.is_empty() {
            self.discarded.apply(&mut self.core);
        }
        self.offer_events();
    }
}
