//! A deterministic two-node harness: two [`Node`]s joined by in-memory
//! links, a virtual clock, per-link latency, and hooks to drop, tamper with,
//! or inject bytes. No I/O; the same steps give the same run.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use crate::{Config, ConnectionId, Event, Instant, Keypair, Node, NodeId, Protocol, SeededRng};

/// Which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// One transport between the nodes: a connection id on each side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) a: ConnectionId,
    pub(crate) b: ConnectionId,
    pub(crate) open: bool,
}

/// Bytes in flight.
struct Packet {
    at: Instant,
    to: Side,
    link: usize,
    data: Vec<u8>,
}

/// A hook that sees every buffer sent (side, link, bytes) and may change it.
type Tamper = Box<dyn FnMut(Side, usize, &mut Vec<u8>)>;

pub(crate) struct Pair {
    pub(crate) a: Node,
    pub(crate) b: Node,
    pub(crate) now: Instant,
    pub(crate) links: Vec<Link>,
    in_flight: VecDeque<Packet>,
    pub(crate) events_a: Vec<Event>,
    /// How many [`Event::Messages`] either side has polled (recorded as
    /// their messages).
    pub(crate) batches: usize,
    pub(crate) events_b: Vec<Event>,
    /// When each event was polled.
    pub(crate) times_a: Vec<Instant>,
    pub(crate) times_b: Vec<Instant>,
    pub(crate) latency: Duration,
    /// Stop delivering bytes (a partition) while true.
    pub(crate) partitioned: bool,
    /// Node B does not read (its writes are fine) while true.
    pub(crate) b_stalled: bool,
    pub(crate) tamper: Option<Tamper>,
    /// Bytes a transport buffers towards a node that does not read before
    /// the writer blocks (like a socket send buffer).
    pub(crate) pipe_capacity: usize,
    /// Writes not yet acknowledged because the pipe was full.
    blocked_writes: Vec<(Side, ConnectionId)>,
    /// Every buffer sent, per side, for inspection.
    pub(crate) wire_a: Vec<Vec<u8>>,
    pub(crate) wire_b: Vec<Vec<u8>>,
}

pub(crate) fn protocols() -> Vec<Protocol> {
    alloc::vec![
        Protocol::new("chat", 1, 4),
        Protocol::new("blocks", 2, 16),
        Protocol::new("only-local", 1, 1)
    ]
}

pub(crate) fn node(seed: u64, config: Config) -> Node {
    let mut rng = SeededRng::from_u64(seed);
    let key = Keypair::generate(&mut rng);
    Node::new(config, key, Box::new(rng.fork()), Instant::ZERO).expect("valid config")
}

impl Pair {
    pub(crate) fn new() -> Self {
        Self::with_configs(Config::with_protocols(protocols()), Config::with_protocols(protocols()))
    }

    pub(crate) fn with_configs(ca: Config, cb: Config) -> Self {
        Pair::from_nodes(node(1, ca), node(2, cb))
    }

    pub(crate) fn from_nodes(a: Node, b: Node) -> Self {
        Pair {
            a,
            b,
            now: Instant::ZERO,
            links: Vec::new(),
            in_flight: VecDeque::new(),
            events_a: Vec::new(),
            batches: 0,
            events_b: Vec::new(),
            times_a: Vec::new(),
            times_b: Vec::new(),
            latency: Duration::from_millis(5),
            partitioned: false,
            b_stalled: false,
            tamper: None,
            pipe_capacity: 256 << 10,
            blocked_writes: Vec::new(),
            wire_a: Vec::new(),
            wire_b: Vec::new(),
        }
    }

