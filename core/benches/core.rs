//! Core benchmarks, each printed as one JSON line beside the raw figure of
//! the primitive that bounds it, measured in the same run:
//!
//! * handshakes per second for each path (both sides in this thread)
//!   against the bound set by their X25519 operations;
//! * messages of 64 B, 1 KiB and 64 KiB through two in-memory nodes
//!   against raw ChaCha20-Poly1305 seal + open of the same size.
//!
//! Run with `cargo bench -p devp2p-core --bench core`. Each figure is the
//! median of 11 samples of about 150 ms after a warm-up.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use devp2p_core::{
    Bytes, Config, ConnectionId, DisconnectReason, Event, HandshakePath, Instant, Keypair, Node, NodeId,
    Protocol, ProtocolId, SeededRng,
};
use x25519_dalek::{PublicKey, StaticSecret};

const SAMPLES: usize = 11;
const SAMPLE: Duration = Duration::from_millis(150);
const WARMUP: Duration = Duration::from_millis(300);

/// Median nanoseconds per operation; `f` performs some operations and returns how many.
fn measure(mut f: impl FnMut() -> u64) -> f64 {
    let t = StdInstant::now();
    let mut ops = 0u64;
    while t.elapsed() < WARMUP {
        ops += f();
    }
    let per_op = t.elapsed().as_nanos() as f64 / ops.max(1) as f64;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let target = (SAMPLE.as_nanos() as f64 / per_op).max(1.0) as u64;
        let t = StdInstant::now();
        let mut done = 0u64;
        while done < target {
            done += f();
        }
        samples.push(t.elapsed().as_nanos() as f64 / done as f64);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    samples[SAMPLES / 2]
}

fn node(seed: u64, config: Config) -> Node {
    let mut rng = SeededRng::from_u64(seed);
    let key = Keypair::generate(&mut rng);
    Node::new(config, key, Box::new(rng.fork()), Instant::ZERO).expect("config")
}

fn config() -> Config {
    let mut c = Config::with_protocols(vec![Protocol::new("bench", 1, 4)]);
    c.max_queued_per_peer = 64 << 20;
    c.max_queued_total = 64 << 20;
    c.max_transmit_size = std::env::var("TX").map(|v| v.parse().expect("TX")).unwrap_or(256 << 10);
    if let Ok(r) = std::env::var("RECORD") {
        c.max_record_size = r.parse().expect("RECORD");
    }
    c
}

/// Two nodes and the links between them.
struct Pair {
    a: Node,
    b: Node,
    a_to_b: BTreeMap<ConnectionId, ConnectionId>,
    b_to_a: BTreeMap<ConnectionId, ConnectionId>,
    buf: Vec<u8>,
    now: Instant,
}

impl Pair {
    fn new() -> Self {
        Pair {
            a: node(1, config()),
            b: node(2, config()),
            a_to_b: BTreeMap::new(),
            b_to_a: BTreeMap::new(),
            buf: Vec::with_capacity(2 << 20),
            now: Instant::ZERO,
        }
    }

    fn connect(&mut self, target: Option<NodeId>) -> (ConnectionId, ConnectionId) {
        let ca = self.a.connect(target, self.now).expect("connect");
        let cb = self.b.accept(self.now).expect("accept");
        self.a_to_b.insert(ca, cb);
        self.b_to_a.insert(cb, ca);
        (ca, cb)
    }

    /// Moves bytes both ways until neither side has anything to send;
    /// returns the number of messages B received.
    fn pump(&mut self) -> u64 {
        let mut received = 0;
        loop {
            let mut moved = false;
            while let Some(c) = self.a.poll_transmit(self.now, &mut self.buf) {
                self.a.handle_written(c, self.now);
                if let Some(&cb) = self.a_to_b.get(&c) {
                    self.b.handle_input(cb, &mut self.buf, self.now);
                }
                self.buf.clear();
                moved = true;
            }
            while let Some(e) = self.b.poll_event() {
                if matches!(e, Event::Message { .. }) {
                    received += 1;
                }
            }
            while let Some(c) = self.b.poll_transmit(self.now, &mut self.buf) {
                self.b.handle_written(c, self.now);
                if let Some(&ca) = self.b_to_a.get(&c) {
                    self.a.handle_input(ca, &mut self.buf, self.now);
                }
                self.buf.clear();
                moved = true;
            }
            for (n, links) in [(&mut self.a, &mut self.a_to_b), (&mut self.b, &mut self.b_to_a)] {
                while let Some(c) = n.poll_close() {
                    links.remove(&c);
                }
            }
            while self.a.poll_event().is_some() {}
            if !moved {
                return received;
            }
        }
    }

