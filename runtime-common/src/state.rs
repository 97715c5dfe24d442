//! The node's state that the driver task and the application's handles
//! share: the core, the replies owed, each connection's writing side, and
//! where events go. Whoever holds the lock drives the core: a handle's
//! `send` queues its message and writes what the core sealed itself, in
//! the application's task, with no hand-off to the driver; the driver
//! handles sockets, timers and what the handles leave to it (events the
//! application has no room for yet, a deadline that came earlier).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use async_channel::{Sender, TrySendError};
use async_lock::{Mutex, MutexGuard};
use devp2p_core::{BatchError, ConnectionId, Consumed, Event, NodeId, Waiters};

use crate::driver::{ConnIo, Input};
use crate::handle::DialError;
use crate::outputs::{Routes, Sink};
use crate::runtime::Runtime;

/// A reply a handle waits for.
pub(crate) type Reply<T> = Sender<T>;
/// The reply of a dial.
pub(crate) type DialReply = Reply<Result<NodeId, DialError>>;
/// The reply of a send that waited for queue space.
pub(crate) type SendReply = Reply<Result<(), BatchError>>;

/// An operation a handle leaves to the driver (see [`Shared::defer`]).
pub(crate) type Op<R> = Box<dyn FnOnce(&mut State<R>, devp2p_core::Instant) + Send>;

/// What the driver and the handles share.
pub(crate) struct Shared<R: Runtime> {
    state: Mutex<State<R>>,
    /// Wakes the driver (capacity one: full means a wake is pending).
    kick: Sender<()>,
    /// Operations for the driver to run, in order.
    ops: Sender<Op<R>>,
}

impl<R: Runtime> Shared<R> {
    pub(crate) fn new(state: State<R>, kick: Sender<()>, ops: Sender<Op<R>>) -> Arc<Self> {
        Arc::new(Shared { state: Mutex::new(state), kick, ops })
    }

    /// Leaves `op` to the driver, which runs it on the state at its next
    /// turn and then seals and writes what it queued: for a large send,
    /// whose sealing the driver does beside the caller's next work instead
    /// of the caller holding the state while it seals. False if the
    /// driver has stopped.
    pub(crate) async fn defer(&self, op: Op<R>) -> bool {
        self.ops.send(op).await.is_ok()
    }

    /// The state, locked. An async lock: a task that finds it held (the
    /// driver sealing a large batch, say) yields its thread to other tasks
    /// instead of blocking it.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().await
    }

    /// The state, if nobody holds it.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, State<R>>> {
        self.state.try_lock()
    }

    /// Wakes the driver.
    pub(crate) fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    /// Runs `f` on the state, then carries out the core's outputs in this
    /// task, and wakes the driver if it has something to do.
    pub(crate) async fn with<T>(&self, f: impl FnOnce(&mut State<R>, devp2p_core::Instant) -> T) -> T {
        self.with_output(true, f).await
    }

    /// [`with`](Self::with) for an application's task: a small transmit
    /// it produces is written to the socket here (a few small messages are
    /// cheaper sent from here than handed to another task).
    pub(crate) async fn with_output<T>(
        &self,
        inline: bool,
        f: impl FnOnce(&mut State<R>, devp2p_core::Instant) -> T,
    ) -> T {
        let mut st = self.lock().await;
        let now = st.now();
        let t = f(&mut st, now);
        let kick = st.flush(now, inline);
        drop(st);
        if kick {
            self.kick();
        }
        t
    }
}

