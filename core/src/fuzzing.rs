//! Entry points for the fuzz targets in `fuzz/` (and the stable test that
//! replays their corpora). Each takes arbitrary bytes, drives one decoder
//! or state machine with them, and checks invariants beyond "no panic":
//! round trips for codecs, reason codes and memory bounds for machines,
//! and exactly-once, in-order delivery for the whole node.
//!
//! Compiled with the `fuzzing` feature only; not part of the stable API.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::crypto::CipherState;
use crate::event::Event;
use crate::identity::{Keypair, NodeId};
use crate::node::Node;
use crate::protocol::{Hello, Protocol, ProtocolId, SharedProtocol};
use crate::reason::DisconnectReason;
use crate::rng::SeededRng;
use crate::session::{PeerLimits, Session};
use crate::time::Instant;
use crate::wire::chunk;
use crate::wire::control::Control;
use crate::wire::varint::Reader;
use crate::ConnectionId;

fn protocols() -> Vec<Protocol> {
    alloc::vec![Protocol::new("a", 1, 4), Protocol::new("b", 1, 2)]
}

fn small_config() -> Config {
    let mut c = Config::with_protocols(protocols());
    c.limits.max_message_size = 64 << 10;
    c.limits.max_reassembly_per_peer = 128 << 10;
    c.limits.max_queued_per_peer = 256 << 10;
    c.limits.max_queued_total = 1 << 20;
    c.records.max_record_size = 4096;
    c.flow.receive_window = 16 << 10;
    c
}

fn node(seed: u64) -> Node {
    let mut rng = SeededRng::from_u64(seed);
    let key = Keypair::generate(&mut rng);
    Node::new(small_config(), key, Box::new(rng.fork()), Instant::ZERO).expect("valid config")
}

/// The chunk decoder: decoded chunks lie inside the input and decoding stops
/// at the first error.
pub fn chunks(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut consumed = 0usize;
    while let Ok(Some(c)) = chunk::decode(&mut r) {
        let left = r.remaining().len();
        assert!(left < data.len() - consumed || data.is_empty(), "decoder made progress");
        consumed = data.len() - left;
        if let chunk::Chunk::Data { data: d, .. } = c {
            assert!(d.len() <= data.len());
        }
    }
}

/// The hello decoder: whatever decodes re-encodes to something that
/// decodes to the same value.
pub fn hello(data: &[u8]) {
    if let Ok(h) = Hello::decode(data, 64) {
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(Hello::decode(&out, 64).ok(), Some(h), "hello round trip");
    }
}

/// The control message decoder (first byte: message type).
pub fn control(data: &[u8]) {
    let Some((&t, payload)) = data.split_first() else { return };
    if let Ok(c) = Control::decode(u64::from(t), payload) {
        if c != Control::Unknown {
            let mut p = Vec::new();
            c.encode_payload(&mut p);
            assert_eq!(Control::decode(c.msg_type(), &p), Ok(c), "control round trip");
        }
    }
}

/// The AEAD's short path (inputs up to 4 KiB, with the portable Poly1305)
/// against the `chacha20poly1305` crate: the same ciphertext and tag for any
/// key, nonce, associated data and plaintext, and any flipped bit rejected.
/// Input: key (32 bytes), nonce counter (8), associated-data length (1),
/// bit to flip (2), then associated data and plaintext.
pub fn aead(data: &[u8]) {
    let Some((head, rest)) = data.split_at_checked(43) else { return };
    let key: [u8; 32] = head[..32].try_into().expect("32 bytes");
    let n = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes")).min(u64::MAX - 1);
    let (ad, plain) = rest.split_at(usize::from(head[40]).min(rest.len()));
    let plain = &plain[..plain.len().min(crate::crypto::cipher::SHORT_MAX)];
    let flip = usize::from(u16::from_le_bytes([head[41], head[42]]));
    crate::crypto::cipher::check_short_path(&key, n, ad, plain, flip);
}

