use super::*;
use crate::message::Message;
use crate::protocol::ProtocolId;
use alloc::vec;

/// Node-wide queue counts with no limits, for tests that queue on a
/// session directly.
#[derive(Default)]
struct Unlimited {
    queued: usize,
    messages: usize,
}

impl Unlimited {
    fn node(&mut self) -> NodeQueue<'_> {
        NodeQueue {
            queued: &mut self.queued,
            messages: &mut self.messages,
            max: usize::MAX,
            max_per_peer: usize::MAX,
        }
    }
}

/// A receiving session and the cipher that seals records for it.
fn receiver(config: &Config) -> (Session, CipherState) {
    receiver_granted(config, None)
}

/// The same, with the peer granting `peer_window` credit per channel.
fn receiver_granted(config: &Config, peer_window: Option<u64>) -> (Session, CipherState) {
    let channels = vec![
        SharedProtocol { id: ProtocolId(0), channel: 1, message_count: 4 },
        SharedProtocol { id: ProtocolId(1), channel: 2, message_count: 4 },
    ];
    // The RustCrypto path (keystream windows, sealed pieces) even when
    // the `ring` feature is on: the node scenarios exercise ring.
    let s = Session::new(
        (CipherState::rustcrypto([1; 32]), CipherState::rustcrypto([2; 32])),
        (NodeId([9; 32]), ConnectionId(0)),
        channels,
        2,
        PeerLimits { max_message: u64::MAX, receive_window: peer_window },
        config,
        Instant::ZERO,
    );
    (s, CipherState::new([2; 32]))
}

fn chunk(out: &mut Vec<u8>, channel: u64, start: Option<(u64, u64)>, last: bool, data: &[u8]) {
    let st = start.map(|(t, n)| MessageStart { msg_type: t, total_len: n });
    let at = out.len();
    out.resize(at + chunk::data_header_len(channel, st, last, data.len() as u64), 0);
    chunk::write_data_header(&mut out[at..], channel, st, last, data.len() as u64);
    out.extend_from_slice(data);
}

fn feed(
    s: &mut Session,
    c: &mut CipherState,
    plain: &[u8],
    config: &Config,
) -> Result<Vec<Event>, DisconnectReason> {
    let mut body = plain.to_vec();
    let tag = c.seal_in_place(&[], &mut body).expect("seal");
    body.extend_from_slice(&tag);
    let mut ev = VecDeque::new();
    s.read_record(&mut body, config, Instant::ZERO, &mut ev)?;
    Ok(ev.into_iter().collect())
}