/// The shared state of one node.
pub(crate) struct State<R: Runtime> {
    pub(crate) rt: R,
    pub(crate) core: devp2p_core::Node,
    start: StdInstant,
    pub(crate) waiters: Waiters<DialReply, SendReply>,
    pub(crate) conns: HashMap<ConnectionId, ConnIo<R::TcpStream>>,
    pub(crate) spare: Vec<Vec<u8>>,
    /// The application's event channel.
    pub(crate) events: Sender<Event>,
    /// Events the application's channel had no room for, in order.
    pub(crate) backlog: VecDeque<Event>,
    /// The driver holds an event (the one before `backlog`) waiting for
    /// room in the channel: nothing may overtake it.
    pub(crate) event_waiting: bool,
    /// Protocols whose messages have a stream of their own.
    pub(crate) routes: Routes,
    /// Messages nobody will read (their stream is gone): consumed here.
    pub(crate) discarded: Consumed,
    /// The UDP sockets (the driver receives, whoever flushes sends).
    pub(crate) udp: Arc<[(R::UdpSocket, SocketAddr)]>,
    /// Where the node's tasks report (dials answered, buffers written).
    pub(crate) input: Sender<Input<R::TcpStream>>,
    pub(crate) stopping: bool,
    /// Handles waiting for the driver to stop.
    pub(crate) stopped: Vec<Reply<()>>,
    /// The driver has stopped.
    pub(crate) finished: bool,
    /// The deadline the driver's timer is set to, if any.
    pub(crate) armed: Option<StdInstant>,
}

impl<R: Runtime> State<R> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        rt: R,
        core: devp2p_core::Node,
        events: Sender<Event>,
        udp: Arc<[(R::UdpSocket, SocketAddr)]>,
        input: Sender<Input<R::TcpStream>>,
    ) -> Self {
        State {
            rt,
            core,
            start: StdInstant::now(),
            waiters: Waiters::default(),
            conns: HashMap::new(),
            spare: Vec::new(),
            events,
            backlog: VecDeque::new(),
            event_waiting: false,
            routes: Routes::default(),
            discarded: Consumed::default(),
            udp,
            input,
            stopping: false,
            stopped: Vec::new(),
            finished: false,
            armed: None,
        }
    }

    /// Now, on the core's clock.
    pub(crate) fn now(&self) -> devp2p_core::Instant {
        devp2p_core::Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    /// A core instant on the runtime's clock.
    pub(crate) fn to_std(&self, t: devp2p_core::Instant) -> StdInstant {
        self.start + Duration::from_nanos(t.as_nanos())
    }

    /// Fires the core's timers if one is due.
    pub(crate) fn fire_timers(&mut self, now: devp2p_core::Instant) {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// Starts shutting down: every connection closes with `Shutdown`.
    pub(crate) fn begin_shutdown(&mut self, now: devp2p_core::Instant) {
        if !self.stopping {
            self.stopping = true;
            self.core.shutdown(now);
        }
    }

    /// Drains the core's outputs (see `Waiters::drain`), hands each
    /// protocol stream its messages, and offers the application the events
    /// it has room for. With `inline_writes` (an application's task), a
    /// small transmit is written to the socket here when its writer is
    /// idle; the driver hands every transmit to the writer, so that the
    /// write system call runs beside its reading and decrypting. True if the driver must act: events wait for room,
    /// or the core's deadline came earlier than the driver's timer.
    pub(crate) fn flush(&mut self, now: devp2p_core::Instant, inline_writes: bool) -> bool {
        let mut out = Sink::<R> {
            inline_writes,
            rt: &self.rt,
            conns: &mut self.conns,
            spare: &mut self.spare,
            backlog: &mut self.backlog,
            routes: &mut self.routes,
            udp: &self.udp,
            input: &self.input,
        };
        self.waiters.drain(&mut self.core, now, &mut out);
        self.routes.send_turn(&mut self.discarded);
        if !self.discarded.is_empty() {
            self.discarded.apply(&mut self.core);
        }
        self.offer_events();
        let earlier = self
            .core
            .poll_timeout()
            .map(|t| self.to_std(t))
            .is_some_and(|d| self.armed.is_none_or(|a| d < a));
        earlier || !self.backlog.is_empty() || self.stopping
    }

    /// Passes waiting events to the application while its channel has room.
    pub(crate) fn offer_events(&mut self) {
        if self.event_waiting {
            return;
        }
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
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
    pub(crate) fn discard_backlog(&mut self) {
        self.backlog.drain(..).for_each(|ev| self.discarded.add_event(&ev));
        self.discarded.apply(&mut self.core);
    }
}
