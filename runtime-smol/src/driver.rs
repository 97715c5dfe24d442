//! The task that owns the core and the sockets: feeds inputs in, drains
//! transmits, closes and events out, and sleeps until the next deadline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant as StdInstant};

use devp2p_core::{
    BatchError, Broadcast, Bytes, ConnectionId, Consumed, DisconnectReason, Event, Message, MessageBatch,
    NodeId, Outputs, PeerAddr, PeerMetrics, ProtocolId, SendBatch, Waiters,
};
use devp2p_runtime::{CreditShared, DialError, WriterBacklog};
use smol::channel::{self, Receiver, Sender};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Task, Timer};
use std::sync::Arc;

/// Bytes read from a socket per input.
const READ_CHUNK: usize = 64 << 10;

type DialReply = Sender<Result<NodeId, DialError>>;
type SendReply = Sender<Result<(), BatchError>>;

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
        reply: Sender<Vec<PeerMetrics>>,
    },
    Broadcast {
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
        reply: Sender<Broadcast>,
    },
    Peers {
        reply: Sender<Vec<NodeId>>,
    },
    Rtt {
        peer: NodeId,
        reply: Sender<Option<Duration>>,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// Messages of `protocol` go to `tx` from now on.
    Route {
        protocol: ProtocolId,
        tx: Sender<MessageBatch>,
    },
}

/// Something that happened on a socket.
enum Input {
    Accepted(TcpStream),
    Connected { stream: TcpStream, target: Option<NodeId>, reply: DialReply },
    Data(ConnectionId, Vec<u8>),
    Eof(ConnectionId),
    Written(ConnectionId, Vec<u8>),
}

struct ConnIo {
    writer: Sender<Vec<u8>>,
    writer_task: Task<()>,
    _reader: Task<()>,
    /// Kept to linger on after the close (see `Sink::close`).
    stream: TcpStream,
    /// Buffers handed to the writer and not written yet.
    backlog: WriterBacklog,
}

/// How long a closed connection's writer may take to flush its last bytes.
const WRITE_GRACE: Duration = Duration::from_secs(2);

enum Wake {
    Input(Option<Input>),
    Command(Option<Command>),
    /// The first waiting event was (true) or could not be (false) handed over.
    Delivered(bool),
    Timer,
    /// The application took messages: their credit can go back.
    Credit,
}

pub(crate) struct Driver {
    core: devp2p_core::Node,
    start: StdInstant,
    cmd_rx: Receiver<Command>,
    input_tx: Sender<Input>,
    input_rx: Receiver<Input>,
    events: Sender<Event>,
    conns: HashMap<ConnectionId, ConnIo>,
    waiters: Waiters<DialReply, SendReply>,
    spare: Vec<Vec<u8>>,
    listeners: Vec<Task<()>>,
    shutdown: Vec<Sender<()>>,
    stopping: bool,
    /// Every handle is gone.
    cmd_closed: bool,
    /// Events the application's channel had no room for yet.
    backlog: VecDeque<Event>,
    /// Protocols whose messages have a stream of their own.
    routes: HashMap<ProtocolId, Sender<MessageBatch>>,
    /// Messages the application took (from `Events` or `Messages`).
    credit: Arc<CreditShared>,
    credit_rx: Receiver<()>,
    /// Messages nobody will read (their stream is gone): consumed here.
    discarded: Consumed,
}