/// Record plaintexts: the input is split into records (2-byte length
/// prefixes), each sealed with the receiving session's key, so the fuzzer
/// reaches chunk parsing and reassembly. Every failure is a defined reason,
/// and reassembly memory stays within its limit.
pub fn record(data: &[u8]) {
    let config = small_config();
    let channels = alloc::vec![
        SharedProtocol { id: ProtocolId(0), channel: 1, message_count: 4 },
        SharedProtocol { id: ProtocolId(1), channel: 2, message_count: 2 },
    ];
    let mut s = Session::new(
        (CipherState::new([1; 32]), CipherState::new([2; 32])),
        (NodeId([3; 32]), ConnectionId(0)),
        channels,
        2,
        PeerLimits { max_message: u64::MAX, receive_window: Some(16 << 10) },
        &config,
        Instant::ZERO,
    );
    let mut sender = CipherState::new([2; 32]);
    let mut records = 0u32;
    let mut rest = data;
    let mut events = VecDeque::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (plain, tail) = rest[2..].split_at(len);
        rest = tail;
        let mut body = plain.to_vec();
        let Ok(tag) = sender.seal_in_place(&[], &mut body) else { return };
        body.extend_from_slice(&tag);
        match s.read_record(&mut body, &config, Instant::ZERO, &mut events) {
            Err(DisconnectReason::DecryptFailed) => panic!("a correctly sealed record failed to open"),
            Ok(_) => {
                // The sender rekeys after a record carrying REKEY, as the receiver did.
                let mut r = Reader::new(plain);
                while let Ok(Some(c)) = chunk::decode(&mut r) {
                    if let chunk::Chunk::Data { channel: 0, start: Some(st), .. } = c {
                        if st.msg_type == crate::wire::control::kind::REKEY {
                            sender.rekey();
                        }
                    }
                }
            }
            Err(reason) => {
                assert!(reason.code() < 64, "defined reason");
                break;
            }
        }
        assert!(s.reassembly_bytes() <= config.limits.max_reassembly_per_peer);
        // What flow control lets a peer leave unconsumed, per channel.
        let bound = config.flow.receive_window.max(config.limits.max_message_size + crate::MESSAGE_OVERHEAD);
        for p in s.metrics().protocols {
            assert!(p.unconsumed <= bound, "flow control bound");
        }
        // The application consumes after every other record.
        records += 1;
        if records & 1 == 0 {
            for ev in events.drain(..).flat_map(each_message) {
                if let Event::Message { protocol, payload, .. } = ev {
                    s.consume(protocol, 1, payload.len() as u64);
                }
            }
            let mut out = Vec::new();
            let _ = s.write_records(&mut out, 1 << 16, &config, Instant::ZERO);
        }
    }
    for e in events.into_iter().flat_map(each_message) {
        if let Event::Message { protocol, msg_type, payload, .. } = e {
            assert!(protocol.0 < 2 && msg_type < 4);
            assert!(payload.len() as u64 <= config.limits.max_message_size);
        }
    }
    // Bytes that were not sealed never authenticate.
    if !data.is_empty() {
        let mut raw = data.to_vec();
        raw.resize(raw.len().max(16), 0);
        let opened = s.read_record(&mut raw, &config, Instant::ZERO, &mut VecDeque::new());
        assert!(opened.is_err() || data.len() < 16);
    }
}

fn drain(n: &mut Node, now: Instant) -> (Vec<u8>, Vec<Event>) {
    let mut out = Vec::new();
    while let Some(c) = n.poll_transmit(now, &mut out) {
        n.handle_written(c, now);
    }
    while n.poll_close().is_some() {}
    let mut events = Vec::new();
    while let Some(e) = n.poll_event() {
        events.extend(each_message(e));
    }
    (out, events)
}

/// `e`, or the messages of a batch as one [`Event::Message`] each.
fn each_message(e: Event) -> Vec<Event> {
    match e {
        Event::Messages(b) => {
            let n = b.len();
            let all: Vec<Event> = b.into_messages().map(Event::from).collect();
            assert_eq!(all.len(), n, "a batch holds its messages");
            all
        }
        e => alloc::vec![e],
    }
}

fn check_bounds(n: &Node) {
    let c = n.config();
    let conns = n.connection_count();
    let bound = c.limits.max_queued_total
        + conns * (c.limits.max_reassembly_per_peer + c.limits.max_message_size as usize + 3 * 65_537);
    assert!(n.buffered_bytes() <= bound, "node holds {} bytes, bound {bound}", n.buffered_bytes());
    assert!(conns <= c.limits.max_connections);
}