#[test]
fn small_whole_messages_share_one_allocation_and_large_ones_do_not() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    let big = vec![7u8; SHARED_MAX + 1];
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((0, 3)), true, b"one");
    chunk(&mut r, 2, Some((1, 3)), true, b"two");
    chunk(&mut r, 1, Some((2, big.len() as u64)), true, &big);
    chunk(&mut r, 1, Some((3, 5)), true, b"three");
    let ev = feed(&mut s, &mut c, &r, &config).unwrap();
    let p: Vec<Bytes> = ev
        .into_iter()
        .map(|e| match e {
            Event::Message { payload, .. } => payload,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!([&p[0][..], &p[1][..], &p[2][..], &p[3][..]], [&b"one"[..], b"two", &big, b"three"]);
    let at = |b: &Bytes| b.as_ptr() as usize;
    // "one", "two" and "three" are copied one after the other into the
    // session's arena ...
    assert_eq!(at(&p[1]), at(&p[0]) + 3);
    assert_eq!(at(&p[3]), at(&p[1]) + 3);
    // ... and the large message, copied alone, is not in it.
    assert!(at(&p[2]) + p[2].len() <= at(&p[0]) || at(&p[2]) >= at(&p[3]) + 5);
}

#[test]
fn small_messages_share_an_allocation_sized_by_their_record() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    // The payloads, and how many events brought them.
    let payloads = |ev: Vec<Event>| -> (Vec<Bytes>, usize) {
        let events = ev.len();
        let all = ev
            .into_iter()
            .flat_map(|e| match e {
                Event::Message { payload, .. } => vec![payload],
                Event::Messages(b) => (0..b.len()).filter_map(|i| b.payload(i)).collect(),
                e => panic!("{e:?}"),
            })
            .collect();
        (all, events)
    };
    let at = |b: &Bytes| b.as_ptr() as usize;
    // A message alone in its record (a request, a reply) is copied alone.
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((0, 3)), true, b"one");
    let (lone, _) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
    assert_eq!(&lone[0][..], b"one");
    assert_eq!(s.run_arena.capacity(), 0, "no arena for a lone message");
    // The 100 small messages of a record share one allocation, sized by
    // the record: the session keeps less than a record of spare room.
    r.clear();
    for _ in 0..100 {
        chunk(&mut r, 1, Some((0, 64)), true, &[9u8; 64]);
    }
    let (held, events) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
    assert_eq!(events, 1, "one batch");
    assert_eq!(at(&held[99]) - at(&held[0]), 99 * 64);
    assert!(s.run_arena.capacity() < r.len(), "{} spare", s.run_arena.capacity());
    // A later small message uses the room left, though `held` is kept.
    r.clear();
    chunk(&mut r, 2, Some((1, 1)), true, b"x");
    let (later, _) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
    assert_eq!(at(&later[0]), at(&held[99]) + 64);
    // A record of 900 small messages: allocations of at most 16 KiB.
    r.clear();
    for _ in 0..900 {
        chunk(&mut r, 1, Some((0, 64)), true, &[5u8; 64]);
    }
    let (many, events) = payloads(feed(&mut s, &mut c, &r, &config).unwrap());
    assert_eq!(many.len(), 900);
    // A batch is one allocation: 900 x 64 B need four of 16 KiB.
    assert!((4..=5).contains(&events), "{events} batches");
    assert!(s.run_arena.capacity() <= ARENA_MAX);
    let contiguous = many.windows(2).filter(|w| at(&w[1]) == at(&w[0]) + 64).count();
    assert!(contiguous >= 890, "{contiguous} of 899 neighbours share an allocation");
}

