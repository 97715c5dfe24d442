//! The simulation engine: hosts, streams, datagrams, the event queue and
//! the virtual clock.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use devp2p_core::rand_core::RngCore;
use devp2p_core::{
    Config, ConnectionId, Dial, Event, HandshakePath, Instant, Keypair, Node, NodeId, PeerAddr, Protocol,
    ProtocolId, SeededRng, Ticket,
};

use crate::ledger::Ledger;
use crate::net::LinkConfig;
use crate::trace::Trace;

/// A host of the simulation (its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

/// How to build a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed every random choice derives from (keys, nonces, jitter, loss, traffic).
    pub seed: u64,
    /// The default link between any two hosts.
    pub link: LinkConfig,
    /// The core configuration of every host.
    pub node: Config,
    /// Whether a crashed host keeps its resumption tickets (persisted knowledge).
    pub persist_tickets: bool,
    /// Keep every host's events for inspection (off for large runs).
    pub record_events: bool,
    /// Check the invariants after every step (ledger and memory bounds).
    pub check_every_step: bool,
}

impl SimConfig {
    /// Defaults with `seed`: two protocols (`sim` with 4 message types,
    /// `bulk` with 2), 20 ms links, events recorded, invariants checked.
    pub fn with_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            link: LinkConfig::default(),
            node: Config::with_protocols(vec![Protocol::new("sim", 1, 4), Protocol::new("bulk", 1, 2)]),
            persist_tickets: true,
            record_events: true,
            check_every_step: true,
        }
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Scheduled items processed.
    pub steps: u64,
    /// Handshakes completed, by path (counted on the dialling side).
    pub handshakes: BTreeMap<String, u64>,
    /// Handshake downgrades.
    pub downgrades: u64,
    /// Connections that failed before completing.
    pub failed_connections: u64,
    /// Bytes carried by streams.
    pub stream_bytes: u64,
    /// Datagrams delivered / lost.
    pub datagrams_delivered: u64,
    /// Datagrams dropped by loss or partitions.
    pub datagrams_lost: u64,
    /// Largest `buffered_bytes` seen on any node.
    pub peak_node_buffer: usize,
}

struct Host {
    key: Keypair,
    node: Option<Node>,
    /// Incremented at every restart; items for an older epoch are stale.
    epoch: u64,
    conns: BTreeMap<ConnectionId, usize>,
    peer_conn: BTreeMap<NodeId, ConnectionId>,
    saved_tickets: Vec<(NodeId, Ticket)>,
    timer: Option<Instant>,
    events: Vec<Event>,
    datagrams: Vec<(HostId, Vec<u8>)>,
    /// Protocols whose application does not consume (see [`Sim::stall_consumer`]).
    stalled: BTreeSet<u16>,
    /// Messages delivered on stalled protocols and not consumed yet:
    /// (connection, protocol, payload length).
    unconsumed: Vec<(ConnectionId, ProtocolId, usize)>,
}

#[derive(Clone, Copy)]
struct End {
    host: usize,
    epoch: u64,
    conn: Option<ConnectionId>,
    /// The core is done with this end (poll_close), or the host crashed.
    closed: bool,
}

#[derive(Default)]
struct Direction {
    free_at: Instant,
    last_arrival: Instant,
    /// Packets held by a partition (`None`: the close).
    held: Vec<Option<Vec<u8>>>,
}

struct Stream {
    ends: [End; 2],
    dirs: [Direction; 2],
    /// Items scheduled or held that still belong to this stream.
    in_flight: u64,
    /// The network dropped bytes of this stream.
    broken: bool,
    /// The acceptor refused the connection.
    refused: bool,
    finished: bool,
}

/// A fault (or repair) to apply at a scheduled time; see [`Sim::schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Separate these hosts from the rest ([`Sim::partition`]).
    Partition(Vec<HostId>),
    /// End every partition ([`Sim::heal`]).
    Heal,
    /// Crash a host ([`Sim::crash`]).
    Crash(HostId),
    /// Restart a crashed host ([`Sim::restart`]).
    Restart(HostId),
    /// The first host disconnects the second ([`Sim::disconnect`]).
    Disconnect(HostId, HostId),
    /// The first host dials the second, naming its ID if the flag is set ([`Sim::connect`]).
    Connect(HostId, HostId, bool),
}