/// The responder side of a handshake. Mode byte: 0 = the rest is raw
/// stream bytes; 1/2/3 = a genuine first frame of the full / introduced /
/// resumption path comes first, then the rest.
pub fn handshake_responder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut b = node(2);
    let mut a = node(1);
    let now = Instant::ZERO;
    let mut stream = Vec::new();
    if mode % 4 != 0 {
        let target = (mode % 4 != 1).then(|| b.node_id());
        if mode % 4 == 3 {
            // Give both sides a shared ticket first.
            let (ca, cb) = (a.dial_opened(None, now).ok(), b.accept(crate::io::TEST_ADDR, now).ok());
            if let (Some(ca), Some(cb)) = (ca, cb) {
                for _ in 0..6 {
                    let (mut x, _) = drain(&mut a, now);
                    b.handle_input(cb, &mut x, now);
                    let (mut y, _) = drain(&mut b, now);
                    a.handle_input(ca, &mut y, now);
                }
                a.handle_close(ca, now);
                b.handle_close(cb, now);
                drain(&mut a, now);
                drain(&mut b, now);
            }
        }
        if a.dial_opened(target, now).is_ok() {
            stream = drain(&mut a, now).0;
        }
    }
    stream.extend_from_slice(rest);
    let Ok(cb) = b.accept(crate::io::TEST_ADDR, now) else { return };
    // Feed in pieces to exercise frame reassembly.
    for piece in stream.chunks(97) {
        let mut p = piece.to_vec();
        b.handle_input(cb, &mut p, now);
        drain(&mut b, now);
        check_bounds(&b);
    }
    // With nothing more arriving, the handshake or idle timeout closes
    // whatever is left.
    for secs in [11, 30, 61, 62, 63, 80] {
        let t = now + Duration::from_secs(secs);
        b.handle_timeout(t);
        drain(&mut b, t);
    }
    assert_eq!(b.connection_count(), 0, "timeouts close whatever is left");
}

/// The initiator side of a handshake. Mode byte: path (none / introduced /
/// resumption) and whether a genuine responder answer comes first.
pub fn handshake_initiator(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::ZERO;
    let target = (mode & 1 == 1).then(|| b.node_id());
    let Ok(ca) = a.dial_opened(target, now) else { return };
    let mut stream = Vec::new();
    if mode & 2 == 2 {
        if let Ok(cb) = b.accept(crate::io::TEST_ADDR, now) {
            let (mut first, _) = drain(&mut a, now);
            b.handle_input(cb, &mut first, now);
            stream = drain(&mut b, now).0;
        }
    } else {
        drain(&mut a, now);
    }
    stream.extend_from_slice(rest);
    for piece in stream.chunks(61) {
        let mut p = piece.to_vec();
        a.handle_input(ca, &mut p, now);
        drain(&mut a, now);
        check_bounds(&a);
    }
}