#[test]
fn consecutive_small_messages_of_a_protocol_come_as_one_batch_in_order() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    // A large message starts in one record...
    let mut r = Vec::new();
    chunk(&mut r, 2, Some((3, 2 * SHARED_MAX as u64)), false, &[7u8; SHARED_MAX]);
    assert!(feed(&mut s, &mut c, &r, &config).unwrap().is_empty());
    // ... and ends in the next, between runs of small ones.
    r.clear();
    for (channel, msg_type, body) in [(1, 0, &b"a0"[..]), (1, 1, b"a1"), (1, 2, b""), (1, 2, b"a2")] {
        chunk(&mut r, channel, Some((msg_type, body.len() as u64)), true, body);
    }
    chunk(&mut r, 2, None, true, &[8u8; SHARED_MAX]);
    chunk(&mut r, 2, Some((1, 2)), true, b"b0");
    chunk(&mut r, 2, Some((2, 2)), true, b"b1");
    chunk(&mut r, 1, Some((0, 2)), true, b"c0");
    chunk(&mut r, 1, Some((1, 3)), true, b"c1!");
    chunk(&mut r, 2, Some((3, 2)), true, b"d0");
    let events = feed(&mut s, &mut c, &r, &config).unwrap();
    // Each event as its protocol and (type, payload) pairs.
    type Shape = Vec<(u16, Vec<(u32, Vec<u8>)>)>;
    let shape: Shape = events
        .iter()
        .map(|e| match e {
            Event::Message { protocol, msg_type, payload, .. } => {
                (protocol.0, vec![(*msg_type, payload.to_vec())])
            }
            Event::Messages(b) => (b.protocol.0, b.iter().map(|(t, p)| (t, p.to_vec())).collect()),
            e => panic!("{e:?}"),
        })
        .collect();
    let large: Vec<u8> = [[7u8; SHARED_MAX], [8u8; SHARED_MAX]].concat();
    let expect: Shape = vec![
        // The empty message is delivered alone; it ends a run.
        (0, vec![(0, b"a0".to_vec()), (1, b"a1".to_vec())]),
        (0, vec![(2, vec![])]),
        (0, vec![(2, b"a2".to_vec())]),
        (1, vec![(3, large)]),
        (1, vec![(1, b"b0".to_vec()), (2, b"b1".to_vec())]),
        (0, vec![(0, b"c0".to_vec()), (1, b"c1!".to_vec())]),
        // Alone at the end of the record: copied alone.
        (1, vec![(3, b"d0".to_vec())]),
    ];
    assert_eq!(shape, expect);
    // The batch's other views agree with its iterator.
    let Event::Messages(b) = &events[5] else { panic!("{:?}", events[5]) };
    assert_eq!((b.len(), b.payload_bytes(), b.is_empty()), (2, 5, false));
    assert_eq!(b.get(1), Some((1, &b"c1!"[..])));
    assert_eq!(b.get(2), None);
    assert_eq!(b.payload(0).as_deref(), Some(&b"c0"[..]));
    assert_eq!(b.iter().len(), 2);
    let owned: Vec<Message> = b.clone().into_messages().collect();
    assert_eq!(owned.len(), 2);
    assert_eq!(
        (owned[1].msg_type, &owned[1].payload[..], owned[1].protocol),
        (1, &b"c1!"[..], ProtocolId(0))
    );
    assert_eq!(owned[0], b.message(0).unwrap());
    let d = crate::event::Delivered {
        connection: ConnectionId(0),
        protocol: ProtocolId(0),
        messages: 2,
        bytes: 5,
    };
    assert_eq!(events[5].delivered(), Some(d));
    // Split: the front keeps the first, the rest re-based on its buffer.
    let mut front = b.clone();
    let rest = front.split_off(1);
    assert_eq!(front.iter().collect::<Vec<_>>(), vec![(0, &b"c0"[..])]);
    assert_eq!(rest.iter().collect::<Vec<_>>(), vec![(1, &b"c1!"[..])]);
    assert_eq!((rest.payload_bytes(), rest.protocol), (3, ProtocolId(0)));
    assert!(front.clone().split_off(5).is_empty());
    // The same messages, one at a time, as a batch of one.
    let one = MessageBatch::one(owned[1].clone());
    assert_eq!(one.iter().collect::<Vec<_>>(), vec![(1, &b"c1!"[..])]);
    assert_eq!(one.message(0), Some(owned[1].clone()));
    assert_eq!(one.get(1), None);
    let (mut kept, mut all) = (one.clone(), one.clone());
    assert!(kept.split_off(1).is_empty() && kept == one);
    assert_eq!(all.split_off(0), one);
    assert!(all.is_empty() && all.payload_bytes() == 0);
}

#[test]
fn a_batch_index_holds_at_most_twice_its_messages() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    // Runs of two 1-byte messages, the protocols alternating: a batch
    // each, whose index must not be sized by the rest of the record.
    let mut r = Vec::new();
    for i in 0..1000 {
        chunk(&mut r, 1 + (i / 2) % 2, Some((0, 1)), true, b"x");
    }
    let events = feed(&mut s, &mut c, &r, &config).unwrap();
    assert_eq!(events.len(), 500);
    for e in &events[..499] {
        let Event::Messages(b) = e else { panic!("{e:?}") };
        assert_eq!(b.len(), 2);
        assert!(b.index_capacity() <= 8, "{} entries for 2 messages", b.index_capacity());
    }
    // A long run grows its index by doubling.
    r.clear();
    for _ in 0..300 {
        chunk(&mut r, 1, Some((1, 8)), true, &[3u8; 8]);
    }
    let events = feed(&mut s, &mut c, &r, &config).unwrap();
    let Some(Event::Messages(b)) = events.first() else { panic!("{events:?}") };
    assert!(b.len() >= 150 && b.index_capacity() <= 2 * b.len(), "{} for {}", b.index_capacity(), b.len());
}

