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

#[cfg(not(feature = "ring"))]
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
#[cfg(not(feature = "ring"))]
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use devp2p_core::{
    Bytes, Config, ConnectionId, Event, HandshakePath, Instant, Keypair, Node, NodeId, Protocol, ProtocolId,
    SeededRng,
};
use x25519_dalek::{PublicKey, StaticSecret};

const SAMPLES: usize = 11;
const SAMPLE: Duration = Duration::from_millis(150);
const WARMUP: Duration = Duration::from_millis(300);

/// Nanoseconds per operation of `f` (which performs some operations and
/// returns how many) over about `SAMPLE`, after `calibrate` was called.
struct Sampler<F> {
    f: F,
    per_op: f64,
}

impl<F: FnMut() -> u64> Sampler<F> {
    fn new(mut f: F) -> Self {
        let t = StdInstant::now();
        let mut ops = 0u64;
        while t.elapsed() < WARMUP / 3 {
            ops += f();
        }
        Sampler { per_op: t.elapsed().as_nanos() as f64 / ops.max(1) as f64, f }
    }

    fn sample(&mut self) -> f64 {
        let target = (SAMPLE.as_nanos() as f64 / 3.0 / self.per_op).max(1.0) as u64;
        let t = StdInstant::now();
        let mut done = 0u64;
        while done < target {
            done += (self.f)();
        }
        t.elapsed().as_nanos() as f64 / done as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Runs the samplers in interleaved rounds, so that machine noise hits all
/// of them alike; returns the per-round values for each.
fn interleaved<const N: usize>(samplers: &mut [&mut dyn FnMut() -> f64; N]) -> [Vec<f64>; N] {
    let mut out: [Vec<f64>; N] = core::array::from_fn(|_| Vec::new());
    for _ in 0..SAMPLES {
        for (i, s) in samplers.iter_mut().enumerate() {
            out[i].push(s());
        }
    }
    out
}

fn node(seed: u64, config: Config) -> Node {
    let mut rng = SeededRng::from_u64(seed);
    let key = Keypair::generate(&mut rng);
    Node::new(config, key, Box::new(rng.fork()), Instant::ZERO).expect("config")
}

/// A node speaking `protocols` protocols ("bench" first).
fn config(protocols: u16) -> Config {
    let mut protocols: Vec<Protocol> =
        (0..protocols).map(|i| Protocol::new(format!("bench-{i}"), 1, 4)).collect();
    protocols[0] = Protocol::new("bench", 1, 4);
    let mut c = Config::with_protocols(protocols);
    c.limits.max_queued_per_peer = 64 << 20;
    c.limits.max_queued_total = 64 << 20;
    c.limits.max_queued_per_protocol = 64 << 20;
    c.limits.max_reassembly_per_peer = 16 << 20;
    c.records.max_transmit_size = std::env::var("TX").map(|v| v.parse().expect("TX")).unwrap_or(256 << 10);
    if let Ok(r) = std::env::var("RECORD") {
        c.records.max_record_size = r.parse().expect("RECORD");
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
    /// The path of the last `PeerConnected` A saw.
    last_path: Option<HandshakePath>,
}

impl Pair {
    /// Two nodes speaking `protocols` protocols.
    fn new(protocols: u16) -> Self {
        Pair {
            a: node(1, config(protocols)),
            b: node(2, config(protocols)),
            a_to_b: BTreeMap::new(),
            b_to_a: BTreeMap::new(),
            buf: Vec::with_capacity(2 << 20),
            now: Instant::ZERO,
            last_path: None,
        }
    }

    fn connect(&mut self, target: Option<NodeId>) -> (ConnectionId, ConnectionId) {
        let addr: std::net::SocketAddr = "192.0.2.1:30303".parse().expect("address");
        let ca = self.a.dial(devp2p_core::PeerAddr { id: target, addr }, self.now).expect("dial");
        let _ = self.a.poll_dial();
        self.a.handle_connected(ca, self.now);
        let cb = self.b.accept(addr, self.now).expect("accept");
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
                if let Some(d) = e.delivered() {
                    received += d.messages;
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
            while let Some(e) = self.a.poll_event() {
                if let Event::PeerConnected { path, .. } = e {
                    self.last_path = Some(path);
                }
            }
            if !moved {
                return received;
            }
        }
    }

    /// One complete handshake of the given kind, then the connection is
    /// closed again; returns the path the handshake took.
    fn handshake(&mut self, target: Option<NodeId>) -> HandshakePath {
        let (ca, _) = self.connect(target);
        self.last_path = None;
        self.pump();
        // Tear down as a transport close on both sides (no DISCONNECT
        // record), so the figure is the handshake alone.
        let cb = self.a_to_b[&ca];
        self.a.handle_close(ca, self.now);
        self.b.handle_close(cb, self.now);
        self.pump();
        self.last_path.expect("handshake completed")
    }
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
        // (path, DH operations, key generations) for both sides together.
        for (name, dhs, keygens) in [("full", 6.0, 2.0), ("introduced", 8.0, 2.0), ("resumed", 2.0, 2.0)] {
            let mut rng = SeededRng::from_u64(9);
            let secret = StaticSecret::random_from_rng(&mut rng);
            let public = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
            let mut dh = Sampler::new(|| {
                black_box(secret.diffie_hellman(black_box(&public)));
                1
            });
            let mut seed = [7u8; 32];
            let mut keygen = Sampler::new(|| {
                seed[0] = seed[0].wrapping_add(1);
                black_box(PublicKey::from(&StaticSecret::from(black_box(seed))));
                1
            });
            let mut p = Pair::new(1);
            let b = p.b.node_id();
            let expect = match name {
                "full" => HandshakePath::Full,
                "introduced" => HandshakePath::Introduced,
                _ => HandshakePath::Resumed,
            };
            if name == "resumed" {
                p.handshake(None); // first session, to hold a ticket
            }
            let mut hs = Sampler::new(|| {
                let target = match name {
                    "full" => None,
                    "introduced" => {
                        p.a.forget_ticket(&b);
                        Some(b)
                    }
                    _ => Some(b),
                };
                assert_eq!(p.handshake(target), expect);
                1
            });
            let [d, k, h] =
                interleaved(&mut [&mut || dh.sample(), &mut || keygen.sample(), &mut || hs.sample()]);
            let ratios: Vec<f64> = (0..SAMPLES).map(|i| (dhs * d[i] + keygens * k[i]) / h[i]).collect();
            let (d, k, h) = (median(d), median(k), median(h));
            json(&[
                ("bench", format!("\"handshake_{name}\"")),
                ("per_sec", format!("{:.0}", 1e9 / h)),
                ("x25519_bound_per_sec", format!("{:.0}", 1e9 / (dhs * d + keygens * k))),
                ("ratio_to_bound", format!("{:.3}", median(ratios))),
                ("us_each", format!("{:.1}", h / 1e3)),
                ("dh_us", format!("{:.2}", d / 1e3)),
                ("keygen_us", format!("{:.2}", k / 1e3)),
            ]);
        }
    }

    for size in [64usize, 1024, 64 << 10] {
        let name = format!("messages_{size}");
        if !want(&name) {
            continue;
        }
        // The baseline is the AEAD the node uses: ring's with the `ring`
        // feature, else the chacha20poly1305 crate's.
        #[cfg(not(feature = "ring"))]
        let (cipher, nonce) =
            (ChaCha20Poly1305::new(Key::from_slice(&[3u8; 32])), Nonce::from_slice(&[0u8; 12]));
        #[cfg(feature = "ring")]
        let ring_key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[3u8; 32]).expect("key"),
        );
        let mut raw_buf = vec![0x5au8; size];
        let mut raw = Sampler::new(|| {
            #[cfg(feature = "ring")]
            {
                use ring::aead::{Aad, Nonce as RingNonce};
                let n = || RingNonce::assume_unique_for_key([0u8; 12]);
                let tag = ring_key
                    .seal_in_place_separate_tag(n(), Aad::empty(), black_box(&mut raw_buf))
                    .expect("seal");
                ring_key
                    .open_in_place_separate_tag(n(), Aad::empty(), tag, black_box(&mut raw_buf), 0..)
                    .expect("open");
            }
            #[cfg(not(feature = "ring"))]
            {
                let tag =
                    cipher.encrypt_in_place_detached(nonce, b"", black_box(&mut raw_buf)).expect("seal");
                cipher.decrypt_in_place_detached(nonce, b"", black_box(&mut raw_buf), &tag).expect("open");
            }
            1
        });
        let mut p = Pair::new(1);
        p.connect(None);
        p.pump();
        let b = p.b.node_id();
        let batch = ((4 << 20) / size).clamp(1, 4096) as u64;
        let payload = Bytes::from(vec![0xabu8; size]);
        let mut ours = Sampler::new(|| {
            for _ in 0..batch {
                p.a.send(&b, ProtocolId(0), 1, payload.clone()).expect("send");
            }
            assert_eq!(p.pump(), batch);
            batch
        });
        let [r, o] = interleaved(&mut [&mut || raw.sample(), &mut || ours.sample()]);
        let ratios: Vec<f64> = (0..SAMPLES).map(|i| r[i] / o[i]).collect();
        let (raw, ns) = (median(r), median(o));
        json(&[
            ("bench", format!("\"{name}\"")),
            ("size", size.to_string()),
            ("msgs_per_sec", format!("{:.0}", 1e9 / ns)),
            ("mb_per_sec", format!("{:.1}", size as f64 * 1e3 / ns)),
            ("aead", format!("\"{}\"", if cfg!(feature = "ring") { "ring" } else { "rustcrypto" })),
            ("raw_seal_open_per_sec", format!("{:.0}", 1e9 / raw)),
            ("raw_mb_per_sec", format!("{:.1}", size as f64 * 1e3 / raw)),
            ("ratio_to_raw", format!("{:.3}", median(ratios))),
        ]);
    }