    /// One complete handshake of the given kind, then the connection is
    /// closed again; returns the path the handshake took.
    fn handshake(&mut self, target: Option<NodeId>) -> HandshakePath {
        let (ca, _) = self.connect(target);
        let mut path = None;
        loop {
            let mut moved = false;
            while let Some(c) = self.a.poll_transmit(self.now, &mut self.buf) {
                self.a.handle_written(c, self.now);
                if let Some(&cb) = self.a_to_b.get(&c) {
                    self.b.handle_input(cb, &mut self.buf, self.now);
                }
                self.buf.clear();
                moved = true;
            }
            while let Some(c) = self.b.poll_transmit(self.now, &mut self.buf) {
                self.b.handle_written(c, self.now);
                if let Some(&ca2) = self.b_to_a.get(&c) {
                    self.a.handle_input(ca2, &mut self.buf, self.now);
                }
                self.buf.clear();
                moved = true;
            }
            while let Some(e) = self.a.poll_event() {
                if let Event::PeerConnected { path: p, .. } = e {
                    path = Some(p);
                }
            }
            while self.b.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        self.a.close_connection(ca, DisconnectReason::Requested, self.now);
        self.pump();
        path.expect("handshake completed")
    }
}

fn x25519_bounds() -> (f64, f64) {
    let mut rng = SeededRng::from_u64(9);
    let a = StaticSecret::random_from_rng(&mut rng);
    let b = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let dh = measure(|| {
        black_box(a.diffie_hellman(black_box(&b)));
        1
    });
    let mut seed = [7u8; 32];
    let keygen = measure(|| {
        seed[0] = seed[0].wrapping_add(1);
        black_box(PublicKey::from(&StaticSecret::from(black_box(seed))));
        1
    });
    (dh, keygen)
}

fn raw_seal_open(size: usize) -> f64 {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[3u8; 32]));
    let nonce = Nonce::from_slice(&[0u8; 12]);
    let mut buf = vec![0x5au8; size];
    measure(|| {
        let tag = cipher.encrypt_in_place_detached(nonce, b"", black_box(&mut buf)).expect("seal");
        cipher.decrypt_in_place_detached(nonce, b"", black_box(&mut buf), &tag).expect("open");
        1
    })
}

fn json(fields: &[(&str, String)]) {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!("{{{}}}", body.join(","));
}

fn main() {
    // cargo bench passes --bench; accept and ignore other flags.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    if want("handshake") {
        let (dh, keygen) = x25519_bounds();
        json(&[
            ("bench", "\"x25519\"".into()),
            ("dh_us", format!("{:.2}", dh / 1e3)),
            ("keygen_us", format!("{:.2}", keygen / 1e3)),
        ]);
        // (path, DH operations, key generations) for both sides together.
        for (name, dhs, keygens) in [("full", 6.0, 2.0), ("introduced", 8.0, 2.0), ("resumed", 2.0, 2.0)] {
            let mut p = Pair::new();
            let b = p.b.node_id();
            let expect = match name {
                "full" => HandshakePath::Full,
                "introduced" => HandshakePath::Introduced,
                _ => HandshakePath::Resumed,
            };
            if name == "resumed" {
                p.handshake(None); // first session, to hold a ticket
            }
            let ns = measure(|| {
                let target = match name {
                    "full" => None,
                    "introduced" => {
                        p.a.forget_ticket(&b);
                        Some(b)
                    }
                    _ => Some(b),
                };
                let got = p.handshake(target);
                assert_eq!(got, expect);
                1
            });
            let bound_ns = dhs * dh + keygens * keygen;
            json(&[
                ("bench", format!("\"handshake_{name}\"")),
                ("per_sec", format!("{:.0}", 1e9 / ns)),
                ("x25519_bound_per_sec", format!("{:.0}", 1e9 / bound_ns)),
                ("ratio_to_bound", format!("{:.3}", bound_ns / ns)),
                ("us_each", format!("{:.1}", ns / 1e3)),
            ]);
        }
    }

    for size in [64usize, 1024, 64 << 10] {
        let name = format!("messages_{size}");
        if !want(&name) {
            continue;
        }
        let raw = raw_seal_open(size);
        let mut p = Pair::new();
        p.connect(None);
        p.pump();
        let b = p.b.node_id();
        let batch = ((4 << 20) / size).clamp(1, 4096) as u64;
        let payload = Bytes::from(vec![0xabu8; size]);
        let ns = measure(|| {
            for _ in 0..batch {
                p.a.send(&b, ProtocolId(0), 1, payload.clone()).expect("send");
            }
            let got = p.pump();
            assert_eq!(got, batch);
            batch
        });
        json(&[
            ("bench", format!("\"{name}\"")),
            ("size", size.to_string()),
            ("msgs_per_sec", format!("{:.0}", 1e9 / ns)),
            ("mb_per_sec", format!("{:.1}", size as f64 * 1e3 / ns)),
            ("raw_seal_open_per_sec", format!("{:.0}", 1e9 / raw)),
            ("raw_mb_per_sec", format!("{:.1}", size as f64 * 1e3 / raw)),
            ("ratio_to_raw", format!("{:.3}", raw / ns)),
        ]);
    }
}