#[test]
fn chunks_the_fast_path_leaves_to_the_decoder_batch_the_same() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    // Whole chunks with their length written long (4 bytes for 2): the
    // general decoder reads them, and they still form one batch.
    let mut r = Vec::new();
    for body in [b"ab", b"cd", b"ef"] {
        r.extend_from_slice(&[0x13, 0x01, 0x02, 0x80, 0x00, 0x00, 0x02]);
        r.extend_from_slice(body);
    }
    // (Followed by enough of the record that they are not copied alone.)
    chunk(&mut r, 2, Some((0, 300)), true, &[1u8; 300]);
    let events = feed(&mut s, &mut c, &r, &config).unwrap();
    let Event::Messages(b) = &events[0] else { panic!("{events:?}") };
    let got: Vec<(u32, &[u8])> = b.iter().collect();
    assert_eq!(got, vec![(2, &b"ab"[..]), (2, b"cd"), (2, b"ef")]);
    assert!(matches!(&events[1], Event::Message { msg_type: 0, payload, .. } if payload.len() == 300));
}

#[test]
fn reassembly_buffers_are_reused_once_the_application_drops_their_messages() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    // One message in two chunks (so it is reassembled), in two records.
    let mut message = |s: &mut Session, fill: u8| -> Bytes {
        let half = vec![fill; 1000];
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        chunk(&mut r1, 1, Some((0, 2000)), false, &half);
        chunk(&mut r2, 1, None, true, &half);
        assert!(feed(s, &mut c, &r1, &config).unwrap().is_empty());
        match feed(s, &mut c, &r2, &config).unwrap().pop() {
            Some(Event::Message { payload, .. }) => {
                assert!(payload.len() == 2000 && payload.iter().all(|&b| b == fill));
                payload
            }
            e => panic!("{e:?}"),
        }
    };
    let held: Vec<Bytes> = (0..3).map(|i| message(&mut s, i)).collect();
    let addrs: Vec<usize> = held.iter().map(|p| p.as_ptr() as usize).collect();
    assert_eq!(addrs.iter().collect::<alloc::collections::BTreeSet<_>>().len(), 3, "all three held");
    drop(held);
    // Dropped by the application: the next three reuse those allocations.
    let again: Vec<usize> = (3..6).map(|i| message(&mut s, i).as_ptr() as usize).collect();
    assert!(again.iter().all(|a| addrs.contains(a)), "{addrs:x?} then {again:x?}");
    // (The allocator might hand out freed addresses again anyway; the
    // kept buffers show it: three, not six.)
    assert_eq!((s.spare.len(), s.spare_bytes), (3, 6000));
}

#[test]
fn large_pieces_decrypted_straight_into_reassembly_match_the_plaintext() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    let a: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let b: Vec<u8> = (0..30_000u32).map(|i| (i * 13 + 1) as u8).collect();
    // Record 1: a piece of A (sealed), a whole small message, a piece of
    // B (sealed), a tiny piece of A (not sealed), a credit update.
    let mut r1 = Vec::new();
    chunk(&mut r1, 1, Some((0, a.len() as u64)), false, &a[..25_000]);
    chunk(&mut r1, 2, Some((1, 5)), true, b"whole");
    chunk(&mut r1, 2, Some((2, b.len() as u64)), false, &b[..15_000]);
    chunk(&mut r1, 1, None, false, &a[25_000..25_010]);
    crate::session::flow::write_update(&mut r1, 1, 100);
    // Record 2: the rest of both (sealed), then padding.
    let mut r2 = Vec::new();
    chunk(&mut r2, 2, None, true, &b[15_000..]);
    chunk(&mut r2, 1, None, true, &a[25_010..]);
    r2.extend_from_slice(&[0, 0xee, 0xee]);
    let mut got = feed(&mut s, &mut c, &r1, &config).unwrap();
    got.extend(feed(&mut s, &mut c, &r2, &config).unwrap());
    let payloads: Vec<(u32, Vec<u8>)> = got
        .into_iter()
        .map(|e| match e {
            Event::Message { msg_type, payload, .. } => (msg_type, payload.to_vec()),
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![(1, b"whole".to_vec()), (2, b), (0, a)]);
}

