//! The driver task: it owns the sockets' reading side, the listeners,
//! the UDP sockets and the timer, and drives the shared state (see
//! [`crate::state`]) for them. Written once over [`Runtime`].
//!
//! It reads every socket itself: each connection's socket has a waker of
//! its own ([`ReadyQueue`]) that queues the connection and wakes the
//! driver, which then reads only the sockets that are ready, into one
//! reused buffer. Each connection has a writer task for what the socket
//! does not take at once, so that sealing and the write system calls run
//! in parallel under load. A dial runs in a task of its own until the
//! transport is open.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};

use async_channel::{Receiver, Sender};
use devp2p_core::{ConnectionId, Event};
use futures_lite::future::poll_fn;
use futures_lite::Stream;

use crate::credit::CreditShared;
use crate::ready::{ConnWaker, ReadyQueue};
use crate::runtime::Runtime;
use crate::state::{Op, Shared, State};
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

/// Both ends of the channel on which the node's tasks report.
pub(crate) type InputChannel<S> = (Sender<Input<S>>, Receiver<Input<S>>);

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
enum Wake<R: Runtime, S> {
    Timer,
    /// The event that waited for room was handed over (or nobody listens).
    Delivered(Result<(), Event>),
    /// A handle or a reader asks the driver to look at the state (credit
    /// to return, events waiting, an earlier deadline, a shutdown).
    Kicked,
    /// An operation a handle left to the driver.
    Op(Op<R>),
    Input(Input<S>),
    Accepted(io::Result<(S, SocketAddr)>),
    /// A datagram of this length, in `dgram_buf`, from this address.
    Datagram(usize, SocketAddr),
    /// These connections' sockets may be readable.
    Readable(Vec<ConnectionId>),
}

/// The driver task of one node.
pub(crate) struct Driver<R: Runtime> {
    rt: R,
    shared: Arc<Shared<R>>,
    kicks: Pin<Box<Receiver<()>>>,
    /// Operations the handles left to the driver.
    ops: Pin<Box<Receiver<Op<R>>>>,
    input_rx: Pin<Box<Receiver<Input<R::TcpStream>>>>,
    input_tx: Sender<Input<R::TcpStream>>,
    /// The first event the application's channel had no room for.
    pending_event: Option<PendingEvent>,
    /// Reading stops while events wait for the application.
    reading_paused: bool,
    listeners: Vec<R::TcpListener>,
    accept_paused: bool,
    udp: Arc<[(R::UdpSocket, SocketAddr)]>,
    dgram_buf: Vec<u8>,
    /// Messages the application took (from `Events` or `Messages`).
    credit: Arc<CreditShared>,
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
    /// The timer is set (and has not fired since).
    timer_armed: bool,
}