    for size in [64usize << 10, 1 << 20] {
        if !want(&format!("protocols_8_{size}")) {
            continue;
        }
        // Messages on one protocol, or spread over 8 at once.
        let payload = Bytes::from(vec![0xcdu8; size]);
        let count = ((4 << 20) / size) as u16 * 8;
        let mut pairs: Vec<(Pair, u16)> = [1u16, 8].iter().map(|&n| (Pair::new(8), n)).collect();
        for (p, _) in &mut pairs {
            p.connect(None);
            p.pump();
        }
        let mut samplers: Vec<Sampler<_>> = pairs
            .iter_mut()
            .map(|(p, n)| {
                let n = *n;
                let payload = payload.clone();
                Sampler::new(move || {
                    let b = p.b.node_id();
                    for i in 0..count {
                        p.a.send(&b, ProtocolId(i % n), 1, payload.clone()).expect("send");
                    }
                    assert_eq!(p.pump(), u64::from(count));
                    u64::from(count)
                })
            })
            .collect();
        let (first, rest) = samplers.split_at_mut(1);
        let [one, eight] = interleaved(&mut [&mut || first[0].sample(), &mut || rest[0].sample()]);
        let ratios: Vec<f64> = (0..SAMPLES).map(|i| one[i] / eight[i]).collect();
        json(&[
            ("bench", format!("\"protocols_8_{size}\"")),
            ("size", size.to_string()),
            ("one_protocol_mb_per_sec", format!("{:.1}", size as f64 * 1e3 / median(one))),
            ("eight_protocols_mb_per_sec", format!("{:.1}", size as f64 * 1e3 / median(eight))),
            ("ratio_eight_to_one", format!("{:.3}", median(ratios))),
        ]);
    }
}