#[test]
fn a_reused_buffer_is_not_shared_with_a_message_the_application_holds() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    let mut message = |s: &mut Session, len: usize| -> Bytes {
        let half = vec![7u8; len / 2];
        let (mut r1, mut r2) = (Vec::new(), Vec::new());
        chunk(&mut r1, 1, Some((0, len as u64)), false, &half);
        chunk(&mut r2, 1, None, true, &half);
        feed(s, &mut c, &r1, &config).unwrap();
        match feed(s, &mut c, &r2, &config).unwrap().pop() {
            Some(Event::Message { payload, .. }) => payload,
            e => panic!("{e:?}"),
        }
    };
    drop(message(&mut s, 20_000));
    // The 20,000-byte buffer is reused for a 10,000-byte message, which
    // the application keeps ...
    let held = message(&mut s, 10_000);
    // ... so the next message must not go into the rest of it.
    let next = message(&mut s, 3_000);
    let (start, p) = (held.as_ptr() as usize, next.as_ptr() as usize);
    assert!(!(start..start + 20_000).contains(&p), "shares the held message's allocation");
}

#[test]
fn interleaved_channels_reassemble() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((1, 6)), false, b"abc");
    chunk(&mut r, 2, Some((2, 2)), false, b"x");
    chunk(&mut r, 1, None, true, b"def");
    chunk(&mut r, 2, None, true, b"y");
    let ev = feed(&mut s, &mut c, &r, &config).unwrap();
    let payloads: Vec<&[u8]> = ev
        .iter()
        .map(|e| match e {
            Event::Message { payload, .. } => &payload[..],
            _ => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![&b"abcdef"[..], &b"xy"[..]]);
}

#[test]
fn reassembly_memory_is_capped_per_peer() {
    let config = {
        let mut config_ = Config::default();
        config_.limits.max_message_size = 100_000;
        config_.limits.max_reassembly_per_peer = 150_000;
        config_
    };
    let (mut s, mut c) = receiver(&config);
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((0, 100_000)), false, b"start");
    assert!(feed(&mut s, &mut c, &r, &config).unwrap().is_empty());
    assert_eq!(s.reassembly_bytes(), 100_000);
    r.clear();
    chunk(&mut r, 2, Some((0, 100_000)), false, b"start");
    assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::ResourceLimit));
}

#[test]
fn malformed_chunk_sequences_are_rejected() {
    let config = {
        let mut config_ = Config::default();
        config_.limits.max_message_size = 1000;
        config_
    };
    let cases: Vec<(Vec<u8>, DisconnectReason)> = {
        let mut v = Vec::new();
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 2000)), false, b"x");
        v.push((r, DisconnectReason::MessageTooLarge));
        let mut r = Vec::new();
        chunk(&mut r, 1, None, true, b"x");
        v.push((r, DisconnectReason::ProtocolViolation));
        let mut r = Vec::new();
        chunk(&mut r, 3, Some((0, 1)), true, b"x");
        v.push((r, DisconnectReason::UnknownMessageType));
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((4, 1)), true, b"x");
        v.push((r, DisconnectReason::UnknownMessageType));
        // A whole message's data is `total_len` bytes: 3 announced, 1 there.
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 3)), true, b"x");
        v.push((r, DisconnectReason::ProtocolViolation));
        let mut r = Vec::new();
        chunk(&mut r, 1, Some((0, 3)), false, b"x");
        chunk(&mut r, 1, Some((0, 3)), false, b"x");
        v.push((r, DisconnectReason::ProtocolViolation));
        let mut r = Vec::new();
        chunk(&mut r, 0, Some((0, 3)), true, b"xyz");
        v.push((r, DisconnectReason::ProtocolViolation));
        v.push((vec![0x05], DisconnectReason::ProtocolViolation));
        v
    };
    for (plain, want) in cases {
        let (mut s, mut c) = receiver(&config);
        assert_eq!(feed(&mut s, &mut c, &plain, &config), Err(want), "{plain:02x?}");
    }
}