impl Driver {
    pub(crate) fn new(
        core: devp2p_core::Node,
        cmd_rx: Receiver<Command>,
        events: Sender<Event>,
        listeners: Vec<TcpListener>,
        credit: Arc<CreditShared>,
        credit_rx: Receiver<()>,
    ) -> Self {
        let (input_tx, input_rx) = channel::bounded(256);
        let listeners = listeners
            .into_iter()
            .map(|l| {
                let tx = input_tx.clone();
                smol::spawn(async move {
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
                                Timer::after(Duration::from_millis(50)).await;
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
            routes: HashMap::new(),
            credit,
            credit_rx,
            discarded: Consumed::default(),
        }
    }

    fn now(&self) -> devp2p_core::Instant {
        devp2p_core::Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    pub(crate) async fn run(mut self) {
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
            let timer = match self.core.poll_timeout() {
                Some(t) => Timer::at(self.start + Duration::from_nanos(t.as_nanos())),
                None => Timer::never(),
            };
            // While events wait for the application, the node stops reading
            // the network but keeps serving commands and timers.
            let (input_rx, cmd_rx, events, credit_rx) =
                (&self.input_rx, &self.cmd_rx, &self.events, &self.credit_rx);
            let (backlog, cmd_open) = (self.backlog.front().cloned(), !self.cmd_closed);
            let wake = smol::future::or(
                async {
                    timer.await;
                    Wake::Timer
                },
                smol::future::or(
                    async {
                        // The shared ledger holds the sender: this never ends.
                        let _ = credit_rx.recv().await;
                        Wake::Credit
                    },
                    smol::future::or(
                        async {
                            match backlog {
                                Some(ev) => Wake::Delivered(events.send(ev).await.is_ok()),
                                None => std::future::pending().await,
                            }
                        },
                        smol::future::or(
                            async {
                                if cmd_open {
                                    Wake::Command(cmd_rx.recv().await.ok())
                                } else {
                                    std::future::pending().await
                                }
                            },
                            async {
                                if self.backlog.is_empty() {
                                    Wake::Input(input_rx.recv().await.ok())
                                } else {
                                    std::future::pending().await
                                }
                            },
                        ),
                    ),
                ),
            )
            .await;
            match wake {
                // The driver holds an input sender, so the channel never closes.
                Wake::Input(Some(input)) => self.handle_input(input),
                Wake::Input(None) => {}
                Wake::Delivered(true) => {
                    self.backlog.pop_front();
                    self.offer_events();
                }
                // Nobody listens any more: what the events carry is discarded.
                Wake::Delivered(false) => self.discard_backlog(),
                Wake::Credit => self.credit.take().apply(&mut self.core),
                Wake::Command(Some(c)) => self.handle_command(c),
                Wake::Command(None) => {
                    self.cmd_closed = true;
                    self.begin_shutdown();
                }
                Wake::Timer => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
            // Whatever woke the driver, it also takes the inputs that are
            // ready (commands come first in the race and can come in floods;
            // they must not starve the network).
            if self.backlog.is_empty() {
                for _ in 0..64 {
                    match self.input_rx.try_recv() {
                        Ok(i) => self.handle_input(i),
                        Err(_) => break,
                    }
                }
            }
        }
        // Hand over the last events, waiting a little for a reader.
        let events = self.events.clone();
        let rest: Vec<Event> = self.backlog.drain(..).collect();
        smol::future::or(
            async move {
                for ev in rest {
                    if events.send(ev).await.is_err() {
                        break;
                    }
                }
            },
            async {
                Timer::after(Duration::from_secs(2)).await;
            },
        )
        .await;
        self.listeners.clear();
        self.conns.clear();
        for s in self.shutdown.drain(..) {
            let _ = s.try_send(());
        }
    }

    /// Passes waiting events to the application while its channel has room.
    fn offer_events(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(channel::TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(channel::TrySendError::Closed(ev)) => {
                    self.backlog.push_front(ev);
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

    fn begin_shutdown(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.listeners.clear();
            let now = self.now();
            self.core.shutdown(now);
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                if self.stopping {
                    let _ = reply.try_send(Err(DialError::Stopped));
                    return;
                }
                let tx = self.input_tx.clone();
                smol::spawn(async move {
                    match TcpStream::connect(addr.addr).await {
                        Ok(stream) => {
                            let _ = tx.send(Input::Connected { stream, target: addr.id, reply }).await;
                        }
                        Err(e) => {
                            let _ = reply.try_send(Err(DialError::Io(e)));
                        }
                    }
                })
                .detach();
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
            Command::Disconnect { peer } => {
                let now = self.now();
                self.core.disconnect(&peer, DisconnectReason::Requested, now);
            }
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
            Command::Shutdown { reply } => {
                self.shutdown.push(reply);
                self.begin_shutdown();
            }
            Command::Route { protocol, tx } => {
                // A protocol the node does not register gets no messages:
                // its stream ends at once (`tx` is dropped).
                if self.core.config().registers(protocol) {
                    self.routes.insert(protocol, tx);
                }
            }
        }
    }

    fn register(&mut self, stream: TcpStream, id: ConnectionId) {
        let _ = stream.set_nodelay(true);
        let (wtx, wrx) = channel::unbounded::<Vec<u8>>();
        let (mut wr, mut rd, kept) = (stream.clone(), stream.clone(), stream);
        let tx = self.input_tx.clone();
        let writer_task = smol::spawn(async move {
            while let Ok(buf) = wrx.recv().await {
                if let Err(e) = wr.write_all(&buf).await {
                    tracing::debug!(conn = %id, error = %e, "write failed");
                    let _ = tx.send(Input::Eof(id)).await;
                    return;
                }
                if tx.send(Input::Written(id, buf)).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown(std::net::Shutdown::Write);
        });
        let tx = self.input_tx.clone();
        let reader = smol::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Input::Eof(id)).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Input::Data(id, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        self.conns.insert(
            id,
            ConnIo {
                stream: kept,
                writer: wtx,
                writer_task,
                _reader: reader,
                backlog: WriterBacklog::default(),
            },
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
                    let _ = reply.try_send(Err(DialError::Stopped));
                    return;
                }
                match self.waiters.dial(&mut self.core, target, reply, now) {
                    Ok(id) => self.register(stream, id),
                    Err((reply, e)) => {
                        let _ = reply.try_send(Err(DialError::Refused(e)));
                    }
                }
            }
            Input::Data(id, mut buf) => self.core.handle_input(id, &mut buf, now),
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
            discarded: &mut self.discarded,
        };
        self.waiters.drain(&mut self.core, now, &mut out);
        if !self.discarded.is_empty() {
            self.discarded.apply(&mut self.core);
        }
        self.offer_events();
    }
}

/// Where the smol driver puts the core's outputs.
struct Sink<'a> {
    conns: &'a mut HashMap<ConnectionId, ConnIo>,
    spare: &'a mut Vec<Vec<u8>>,
    backlog: &'a mut VecDeque<Event>,
    routes: &'a mut HashMap<ProtocolId, Sender<MessageBatch>>,
    discarded: &'a mut Consumed,
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
        io.writer.try_send(buf).map_err(channel::TrySendError::into_inner)?;
        Ok(io.backlog.handed())
    }

    fn close(&mut self, id: ConnectionId) {
        // Dropping the reader task cancels it. The writer finishes what it
        // was given and shuts the write side (FIN); then the socket reads
        // and drops what the peer still sends until it closes too: closing
        // with unread bytes would reset the connection, and a reset can
        // destroy our last records (the `DISCONNECT`) in the peer's receive
        // buffer. All within a grace period: a peer that never reads cannot
        // pin the socket.
        if let Some(io) = self.conns.remove(&id) {
            drop(io.writer);
            let (writer, mut stream) = (io.writer_task, io.stream);
            smol::spawn(async move {
                smol::future::or(
                    async move {
                        writer.await;
                        let mut buf = [0u8; 4096];
                        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    },
                    async {
                        Timer::after(WRITE_GRACE).await;
                    },
                )
                .await;
            })
            .detach();
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::HandshakeDowngraded { peer, from, to, .. } => {
                tracing::warn!(%peer, ?from, ?to, "handshake downgraded; stale knowledge dropped");
            }
            Event::Message { protocol, .. } | Event::Messages(MessageBatch { protocol, .. })
                if self.routes.contains_key(&protocol) =>
            {
                let b = match Message::try_from(ev) {
                    Ok(m) => MessageBatch::one(m),
                    Err(Event::Messages(b)) => b,
                    Err(_) => return,
                };
                // Unbounded: flow control bounds what a stream holds.
                if let Some(Err(e)) = self.routes.get(&protocol).map(|tx| tx.try_send(b)) {
                    // The stream was dropped: later messages go to `Events`.
                    let b = e.into_inner();
                    self.discarded.add_many(
                        b.connection,
                        b.protocol,
                        b.len() as u64,
                        b.payload_bytes() as u64,
                    );
                    self.routes.remove(&protocol);
                }
                return;
            }
            _ => {}
        }
        self.backlog.push_back(ev);
    }

    fn dial_done(&mut self, reply: DialReply, result: Result<NodeId, DisconnectReason>) {
        let _ = reply.try_send(result.map_err(DialError::Handshake));
    }

    fn send_done(&mut self, reply: SendReply, result: Result<(), BatchError>) {
        let _ = reply.try_send(result);
    }
}