enum Item {
    Fault(Fault),
    Accept { stream: usize },
    Connected { stream: usize },
    Deliver { stream: usize, to: usize, data: Vec<u8> },
    WriteDone { stream: usize, side: usize },
    Close { stream: usize, to: usize },
    Timer { host: usize, epoch: u64 },
    Datagram { from: usize, to: usize, data: Vec<u8> },
    Traffic { host: usize },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Periodic traffic: each host sends a message of `size` bytes to a random
/// connected peer every `interval`.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    interval: Duration,
    size: usize,
}

/// A deterministic simulated network of devp2p nodes.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: SeededRng,
    hosts: Vec<Host>,
    streams: Vec<Stream>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    links: BTreeMap<(usize, usize), LinkConfig>,
    /// Partition group of each host (hosts in different groups cannot talk).
    groups: BTreeMap<usize, u32>,
    ledger: Ledger,
    trace: Trace,
    stats: Stats,
    traffic: Option<Traffic>,
    buf: Vec<u8>,
    by_id: BTreeMap<NodeId, usize>,
}

const TR_DELIVER: u64 = 1;
const TR_CLOSE: u64 = 2;
const TR_EVENT: u64 = 3;
const TR_TIMER: u64 = 4;
const TR_DATAGRAM: u64 = 5;
const TR_CONNECT: u64 = 6;
const TR_FAULT: u64 = 7;

/// 198.18.0.0, the first address of the simulated network.
const SIM_NET: u32 = 0xc612_0000;