#[test]
fn flow_control_violations_close_with_a_reason() {
    let config = {
        let mut config_ = Config::default();
        config_.flow.receive_window = 100;
        config_
    };
    // Within credit, then beyond it.
    let (mut s, mut c) = receiver(&config);
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((0, 60)), true, &[1; 60]);
    assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
    assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::FlowControlViolation));
    // A larger-than-window message is fine alone, not after another.
    let (mut s, mut c) = receiver(&config);
    let mut r = Vec::new();
    chunk(&mut r, 2, Some((0, 500)), true, &[2; 500]);
    assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
    let mut r = Vec::new();
    chunk(&mut r, 2, Some((0, 0)), true, b"");
    assert_eq!(feed(&mut s, &mut c, &r, &config), Err(DisconnectReason::FlowControlViolation));
    // Consuming it returns the credit in a WINDOW_UPDATE.
    s.consume(ProtocolId(1), 1, 500);
    assert!(s.has_output());
    let mut out = Vec::new();
    s.write_records(&mut out, 1, &config, Instant::ZERO).unwrap();
    let mut tx = CipherState::new([1; 32]);
    let body = &mut out[2..];
    let n = body.len() - TAG_LEN;
    let (ct, tag) = body.split_at_mut(n);
    tx.open_in_place(&[], ct, &<[u8; TAG_LEN]>::try_from(&tag[..]).unwrap()).unwrap();
    assert_eq!(&ct[..], &[flow::TAG_WINDOW_UPDATE, 3, 2, 0x42, 0x04][..], "channel 2, 516");
    assert_eq!(feed(&mut s, &mut c, &r, &config).map(|e| e.len()), Ok(1));
    // Malformed or impossible updates.
    for (update, want) in [
        (vec![0x30, 2, 0, 1], DisconnectReason::UnknownMessageType),
        (vec![0x30, 2, 3, 1], DisconnectReason::UnknownMessageType),
        (vec![0x30, 1, 1], DisconnectReason::ProtocolViolation),
        (vec![0x30, 3, 1, 1, 1], DisconnectReason::ProtocolViolation),
        (
            vec![0x30, 9, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            DisconnectReason::FlowControlViolation,
        ),
    ] {
        let (mut s, mut c) = receiver_granted(&config, Some(100));
        assert_eq!(feed(&mut s, &mut c, &update, &config), Err(want), "{update:02x?}");
    }
}

proptest::proptest! {
    /// A batch is admitted exactly as its messages one by one: the
    /// same queued, the same refused (and the rest handed back), the
    /// same written, whichever path `queue_batch` takes.
    #[test]
    fn a_batch_is_admitted_as_its_messages_one_by_one(
        first in proptest::collection::vec((0u32..5, 0usize..300), 0..4),
        batch in proptest::collection::vec((0u32..5, 0usize..300), 0..12),
        protocol in 0u16..3,
        per_protocol in 0usize..2000,
        per_peer in 0usize..3000,
        total in 0usize..3000,
        held_elsewhere in 0usize..1000,
    ) {
        let config = {
 let mut config_ = Config::default();
config_.limits.max_queued_per_protocol = per_protocol;
 config_
};
        let run = |one_by_one: bool| {
            let (mut s, _) = receiver_granted(&config, None);
            let mut queued = held_elsewhere;
            let mut messages = usize::from(held_elsewhere > 0);
            let mut node =
                NodeQueue { queued: &mut queued, messages: &mut messages, max: total, max_per_peer: per_peer };
            let mk = |v: &[(u32, usize)]| -> VecDeque<(u32, Bytes)> {
                v.iter().map(|&(t, n)| (t, Bytes::from(vec![t as u8; n]))).collect()
            };
            // Something queued before, so the limits are reached midway.
            let _ = s.queue_batch(ProtocolId(0), &mut mk(&first), &mut node);
            let mut msgs = mk(&batch);
            let result = if one_by_one {
                let mut r = Ok(());
                while let Some((t, p)) = msgs.pop_front() {
                    if let Err((e, p)) = s.queue_one(ProtocolId(protocol), t, p, &mut node) {
                        msgs.push_front((t, p));
                        r = Err(e);
                        break;
                    }
                }
                r
            } else {
                s.queue_batch(ProtocolId(protocol), &mut msgs, &mut node)
            };
            let mut out = Vec::new();
            let _ = s.write_records(&mut out, usize::MAX, &config, Instant::ZERO);
            (result, msgs, (s.queued_messages, s.queued_bytes), (messages, queued), out)
        };
        proptest::prop_assert_eq!(run(false), run(true));
    }
}