    pub(crate) fn node(&mut self, s: Side) -> &mut Node {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    pub(crate) fn id(&self, s: Side) -> NodeId {
        match s {
            Side::A => self.a.node_id(),
            Side::B => self.b.node_id(),
        }
    }

    /// A dials B (naming `target`, if any). Returns the link index.
    pub(crate) fn connect(&mut self, target: Option<NodeId>) -> usize {
        let a = self.a.dial_opened(target, self.now).expect("connect");
        let b = self.b.accept(crate::io::TEST_ADDR, self.now).expect("accept");
        self.links.push(Link { a, b, open: true });
        self.links.len() - 1
    }

    /// B dials A.
    pub(crate) fn connect_ba(&mut self, target: Option<NodeId>) -> usize {
        let b = self.b.dial_opened(target, self.now).expect("connect");
        let a = self.a.accept(crate::io::TEST_ADDR, self.now).expect("accept");
        self.links.push(Link { a, b, open: true });
        self.links.len() - 1
    }

    fn link_of(&self, s: Side, c: ConnectionId) -> Option<usize> {
        self.links.iter().position(|l| match s {
            Side::A => l.a == c,
            Side::B => l.b == c,
        })
    }

    fn conn_on(&self, s: Side, link: usize) -> ConnectionId {
        match s {
            Side::A => self.links[link].a,
            Side::B => self.links[link].b,
        }
    }

    /// Injects raw bytes into `to`'s end of `link`.
    pub(crate) fn inject(&mut self, to: Side, link: usize, mut data: Vec<u8>) {
        let c = self.conn_on(to, link);
        let now = self.now;
        self.node(to).handle_input(c, &mut data, now);
    }

    /// Polls outputs of both nodes once. Returns true if anything happened.
    fn pump(&mut self) -> bool {
        let mut progress = false;
        for s in [Side::A, Side::B] {
            let now = self.now;
            loop {
                let mut buf = Vec::new();
                let Some(c) = self.node(s).poll_transmit(now, &mut buf) else {
                    break;
                };
                progress = true;
                let Some(link) = self.link_of(s, c) else {
                    self.node(s).handle_written(c, now);
                    continue;
                };
                let pending: usize =
                    self.in_flight.iter().filter(|p| p.to == s.other()).map(|p| p.data.len()).sum();
                if s == Side::A && self.b_stalled && pending + buf.len() > self.pipe_capacity {
                    self.blocked_writes.push((s, c));
                } else {
                    self.node(s).handle_written(c, now);
                }
                if let Some(t) = &mut self.tamper {
                    t(s, link, &mut buf);
                }
                match s {
                    Side::A => self.wire_a.push(buf.clone()),
                    Side::B => self.wire_b.push(buf.clone()),
                }
                if self.links[link].open && !self.partitioned {
                    self.in_flight.push_back(Packet {
                        at: now + self.latency,
                        to: s.other(),
                        link,
                        data: buf,
                    });
                }
            }
            while let Some(c) = self.node(s).poll_close() {
                progress = true;
                if let Some(link) = self.link_of(s, c) {
                    if self.links[link].open {
                        self.links[link].open = false;
                        // The other side sees the transport end after the
                        // bytes already in flight.
                        self.in_flight.push_back(Packet {
                            at: now + self.latency,
                            to: s.other(),
                            link,
                            data: Vec::new(),
                        });
                    }
                }
            }
            while let Some(e) = self.node(s).poll_event() {
                progress = true;
                // A batch is recorded as its messages (`batches` counts it).
                let (events, times) = match s {
                    Side::A => (&mut self.events_a, &mut self.times_a),
                    Side::B => (&mut self.events_b, &mut self.times_b),
                };
                match e {
                    Event::Messages(batch) => {
                        self.batches += 1;
                        for m in batch.into_messages() {
                            events.push(m.into());
                            times.push(now);
                        }
                    }
                    e => {
                        events.push(e);
                        times.push(now);
                    }
                }
            }
        }
        progress
    }

    /// Delivers everything due now. Returns true if anything was delivered.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].at > self.now || (self.b_stalled && self.in_flight[i].to == Side::B) {
                i += 1;
                continue;
            }
            let p = self.in_flight.remove(i).expect("index checked");
            any = true;
            if p.to == Side::B {
                let now = self.now;
                for (s, c) in core::mem::take(&mut self.blocked_writes) {
                    self.node(s).handle_written(c, now);
                }
            }
            let c = self.conn_on(p.to, p.link);
            let now = self.now;
            if p.data.is_empty() {
                self.node(p.to).handle_close(c, now);
            } else {
                let mut d = p.data;
                self.node(p.to).handle_input(c, &mut d, now);
            }
        }
        any
    }

    /// Runs until nothing is in flight and no output is pending, advancing
    /// the clock to deliveries but not to timers.
    pub(crate) fn drive(&mut self) {
        for _ in 0..100_000 {
            let p = self.pump();
            let d = self.deliver();
            if p || d {
                continue;
            }
            let next =
                self.in_flight.iter().filter(|p| !(self.b_stalled && p.to == Side::B)).map(|p| p.at).min();
            match next {
                Some(t) => self.now = t,
                None => return,
            }
        }
        panic!("drive did not settle");
    }

    /// Advances the clock by `d`, firing timers and delivering as it goes.
    pub(crate) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drive();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.a.handle_timeout(now);
                    self.b.handle_timeout(now);
                }
                _ => {
                    self.now = end;
                    self.drive();
                    return;
                }
            }
        }
    }

    /// Removes and returns the events of side `s`.
    pub(crate) fn take_events(&mut self, s: Side) -> Vec<Event> {
        match s {
            Side::A => {
                self.times_a.clear();
                core::mem::take(&mut self.events_a)
            }
            Side::B => {
                self.times_b.clear();
                core::mem::take(&mut self.events_b)
            }
        }
    }
}