impl<R: Runtime> Driver<R> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        rt: R,
        shared: Arc<Shared<R>>,
        (kicks, ops): (Receiver<()>, Receiver<Op<R>>),
        input: InputChannel<R::TcpStream>,
        listeners: Vec<R::TcpListener>,
        udp: Arc<[(R::UdpSocket, SocketAddr)]>,
        credit: Arc<CreditShared>,
    ) -> Self {
        let timer = rt.timer(StdInstant::now());
        Driver {
            rt,
            shared,
            kicks: Box::pin(kicks),
            ops: Box::pin(ops),
            input_tx: input.0,
            input_rx: Box::pin(input.1),
            pending_event: None,
            reading_paused: false,
            listeners,
            accept_paused: false,
            udp,
            dgram_buf: vec![0; MAX_DATAGRAM],
            credit,
            ready: Arc::default(),
            readable: Vec::new(),
            read_buf: vec![0; READ_CHUNK],
            timer,
            timer_armed: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            {
                let shared = self.shared.clone();
                let mut st = shared.lock().await;
                // Timers first, so that busy inputs never starve them.
                let now = st.now();
                st.fire_timers(now);
                st.flush(now, false);
                if st.stopping {
                    // Closes the listening sockets.
                    self.listeners.clear();
                    if st.core.connection_count() == 0 {
                        break;
                    }
                }
                if let Some(d) = st.core.poll_timeout().map(|t| st.to_std(t)) {
                    if st.armed.is_none_or(|a| d < a) {
                        R::reset_timer(&mut self.timer, d);
                        st.armed = Some(d);
                        self.timer_armed = true;
                    }
                }
                // The first event the application has no room for waits
                // here; the rest behind it in the state.
                if self.pending_event.is_none() {
                    if let Some(ev) = st.backlog.pop_front() {
                        let tx = st.events.clone();
                        self.pending_event =
                            Some(Box::pin(async move { tx.send(ev).await.map_err(|e| e.0) }));
                        st.event_waiting = true;
                    }
                }
                self.reading_paused = self.pending_event.is_some();
            }
            let wake = poll_fn(|cx| self.poll_wake(cx)).await;
            let shared = self.shared.clone();
            let mut st = shared.lock().await;
            self.handle_wake(&mut st, wake);
            // Whatever woke the driver, it also takes the other inputs that
            // are ready, so that none starves another (a busy socket is
            // queued again after every turn).
            self.poll_inputs(&mut st);
        }
        self.hand_over_last_events().await;
        self.listeners.clear();
        let mut st = self.shared.lock().await;
        st.conns.clear();
        st.finished = true;
        for s in st.stopped.drain(..) {
            let _ = s.try_send(());
        }
    }

    /// The first source that is ready, in priority order; registers the
    /// driver's waker with every source otherwise.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake<R, R::TcpStream>> {
        if self.timer_armed && R::poll_timer(&mut self.timer, cx).is_ready() {
            self.timer_armed = false;
            return Poll::Ready(Wake::Timer);
        }
        if let Some(f) = &mut self.pending_event {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                self.pending_event = None;
                return Poll::Ready(Wake::Delivered(r));
            }
        }
        // The shared state holds a sender: this never ends.
        if let Poll::Ready(Some(())) = self.kicks.as_mut().poll_next(cx) {
            return Poll::Ready(Wake::Kicked);
        }
        // The shared state holds the sender: this never ends.
        if let Poll::Ready(Some(op)) = self.ops.as_mut().poll_next(cx) {
            return Poll::Ready(Wake::Op(op));
        }
        // The driver holds a sender, so the channel never ends.
        if let Poll::Ready(Some(i)) = self.input_rx.as_mut().poll_next(cx) {
            return Poll::Ready(Wake::Input(i));
        }
        if self.reading_paused {
            return Poll::Pending;
        }
        if !self.accept_paused {
            for l in &self.listeners {
                if let Poll::Ready(r) = R::poll_accept(l, cx) {
                    return Poll::Ready(Wake::Accepted(r));
                }
            }
        }
        for (s, _) in self.udp.iter() {
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

    fn handle_wake(&mut self, st: &mut State<R>, wake: Wake<R, R::TcpStream>) {
        match wake {
            Wake::Timer => {
                st.armed = None;
                let now = st.now();
                st.fire_timers(now);
            }
            Wake::Delivered(Ok(())) => {
                st.event_waiting = false;
                st.offer_events();
            }
            Wake::Delivered(Err(ev)) => {
                st.event_waiting = false;
                st.discarded.add_event(&ev);
                st.discard_backlog();
            }
            Wake::Kicked => self.credit.take().apply(&mut st.core),
            Wake::Op(op) => {
                let now = st.now();
                op(st, now);
            }
            Wake::Input(i) => self.handle_input(st, i),
            Wake::Accepted(Ok((stream, from))) => self.accept(st, stream, from),
            Wake::Accepted(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                self.pause_accepting();
            }
            Wake::Datagram(n, from) => {
                let now = st.now();
                st.core.handle_datagram(from, &mut self.dgram_buf[..n], now);
                self.read_datagrams(st, DATAGRAMS_PER_TURN - 1);
            }
            Wake::Readable(ids) => {
                self.read_sockets(st, &ids);
                self.readable = ids;
            }
        }
    }

    /// Handles the inputs and readable sockets that are ready, without waiting.
    fn poll_inputs(&mut self, st: &mut State<R>) {
        for _ in 0..64 {
            match self.ops.try_recv() {
                Ok(op) => {
                    let now = st.now();
                    op(st, now);
                }
                Err(_) => break,
            }
        }
        for _ in 0..64 {
            match self.input_rx.try_recv() {
                Ok(i) => self.handle_input(st, i),
                Err(_) => break,
            }
        }
        if !self.reading_paused {
            let mut readable = std::mem::take(&mut self.readable);
            readable.clear();
            self.ready.take(&mut readable);
            if !readable.is_empty() {
                self.read_sockets(st, &readable);
            }
            self.readable = readable;
        }
    }

    /// Hands over the last events (the final `PeerDisconnected`s), waiting
    /// a little for an application that is still reading.
    async fn hand_over_last_events(&mut self) {
        let mut timer = self.rt.timer(StdInstant::now() + LAST_EVENTS_GRACE);
        let (backlog, events) = {
            let mut st = self.shared.lock().await;
            (std::mem::take(&mut st.backlog), st.events.clone())
        };
        let pending = self.pending_event.take();
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
    fn read_sockets(&mut self, st: &mut State<R>, ids: &[ConnectionId]) {
        for &id in ids {
            let Some(io) = st.conns.get(&id) else { continue };
            io.ready.taken();
            let (stream, ready, waker) = (io.stream.clone(), io.ready.clone(), io.waker.clone());
            let mut cx = Context::from_waker(&waker);
            let mut reads = 0;
            loop {
                match R::poll_read(&stream, &mut cx, &mut self.read_buf) {
                    // The waker is registered: it queues the socket again.
                    Poll::Pending => break,
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        let now = st.now();
                        st.core.handle_close(id, now);
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        let now = st.now();
                        st.core.handle_input(id, &mut self.read_buf[..n], now);
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
    fn read_datagrams(&mut self, st: &mut State<R>, limit: usize) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..limit {
            let mut got = None;
            for (s, _) in self.udp.iter() {
                if let Poll::Ready(Ok(r)) = R::poll_recv_from(s, &mut cx, &mut self.dgram_buf) {
                    got = Some(r);
                    break;
                }
            }
            let Some((n, from)) = got else { return };
            let now = st.now();
            st.core.handle_datagram(from, &mut self.dgram_buf[..n], now);
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

    fn accept(&mut self, st: &mut State<R>, stream: R::TcpStream, from: SocketAddr) {
        if st.stopping {
            return;
        }
        tracing::debug!(%from, "accepted");
        let now = st.now();
        match st.core.accept(from, now) {
            Ok(id) => self.register(st, stream, id),
            Err(e) => tracing::debug!(%from, error = %e, "inbound connection refused"),
        }
    }

    /// Starts reading and writing the transport of connection `id`.
    fn register(&mut self, st: &mut State<R>, stream: R::TcpStream, id: ConnectionId) {
        let _ = R::set_nodelay(&stream);
        let stream = Arc::new(stream);
        let (wtx, wrx) = async_channel::unbounded::<Vec<u8>>();
        let (closed_tx, closed_rx) = async_channel::bounded::<()>(1);
        let task = writer::run(self.rt.clone(), id, stream.clone(), wrx, closed_rx, self.input_tx.clone());
        self.rt.spawn(task);
        let (ready, waker) = self.ready.waker(id);
        // Poll the socket once, which registers its waker.
        std::task::Wake::wake_by_ref(&ready);
        st.conns.insert(
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

    fn handle_input(&mut self, st: &mut State<R>, input: Input<R::TcpStream>) {
        let now = st.now();
        match input {
            Input::Connected { id, stream } => {
                // Refused if the core gave up on the dial meanwhile (the
                // stream is dropped, which closes it).
                if !st.stopping && st.core.handle_connected(id, now) {
                    self.register(st, stream, id);
                }
            }
            Input::DialFailed { id, error } => {
                tracing::debug!(conn = %id, %error, "dial failed");
                st.core.handle_dial_failed(id, now);
            }
            Input::WriteFailed(id) => st.core.handle_close(id, now),
            Input::Written(id, mut buf) => {
                if st.conns.get_mut(&id).is_some_and(|io| io.backlog.written()) {
                    st.core.handle_written(id, now);
                }
                if st.spare.len() < 64 {
                    buf.clear();
                    st.spare.push(buf);
                }
            }
            Input::ResumeAccept => self.accept_paused = false,
        }
    }
}