proptest::proptest! {
    /// A send batch goes out exactly as its messages sent one by one:
    /// the same records byte for byte, the same queue depths after each
    /// transmit, and the same messages handed back if the connection
    /// closes midway; whatever the record size, the credit, the
    /// priority size and another protocol's traffic.
    #[test]
    fn a_send_batch_goes_out_as_its_messages_one_by_one(
        batch in proptest::collection::vec((0u32..4, 0usize..9000), 1..40),
        other in proptest::collection::vec((0u32..4, 0usize..9000), 0..6),
        record in 64usize..20000,
        window in proptest::option::of(1000u64..40000),
        budget in 1usize..40000,
        small in 0usize..600,
        close_after in 0usize..12,
    ) {
        let config = {
 let mut config_ = Config::default();
config_.records.max_record_size = record;
config_.records.priority_message_size = small;
 config_
};
        let run = |packed: bool| {
            let (mut s, _) = receiver_granted(&config, window);
            let mut counts = Unlimited::default();
            let mut node = counts.node();
            let payload = |t: u32, n: usize, k: usize| Bytes::from(vec![(t as usize * 31 + k) as u8; n]);
            let mut others: VecDeque<_> =
                other.iter().enumerate().map(|(k, &(t, n))| (t, payload(t, n, k))).collect();
            s.queue_batch(ProtocolId(1), &mut others, &mut node).unwrap();
            let msgs: Vec<(u32, Bytes)> =
                batch.iter().enumerate().map(|(k, &(t, n))| (t, payload(t, n, k + 100))).collect();
            if packed {
                let b: SendBatch = msgs.iter().map(|(t, p)| (*t, &p[..])).collect();
                s.queue_packed(ProtocolId(0), b, &mut node, false).map_err(|(e, _)| e).unwrap();
            } else {
                s.queue_batch(ProtocolId(0), &mut msgs.into_iter().collect(), &mut node).unwrap();
            }
            let mut out = Vec::new();
            let mut depths = Vec::new();
            for _ in 0..close_after {
                if !s.has_output() {
                    // The peer consumed everything: its credit comes back.
                    for c in &mut s.channels {
                        let spent = window.map_or(0, |w| w as i64 - c.credit.available());
                        let _ = c.credit.grant(spent.max(0) as u64);
                    }
                }
                let budget = out.len() + budget;
                let _ = s.write_records(&mut out, budget, &config, Instant::ZERO);
                depths.push((s.scheduler.depth(0), s.scheduler.depth(1), s.queued_bytes));
            }
            let unsent = s.take_unsent();
            (out, depths, unsent)
        };
        proptest::prop_assert_eq!(run(true), run(false));
    }
}