/// Two nodes driven by an arbitrary sequence of operations: connecting,
/// sending (one message or a send batch), delivering bytes in arbitrary
/// pieces, injecting and corrupting bytes, advancing time, disconnecting
/// and closing transports. Checks
/// after every step: memory bounds; and, while nothing was injected or
/// corrupted, that B receives exactly A's messages in order and intact.
pub fn node_ops(data: &[u8]) {
    let mut a = node(1);
    let mut b = node(2);
    let mut now = Instant::ZERO;
    let mut link: Option<(ConnectionId, ConnectionId)> = None;
    let mut ab: Vec<u8> = Vec::new();
    let mut ba: Vec<u8> = Vec::new();
    let mut tampered = false;
    // What A sent and B still owes, per protocol (order holds per protocol).
    let mut sent: [VecDeque<Bytes>; 2] = Default::default();
    let b_id = b.node_id();
    for op in data.chunks(4) {
        let arg = |i: usize| op.get(i).copied().unwrap_or(0);
        match arg(0) % 10 {
            0 if link.is_none() => {
                let target = (arg(1) & 1 == 1).then_some(b_id);
                if let (Ok(ca), Ok(cb)) = (a.dial_opened(target, now), b.accept(crate::io::TEST_ADDR, now)) {
                    link = Some((ca, cb));
                }
            }
            // A send batch of small messages (op byte 255, which the
            // original ops read as 5: few committed inputs change meaning).
            _ if arg(0) == 255 => {
                let proto = ProtocolId(u16::from(arg(3) & 1));
                let mut batch = crate::SendBatch::new();
                let msgs: Vec<Bytes> = (0..1 + arg(2) % 16)
                    .map(|k| Bytes::from(alloc::vec![arg(3).wrapping_add(k); usize::from(arg(1))]))
                    .collect();
                msgs.iter().for_each(|m| batch.push(u32::from(arg(3) % 2), m));
                if a.send_packed(&b_id, proto, batch).is_ok() {
                    sent[usize::from(proto.0)].extend(msgs);
                }
            }
            1 => {
                let len = usize::from(u16::from_be_bytes([arg(1), arg(2)])) * 2;
                let payload = Bytes::from(alloc::vec![arg(3); len]);
                let proto = ProtocolId(u16::from(arg(3) & 1));
                if a.send(&b_id, proto, u32::from(arg(3) % 2), payload.clone()).is_ok() {
                    sent[usize::from(proto.0)].push_back(payload);
                }
            }
            2 => {
                let a_id = a.node_id();
                let _ = b.send(&a_id, ProtocolId(0), 1, Bytes::from(alloc::vec![7; usize::from(arg(1))]));
            }
            3 | 4 => {
                let (from_a, n) = (arg(0) % 10 == 3, usize::from(u16::from_be_bytes([arg(1), arg(2)])) + 1);
                let buf = if from_a { &mut ab } else { &mut ba };
                let take = n.min(buf.len());
                let mut piece: Vec<u8> = buf.drain(..take).collect();
                if let Some((ca, cb)) = link {
                    if from_a {
                        b.handle_input(cb, &mut piece, now);
                    } else {
                        a.handle_input(ca, &mut piece, now);
                    }
                }
            }
            5 => {
                if let Some((_, cb)) = link {
                    let mut junk = op[1..].to_vec();
                    b.handle_input(cb, &mut junk, now);
                    tampered = true;
                }
            }
            6 if !ab.is_empty() => {
                let i = usize::from(arg(1)) % ab.len();
                ab[i] ^= 1 << (arg(2) % 8);
                tampered = true;
            }
            7 => {
                now = now + Duration::from_millis(u64::from(arg(1)) * 500);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            8 => a.disconnect(&b_id, DisconnectReason::Requested, now),
            9 => {
                if let Some((ca, cb)) = link.take() {
                    a.handle_close(ca, now);
                    b.handle_close(cb, now);
                    ab.clear();
                    ba.clear();
                }
            }
            _ => {}
        }
        let (x, ea) = drain(&mut a, now);
        ab.extend_from_slice(&x);
        let (y, eb) = drain(&mut b, now);
        ba.extend_from_slice(&y);
        for e in &ea {
            if let Event::PeerDisconnected { unsent, .. } = e {
                // Handed back: these are not owed to B any more. They are
                // the newest messages, so they leave from the back.
                for m in unsent {
                    sent[usize::from(m.protocol.0) % 2].pop_back();
                }
            }
        }
        for e in eb {
            if let Event::Message { protocol, payload, .. } = e {
                if !tampered {
                    // Messages lost with a closed transport are skipped;
                    // the rest arrive in order and intact.
                    expect_sent(&mut sent[usize::from(protocol.0) % 2], payload);
                }
            }
        }
        // A transport whose one end is closed ends: the other end gets what
        // was in flight, then the close.
        if let Some((ca, cb)) = link {
            let (a_open, b_open) = (a.connection_count() > 0, b.connection_count() > 0);
            if !a_open || !b_open {
                if a_open {
                    a.handle_input(ca, &mut ba, now);
                    a.handle_close(ca, now);
                }
                if b_open {
                    b.handle_input(cb, &mut ab, now);
                    b.handle_close(cb, now);
                }
                drain(&mut a, now);
                for e in drain(&mut b, now).1 {
                    if let (Event::Message { protocol, payload, .. }, false) = (e, tampered) {
                        expect_sent(&mut sent[usize::from(protocol.0) % 2], payload);
                    }
                }
                link = None;
                ab.clear();
                ba.clear();
            }
        }
        check_bounds(&a);
        check_bounds(&b);
    }
}

/// Checks that B received `payload` next on its protocol, skipping
/// messages lost with a closed transport.
fn expect_sent(sent: &mut VecDeque<Bytes>, payload: Bytes) {
    while sent.front().is_some_and(|s| *s != payload) {
        sent.pop_front();
    }
    assert_eq!(sent.pop_front(), Some(payload), "B received a message A never sent");
}