impl Sim {
    /// An empty network.
    pub fn new(config: SimConfig) -> Self {
        let rng = SeededRng::from_u64(config.seed);
        Sim {
            config,
            now: Instant::ZERO,
            rng,
            hosts: Vec::new(),
            streams: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            links: BTreeMap::new(),
            groups: BTreeMap::new(),
            ledger: Ledger::default(),
            trace: Trace::default(),
            stats: Stats::default(),
            traffic: None,
            buf: Vec::new(),
            by_id: BTreeMap::new(),
        }
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a host with a fresh identity.
    pub fn add_host(&mut self) -> HostId {
        let key = Keypair::generate(&mut self.rng);
        let mut h = Host {
            key,
            node: None,
            epoch: 0,
            conns: BTreeMap::new(),
            peer_conn: BTreeMap::new(),
            saved_tickets: Vec::new(),
            timer: None,
            events: Vec::new(),
            datagrams: Vec::new(),
            stalled: BTreeSet::new(),
            unconsumed: Vec::new(),
        };
        h.node = Some(self.make_node(&h.key));
        self.by_id.insert(h.key.node_id(), self.hosts.len());
        self.hosts.push(h);
        HostId(self.hosts.len() - 1)
    }

    fn make_node(&mut self, key: &Keypair) -> Node {
        let rng = self.rng.fork();
        // The simulated application says when it consumed a message.
        let mut config = self.config.node.clone();
        config.flow.manual_consume = true;
        Node::new(config, key.clone(), Box::new(rng), self.now).expect("valid sim config")
    }

    /// The application of host `h` stops consuming messages of `protocol`
    /// (they are delivered, and held): flow control stops their senders.
    pub fn stall_consumer(&mut self, h: HostId, protocol: u16) {
        self.hosts[h.0].stalled.insert(protocol);
    }

    /// The application of host `h` consumes `protocol`'s messages again,
    /// starting with those it held.
    pub fn resume_consumer(&mut self, h: HostId, protocol: u16) {
        let host = &mut self.hosts[h.0];
        host.stalled.remove(&protocol);
        let (held, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut host.unconsumed).into_iter().partition(|m| m.1 == ProtocolId(protocol));
        host.unconsumed = keep;
        if let Some(node) = host.node.as_mut() {
            for (connection, p, len) in held {
                node.consume(connection, p, 1, len as u64);
            }
        }
        self.flush(h.0);
    }

    /// Messages host `h` holds unconsumed on stalled protocols.
    pub fn unconsumed(&self, h: HostId) -> usize {
        self.hosts[h.0].unconsumed.len()
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// The node ID of a host.
    pub fn node_id(&self, h: HostId) -> NodeId {
        self.hosts[h.0].key.node_id()
    }

    /// The core node of a host (`None` while crashed).
    pub fn node(&self, h: HostId) -> Option<&Node> {
        self.hosts[h.0].node.as_ref()
    }

    /// Events recorded for a host (with `record_events`).
    pub fn events(&self, h: HostId) -> &[Event] {
        &self.hosts[h.0].events
    }

    /// Removes and returns the datagrams a host received.
    pub fn take_datagrams(&mut self, h: HostId) -> Vec<(HostId, Vec<u8>)> {
        std::mem::take(&mut self.hosts[h.0].datagrams)
    }

    /// The message ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether invariants are checked after every step.
    pub fn set_check_every_step(&mut self, on: bool) {
        self.config.check_every_step = on;
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Digest of the whole event trace so far: equal for equal seeds.
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// True if `a` has `b` as a connected peer.
    pub fn is_connected(&self, a: HostId, b: HostId) -> bool {
        let id = self.node_id(b);
        self.hosts[a.0].node.as_ref().is_some_and(|n| n.is_connected(&id))
    }

    /// Connected peers of a host.
    pub fn peer_count(&self, h: HostId) -> usize {
        self.hosts[h.0].node.as_ref().map_or(0, |n| n.peers().count())
    }

    /// Sets the link between `a` and `b`.
    pub fn set_link(&mut self, a: HostId, b: HostId, link: LinkConfig) {
        self.links.insert((a.0.min(b.0), a.0.max(b.0)), link);
    }

    fn link(&self, a: usize, b: usize) -> &LinkConfig {
        self.links.get(&(a.min(b), a.max(b))).unwrap_or(&self.config.link)
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.groups.get(&a).copied().unwrap_or(0) != self.groups.get(&b).copied().unwrap_or(0)
    }

    fn schedule_item(&mut self, at: Instant, item: Item) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: at.max(self.now), seq: self.seq, item }));
    }

    fn delay(&mut self, a: usize, b: usize) -> Duration {
        let l = self.link(a, b).clone();
        let j = l.jitter.as_nanos() as u64;
        let extra = if j == 0 { 0 } else { self.rng.next_u64() % (j + 1) };
        l.latency + Duration::from_nanos(extra)
    }

    // ----- scenario commands -----

    /// The address of host `h`: one per host in 198.18.0.0/15 (RFC 2544's
    /// benchmarking range), port 30303.
    pub fn addr(&self, h: HostId) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(SIM_NET + 1 + h.0 as u32), 30303))
    }

    /// The host at `addr`, if any.
    fn host_at(&self, addr: SocketAddr) -> Option<usize> {
        let SocketAddr::V4(v4) = addr else { return None };
        let i = u32::from(*v4.ip()).checked_sub(SIM_NET + 1)? as usize;
        (i < self.hosts.len() && v4.port() == 30303).then_some(i)
    }

    /// `a` dials `b`; with `with_id` the dial names `b`'s node ID
    /// (introduced or resumed path), else it is by address only (full
    /// path). The core decides: it asks for the transport through
    /// `poll_dial`, which the simulated network opens.
    pub fn connect(&mut self, a: HostId, b: HostId, with_id: bool) {
        let addr = PeerAddr { id: with_id.then(|| self.node_id(b)), addr: self.addr(b) };
        let now = self.now;
        let dialled = self.hosts[a.0].node.as_mut().map(|n| n.dial(addr, now));
        if !matches!(dialled, Some(Ok(_))) {
            self.stats.failed_connections += 1;
        }
        self.flush(a.0);
    }

    /// `a` dials the address of host `at` naming the node ID `id` (which
    /// need not be the ID of the host there: an introduction that is stale
    /// or forged).
    pub fn dial_as(&mut self, a: HostId, at: HostId, id: devp2p_core::NodeId) {
        let addr = PeerAddr::with_id(id, self.addr(at));
        let now = self.now;
        let dialled = self.hosts[a.0].node.as_mut().map(|n| n.dial(addr, now));
        if !matches!(dialled, Some(Ok(_))) {
            self.stats.failed_connections += 1;
        }
        self.flush(a.0);
    }

    /// Opens the transport of a dial from host `h`: a stream to the host at
    /// the dialled address, accepted after one latency and connected after
    /// two. A dial to an address with no host fails after one latency.
    fn open_stream(&mut self, h: usize, dial: Dial) {
        let target = self.host_at(dial.addr);
        let b = target.unwrap_or(h);
        let end = |host: usize, epoch, conn| End { host, epoch, conn, closed: false };
        self.streams.push(Stream {
            ends: [end(h, self.hosts[h].epoch, Some(dial.connection)), end(b, self.hosts[b].epoch, None)],
            dirs: [Direction::default(), Direction::default()],
            in_flight: 1,
            broken: false,
            refused: target.is_none(),
            finished: false,
        });
        let s = self.streams.len() - 1;
        self.hosts[h].conns.insert(dial.connection, s);
        let d = self.delay(h, b);
        if target.is_some() {
            self.streams[s].in_flight += 1;
            self.schedule_item(self.now + d, Item::Accept { stream: s });
            self.schedule_item(self.now + d * 2, Item::Connected { stream: s });
        } else {
            self.streams[s].ends[1].closed = true;
            self.schedule_item(self.now + d, Item::Connected { stream: s });
        }
        self.trace.record(&[self.now.as_nanos(), TR_CONNECT, h as u64, b as u64]);
    }

    /// Sends a generated message of `len` body bytes from `a` to `b` on
    /// `protocol` (by index) with `msg_type`. Returns whether the core accepted it.
    pub fn send(&mut self, a: HostId, b: HostId, protocol: u16, msg_type: u32, len: usize) -> bool {
        let to = self.node_id(b);
        let fill = self.rng.next_u32() as u8;
        let (payload, seq) = self.ledger.make(a.0 as u64, b.0 as u64, protocol, len, fill);
        let host = &mut self.hosts[a.0];
        let Some(node) = host.node.as_mut() else { return false };
        let Some(stream) = host.peer_conn.get(&to).and_then(|c| host.conns.get(c)).copied() else {
            return false;
        };
        if node.send(&to, ProtocolId(protocol), msg_type, payload).is_err() {
            return false;
        }
        self.ledger.sent(a.0 as u64, b.0 as u64, seq, stream as u64, self.now.as_nanos());
        self.flush(a.0);
        true
    }

    /// `a` disconnects `b`.
    pub fn disconnect(&mut self, a: HostId, b: HostId) {
        let id = self.node_id(b);
        let now = self.now;
        if let Some(n) = self.hosts[a.0].node.as_mut() {
            n.disconnect(&id, devp2p_core::DisconnectReason::Requested, now);
        }
        self.flush(a.0);
    }

    /// Sends a datagram from `a` to `b`.
    pub fn send_datagram(&mut self, a: HostId, b: HostId, data: Vec<u8>) {
        let l = self.link(a.0, b.0).clone();
        let lost =
            self.partitioned(a.0, b.0) || (self.rng.next_u32() as f64 / u32::MAX as f64) < l.datagram_loss;
        if lost {
            self.stats.datagrams_lost += 1;
            return;
        }
        let mut d = self.delay(a.0, b.0);
        if (self.rng.next_u32() as f64 / u32::MAX as f64) < l.datagram_reorder {
            d += l.latency;
        }
        self.schedule_item(self.now + d, Item::Datagram { from: a.0, to: b.0, data });
    }

    /// Separates `side` from every other host until [`heal`](Self::heal).
    /// Stream bytes between the sides are held (a reliable transport
    /// retransmits them after the heal), datagrams are lost.
    pub fn partition(&mut self, side: &[HostId]) {
        for h in side {
            self.groups.insert(h.0, 1);
        }
    }

    /// Ends every partition; held stream bytes flow again, in order.
    pub fn heal(&mut self) {
        self.groups.clear();
        for s in 0..self.streams.len() {
            for side in 0..2 {
                let held = std::mem::take(&mut self.streams[s].dirs[side].held);
                for p in held {
                    // Held items already count as in flight.
                    self.streams[s].in_flight -= 1;
                    match p {
                        Some(data) => self.transmit(s, side, data),
                        None => self.send_close(s, side),
                    }
                }
            }
        }
    }

    /// Crashes a host: its connections are reset, its queued messages lost.
    /// With `persist_tickets` its resumption tickets survive.
    pub fn crash(&mut self, h: HostId) {
        let host = &mut self.hosts[h.0];
        let Some(node) = host.node.take() else { return };
        host.unconsumed.clear();
        host.saved_tickets = if self.config.persist_tickets { node.export_tickets() } else { Vec::new() };
        let old_epoch = host.epoch;
        host.epoch += 1;
        host.timer = None;
        host.peer_conn.clear();
        let conns: Vec<usize> = std::mem::take(&mut host.conns).into_values().collect();
        for s in conns {
            let e0 = self.streams[s].ends[0];
            let side = if e0.host == h.0 && e0.epoch == old_epoch { 0 } else { 1 };
            self.streams[s].ends[side].closed = true;
            self.streams[s].broken = true;
            if !self.streams[s].ends[1 - side].closed {
                self.send_close(s, side);
            }
            self.maybe_finish(s);
        }
    }

    /// Restarts a crashed host with the same identity (and its persisted tickets).
    pub fn restart(&mut self, h: HostId) {
        if self.hosts[h.0].node.is_some() {
            return;
        }
        let key = self.hosts[h.0].key.clone();
        let mut node = self.make_node(&key);
        node.import_tickets(std::mem::take(&mut self.hosts[h.0].saved_tickets));
        self.hosts[h.0].node = Some(node);
    }

    /// Every host sends a `size`-byte message to a random connected peer
    /// every `interval`, starting at a random phase.
    pub fn start_traffic(&mut self, interval: Duration, size: usize) {
        self.traffic = Some(Traffic { interval, size });
        for h in 0..self.hosts.len() {
            let phase = Duration::from_nanos(self.rng.next_u64() % interval.as_nanos().max(1) as u64);
            self.schedule_item(self.now + phase, Item::Traffic { host: h });
        }
    }

    /// Each host dials `dials` distinct random others, naming their IDs
    /// with probability one half.
    pub fn connect_random(&mut self, dials: usize) {
        let n = self.hosts.len();
        for a in 0..n {
            let mut chosen = Vec::new();
            while chosen.len() < dials.min(n.saturating_sub(1)) {
                let b = (self.rng.next_u64() % n as u64) as usize;
                if b != a && !chosen.contains(&b) {
                    chosen.push(b);
                }
            }
            for b in chosen {
                let with_id = self.rng.next_u32().is_multiple_of(2);
                self.connect(HostId(a), HostId(b), with_id);
            }
        }
    }

    /// Applies `fault` when virtual time reaches `now + after`.
    pub fn schedule(&mut self, after: Duration, fault: Fault) {
        self.schedule_item(self.now + after, Item::Fault(fault));
    }

    fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Partition(side) => self.partition(&side),
            Fault::Heal => self.heal(),
            Fault::Crash(h) => self.crash(h),
            Fault::Restart(h) => self.restart(h),
            Fault::Disconnect(a, b) => self.disconnect(a, b),
            Fault::Connect(a, b, id) => self.connect(a, b, id),
        }
    }

    // ----- running -----

    /// Runs until virtual time `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= end) {
            self.step();
        }
        self.now = end;
    }

    /// Runs until nothing is scheduled before `limit` from now (timers of
    /// idle connections stay scheduled; use `run_for` to pass time).
    pub fn settle(&mut self, limit: Duration) {
        self.run_for(limit);
    }

    /// Processes the next scheduled item. Returns false if none.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(s)) = self.queue.pop() else { return false };
        self.now = s.at;
        self.stats.steps += 1;
        match s.item {
            Item::Fault(f) => {
                self.trace.record(&[self.now.as_nanos(), TR_FAULT]);
                self.apply(f);
            }
            Item::Accept { stream } => self.on_accept(stream),
            Item::Connected { stream } => self.on_connected(stream),
            Item::Deliver { stream, to, data } => self.on_deliver(stream, to, data),
            Item::WriteDone { stream, side } => {
                let e = self.streams[stream].ends[side];
                self.streams[stream].in_flight -= 1;
                if let (Some(c), true) = (e.conn, self.alive(e)) {
                    let now = self.now;
                    if let Some(n) = self.hosts[e.host].node.as_mut() {
                        n.handle_written(c, now);
                    }
                    self.flush(e.host);
                }
                self.maybe_finish(stream);
            }
            Item::Close { stream, to } => self.on_close(stream, to),
            Item::Timer { host, epoch } => {
                let h = &mut self.hosts[host];
                if h.epoch == epoch && h.timer.is_some_and(|t| t <= self.now) {
                    h.timer = None;
                    self.trace.record(&[self.now.as_nanos(), TR_TIMER, host as u64]);
                    let now = self.now;
                    if let Some(n) = h.node.as_mut() {
                        n.handle_timeout(now);
                    }
                    self.flush(host);
                }
            }
            Item::Datagram { from, to, data } => {
                self.trace.record(&[self.now.as_nanos(), TR_DATAGRAM, from as u64, to as u64]);
                self.trace.bytes(&data);
                let h = &mut self.hosts[to];
                if h.node.is_some() && h.datagrams.len() < 1024 {
                    h.datagrams.push((HostId(from), data));
                    self.stats.datagrams_delivered += 1;
                } else {
                    self.stats.datagrams_lost += 1;
                }
            }
            Item::Traffic { host } => self.on_traffic(host),
        }
        if self.config.check_every_step {
            if let Err(v) = self.check_invariants() {
                panic!("invariant broken at {:?} (seed {}): {v}", self.now, self.config.seed);
            }
        }
        true
    }

    fn alive(&self, e: End) -> bool {
        self.hosts[e.host].epoch == e.epoch && self.hosts[e.host].node.is_some() && !e.closed
    }

    fn on_accept(&mut self, s: usize) {
        self.streams[s].in_flight -= 1;
        let acceptor = self.streams[s].ends[1];
        let dialer = self.streams[s].ends[0].host;
        let now = self.now;
        let ok = self.alive(acceptor) && !self.partitioned(dialer, acceptor.host);
        let from = self.addr(HostId(dialer));
        let conn = if ok {
            self.hosts[acceptor.host].node.as_mut().and_then(|n| n.accept(from, now).ok())
        } else {
            None
        };
        match conn {
            Some(c) => {
                self.streams[s].ends[1].conn = Some(c);
                self.hosts[acceptor.host].conns.insert(c, s);
                self.flush(acceptor.host);
            }
            None => {
                self.streams[s].refused = true;
                self.streams[s].ends[1].closed = true;
            }
        }
    }

    fn on_connected(&mut self, s: usize) {
        self.streams[s].in_flight -= 1;
        let dialer = self.streams[s].ends[0];
        let Some(conn) = dialer.conn else { return };
        if !self.alive(dialer) {
            // The dialler crashed, or its core gave up on the dial (it was
            // in `poll_close`): the transport is closed at once.
            self.streams[s].ends[0].closed = true;
            if !self.streams[s].ends[1].closed {
                self.send_close(s, 0);
            }
            self.maybe_finish(s);
            return;
        }
        let now = self.now;
        let refused = self.streams[s].refused;
        let opened = self.hosts[dialer.host].node.as_mut().is_some_and(|n| {
            if refused {
                n.handle_dial_failed(conn, now);
                false
            } else {
                n.handle_connected(conn, now)
            }
        });
        if !opened {
            self.stats.failed_connections += 1;
            if !refused {
                self.hosts[dialer.host].conns.remove(&conn);
                self.streams[s].ends[0].closed = true;
                if !self.streams[s].ends[1].closed {
                    self.send_close(s, 0);
                }
            }
        }
        self.flush(dialer.host);
        self.maybe_finish(s);
    }

    fn on_deliver(&mut self, s: usize, to: usize, mut data: Vec<u8>) {
        self.streams[s].in_flight -= 1;
        let e = self.streams[s].ends[to];
        self.trace.record(&[self.now.as_nanos(), TR_DELIVER, s as u64, to as u64, data.len() as u64]);
        match (e.conn, self.alive(e)) {
            (Some(c), true) => {
                self.stats.stream_bytes += data.len() as u64;
                let now = self.now;
                if let Some(n) = self.hosts[e.host].node.as_mut() {
                    if n.is_closing(c) {
                        // A closing end ignores input: these bytes are lost
                        // with the transport, as a reset would lose them.
                        self.streams[s].broken = true;
                    }
                    n.handle_input(c, &mut data, now);
                }
                self.flush(e.host);
            }
            _ => self.streams[s].broken = true,
        }
        self.maybe_finish(s);
    }

    fn on_close(&mut self, s: usize, to: usize) {
        self.streams[s].in_flight -= 1;
        let e = self.streams[s].ends[to];
        self.trace.record(&[self.now.as_nanos(), TR_CLOSE, s as u64, to as u64]);
        if let (Some(c), true) = (e.conn, self.alive(e)) {
            let now = self.now;
            if let Some(n) = self.hosts[e.host].node.as_mut() {
                n.handle_close(c, now);
            }
            self.flush(e.host);
        } else if e.conn.is_none() && !e.closed {
            // The dialer's connect has not happened yet: it will be refused.
            self.streams[s].refused = true;
        }
        self.maybe_finish(s);
    }

    fn on_traffic(&mut self, host: usize) {
        let Some(t) = self.traffic else { return };
        if self.hosts[host].node.is_some() {
            let peers: Vec<NodeId> = self.hosts[host].peer_conn.keys().copied().collect();
            if !peers.is_empty() {
                let pick = peers[(self.rng.next_u64() % peers.len() as u64) as usize];
                if let Some(&to) = self.by_id.get(&pick) {
                    let ty = self.rng.next_u32() % 4;
                    self.send(HostId(host), HostId(to), 0, ty, t.size);
                }
            }
        }
        self.schedule_item(self.now + t.interval, Item::Traffic { host });
    }

    /// Sends bytes from `side` of stream `s`, in order, after the link's
    /// serialisation and propagation delay.
    fn transmit(&mut self, s: usize, side: usize, data: Vec<u8>) {
        let (a, b) = (self.streams[s].ends[side].host, self.streams[s].ends[1 - side].host);
        self.streams[s].in_flight += 1;
        if self.partitioned(a, b) {
            self.streams[s].dirs[side].held.push(Some(data));
            return;
        }
        let bw = self.link(a, b).bandwidth;
        let d = self.delay(a, b);
        let now = self.now;
        let dir = &mut self.streams[s].dirs[side];
        let start = dir.free_at.max(now);
        let tx = bw
            .map_or(Duration::ZERO, |bw| Duration::from_nanos(data.len() as u64 * 1_000_000_000 / bw.max(1)));
        dir.free_at = start + tx;
        let arrive = (start + tx + d).max(dir.last_arrival);
        dir.last_arrival = arrive;
        let write_done = dir.free_at;
        self.schedule_item(arrive, Item::Deliver { stream: s, to: 1 - side, data });
        if bw.is_some() {
            self.streams[s].in_flight += 1;
            self.schedule_item(write_done, Item::WriteDone { stream: s, side });
        }
    }

    fn send_close(&mut self, s: usize, side: usize) {
        let (a, b) = (self.streams[s].ends[side].host, self.streams[s].ends[1 - side].host);
        self.streams[s].in_flight += 1;
        if self.partitioned(a, b) {
            self.streams[s].dirs[side].held.push(None);
            return;
        }
        let d = self.delay(a, b);
        let dir = &mut self.streams[s].dirs[side];
        let arrive = (self.now + d).max(dir.last_arrival);
        dir.last_arrival = arrive;
        self.schedule_item(arrive, Item::Close { stream: s, to: 1 - side });
    }

    fn maybe_finish(&mut self, s: usize) {
        let st = &self.streams[s];
        if !st.finished && st.in_flight == 0 && st.ends[0].closed && st.ends[1].closed {
            self.streams[s].finished = true;
            let broken = self.streams[s].broken;
            self.ledger.stream_ended(s as u64, broken);
        }
    }

    /// Drains a host's outputs into the network and its events into the ledger.
    fn flush(&mut self, h: usize) {
        let now = self.now;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let Some(node) = self.hosts[h].node.as_mut() else { return };
            let Some(c) = node.poll_transmit(now, &mut buf) else {
                self.buf = buf;
                break;
            };
            let Some(&s) = self.hosts[h].conns.get(&c) else {
                if let Some(node) = self.hosts[h].node.as_mut() {
                    node.handle_written(c, now);
                }
                self.buf = buf;
                continue;
            };
            let side =
                usize::from(self.streams[s].ends[1].host == h && self.streams[s].ends[1].conn == Some(c));
            let bandwidth = {
                let (a, b) = (self.streams[s].ends[0].host, self.streams[s].ends[1].host);
                self.link(a, b).bandwidth
            };
            if self.streams[s].ends[1 - side].closed {
                // The other end is gone: the bytes are dropped (a reset).
                self.streams[s].broken = true;
                self.buf = buf;
            } else {
                self.transmit(s, side, buf);
            }
            if bandwidth.is_none() || self.streams[s].ends[1 - side].closed {
                if let Some(node) = self.hosts[h].node.as_mut() {
                    node.handle_written(c, now);
                }
            }
        }
        while let Some(d) = self.hosts[h].node.as_mut().and_then(|n| n.poll_dial()) {
            self.open_stream(h, d);
        }
        while let Some(c) = self.hosts[h].node.as_mut().and_then(|n| n.poll_close()) {
            if let Some(s) = self.hosts[h].conns.remove(&c) {
                let side =
                    usize::from(self.streams[s].ends[1].host == h && self.streams[s].ends[1].conn == Some(c));
                self.streams[s].ends[side].closed = true;
                if !self.streams[s].ends[1 - side].closed {
                    self.send_close(s, side);
                }
                self.maybe_finish(s);
            }
        }
        while let Some(e) = self.hosts[h].node.as_mut().and_then(|n| n.poll_event()) {
            self.on_event(h, &e);
            if self.config.record_events {
                self.hosts[h].events.push(e);
            }
        }
        let t = self.hosts[h].node.as_ref().and_then(|n| n.poll_timeout());
        if let Some(t) = t {
            if self.hosts[h].timer != Some(t) {
                self.hosts[h].timer = Some(t);
                let epoch = self.hosts[h].epoch;
                self.schedule_item(t, Item::Timer { host: h, epoch });
            }
        }
        if let Some(n) = self.hosts[h].node.as_ref() {
            self.stats.peak_node_buffer = self.stats.peak_node_buffer.max(n.buffered_bytes());
        }
    }

    /// Host `h`'s application takes messages that arrived on `from`.
    fn deliver(&mut self, h: usize, from: (ConnectionId, ProtocolId), payloads: &[&[u8]]) {
        let (connection, protocol) = from;
        for payload in payloads {
            self.ledger.delivered(h as u64, payload, self.now.as_nanos());
            self.trace.bytes(payload);
        }
        let host = &mut self.hosts[h];
        if host.stalled.contains(&protocol.0) {
            host.unconsumed.extend(payloads.iter().map(|p| (connection, protocol, p.len())));
        } else if let Some(node) = host.node.as_mut() {
            let bytes = payloads.iter().map(|p| p.len() as u64).sum();
            node.consume(connection, protocol, payloads.len() as u64, bytes);
        }
    }

    fn on_event(&mut self, h: usize, e: &Event) {
        let kind = match e {
            Event::PeerConnected { peer, connection, direction, path, .. } => {
                self.hosts[h].peer_conn.insert(*peer, *connection);
                if *direction == devp2p_core::Direction::Outbound {
                    let name = match path {
                        HandshakePath::Full => "full",
                        HandshakePath::Introduced => "introduced",
                        HandshakePath::Resumed => "resumed",
                    };
                    *self.stats.handshakes.entry(name.to_string()).or_default() += 1;
                }
                1
            }
            Event::Message { connection, protocol, payload, .. } => {
                self.deliver(h, (*connection, *protocol), &[payload]);
                2
            }
            Event::Messages(b) => {
                let payloads: Vec<&[u8]> = b.iter().map(|(_, p)| p).collect();
                self.deliver(h, (b.connection, b.protocol), &payloads);
                2
            }
            Event::PeerDisconnected { peer, unsent, .. } => {
                self.hosts[h].peer_conn.remove(peer);
                for m in unsent {
                    self.ledger.returned(h as u64, &m.payload);
                }
                3
            }
            Event::ConnectionFailed { .. } => {
                self.stats.failed_connections += 1;
                4
            }
            Event::HandshakeDowngraded { .. } => {
                self.stats.downgrades += 1;
                5
            }
            _ => 6,
        };
        self.trace.record(&[self.now.as_nanos(), TR_EVENT, h as u64, kind]);
    }

    /// Checks the invariants: the ledger (exactly once, in order,
    /// uncorrupted; delivered, handed back or lost with a broken transport)
    /// and every node's memory against its configured bounds.
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(v) = self.ledger.violations().first() {
            return Err(v.to_string());
        }
        let c = &self.config.node;
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(n) = &h.node {
                let conns = n.connection_count();
                let bound =
                    c.limits.max_queued_total.min(conns * c.limits.max_queued_per_peer + conns * (64 << 10))
                        + conns
                            * (c.limits.max_reassembly_per_peer
                                + c.limits.max_message_size as usize
                                + 3 * 65_537);
                if n.buffered_bytes() > bound {
                    return Err(format!(
                        "host {i} holds {} bytes, over its bound {bound}",
                        n.buffered_bytes()
                    ));
                }
                if conns > c.limits.max_connections {
                    return Err(format!("host {i} has {conns} connections"));
                }
                // Flow control: what a peer may leave unconsumed per protocol.
                let window =
                    c.flow.receive_window.max(c.limits.max_message_size + devp2p_core::MESSAGE_OVERHEAD);
                for m in n.metrics() {
                    if let Some(p) = m.protocols.iter().find(|p| p.unconsumed > window) {
                        return Err(format!(
                            "host {i} holds {} unconsumed bytes of {:?} from one peer, over {window}",
                            p.unconsumed, p.protocol
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