#[test]
fn the_tail_of_a_large_message_does_not_close_its_record_early() {
    // Records of 1,000 bytes; two 1,500-byte messages. The first's
    // small tail (below the 512-byte priority size) shares its record
    // with the start of the second: three full-size records, not a
    // record holding the tail alone.
    let config = {
        let mut config_ = Config::default();
        config_.records.max_record_size = 1000;
        config_
    };
    let (mut s, _) = receiver_granted(&config, None);
    let mut msgs: VecDeque<_> = (0..2).map(|i| (0, Bytes::from(vec![i as u8; 1500]))).collect();
    let mut counts = Unlimited::default();
    let mut node = counts.node();
    s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
    let mut out = Vec::new();
    s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
    let mut sizes = Vec::new();
    let mut rest = &out[..];
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        sizes.push(n);
        rest = &rest[2 + n..];
    }
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    assert!(sizes[..3].iter().all(|&n| n == 1000 + TAG_LEN), "{sizes:?}");
    // A small message split across records still closes its record.
    let config = {
        let mut config_ = Config::default();
        config_.records.max_record_size = 300;
        config_
    };
    let (mut s, _) = receiver_granted(&config, None);
    let mut counts = Unlimited::default();
    let mut node = counts.node();
    let mut msgs: VecDeque<_> = [(0, Bytes::from(vec![1u8; 400])), (0, Bytes::from(vec![2u8; 2000]))].into();
    s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
    let mut out = Vec::new();
    s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
    assert!(out.len() < 2 * (2 + 300 + TAG_LEN), "one record, then the small message's end alone");
}

#[test]
fn a_message_that_fits_a_record_whole_is_not_split() {
    // 95 bytes take 5 header bytes whole (no `len`), 7 as a first piece:
    // in a record of 100 they fit only whole.
    let config = {
        let mut config_ = Config::default();
        config_.records.max_record_size = 100;
        config_
    };
    let (mut s, _) = receiver_granted(&config, None);
    let mut msgs: VecDeque<_> = [(0, Bytes::from(vec![7u8; 95]))].into();
    let mut counts = Unlimited::default();
    let mut node = counts.node();
    s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
    let mut out = Vec::new();
    while s.has_output() {
        s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
    }
    assert_eq!(out.len(), 2 + 100 + TAG_LEN, "one record of 100 plaintext bytes");
}

#[test]
fn a_sender_waits_for_credit() {
    let config = Config::default();
    let (mut s, _) = receiver_granted(&config, Some(1000));
    let mut msgs: VecDeque<_> = (0..3).map(|_| (0, Bytes::from(vec![0; 400]))).collect();
    let mut counts = Unlimited::default();
    let mut node = counts.node();
    s.queue_batch(ProtocolId(0), &mut msgs, &mut node).unwrap();
    assert_eq!((counts.messages, counts.queued), (3, 1200));
    let mut out = Vec::new();
    s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
    assert_eq!(s.scheduler.depth(0), (1, 400), "two fit in 1000 bytes of credit");
    assert!(!s.has_output(), "nothing to write until credit comes back");
    assert_eq!(s.channels[0].credit.available(), 1000 - 2 * 416);
    s.channels[0].credit.grant(416).unwrap();
    assert!(s.has_output());
    s.write_records(&mut out, usize::MAX, &config, Instant::ZERO).unwrap();
    assert_eq!(s.scheduler.depth(0), (0, 0));
}

#[test]
fn a_ping_flood_leaves_one_pending_pong() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    for round in 0..10u64 {
        let mut r = Vec::new();
        for i in 0..4000u64 {
            chunk(
                &mut r,
                0,
                Some((crate::wire::control::kind::PING, 8)),
                true,
                &(round * 4000 + i).to_be_bytes(),
            );
        }
        feed(&mut s, &mut c, &r, &config).unwrap();
    }
    assert_eq!(s.control.len(), 1);
    assert_eq!(s.control.front(), Some(&Control::Pong(39_999)), "the latest token is echoed");
}

#[test]
fn two_rekeys_in_one_record_advance_the_key_twice() {
    let config = Config::default();
    let (mut s, mut c) = receiver(&config);
    let mut r = Vec::new();
    for _ in 0..2 {
        chunk(&mut r, 0, Some((crate::wire::control::kind::REKEY, 0)), true, b"");
    }
    feed(&mut s, &mut c, &r, &config).unwrap();
    c.rekey();
    c.rekey();
    let mut r = Vec::new();
    chunk(&mut r, 1, Some((0, 2)), true, b"ok");
    assert_eq!(feed(&mut s, &mut c, &r, &config).unwrap().len(), 1);
}
