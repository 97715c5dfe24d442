//! End-to-end behaviour of two nodes without I/O.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::harness::{protocols, Pair, Side};
use crate::{
    Config, Direction, DisconnectReason, Event, HandshakePath, NodeId, Protocol, ProtocolId, SendError,
};

const CHAT: ProtocolId = ProtocolId(0);
const BLOCKS: ProtocolId = ProtocolId(1);

fn connected(events: &[Event]) -> Vec<(NodeId, HandshakePath, Direction)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PeerConnected { peer, path, direction, .. } => Some((*peer, *path, *direction)),
            _ => None,
        })
        .collect()
}

fn messages(events: &[Event]) -> Vec<(ProtocolId, u32, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { protocol, msg_type, payload, .. } => {
                Some((*protocol, *msg_type, payload.clone()))
            }
            _ => None,
        })
        .collect()
}

fn disconnected(events: &[Event]) -> Vec<(DisconnectReason, bool, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PeerDisconnected { reason, remote, unsent, .. } => Some((*reason, *remote, unsent.len())),
            _ => None,
        })
        .collect()
}

fn failed(events: &[Event]) -> Vec<DisconnectReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectionFailed { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn downgrades(events: &[Event]) -> Vec<(HandshakePath, HandshakePath)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::HandshakeDowngraded { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// Connects A to B by the full path and returns the pair.
fn connected_pair() -> Pair {
    let mut p = Pair::new();
    p.connect(None);
    p.drive();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    assert_eq!(connected(&p.take_events(Side::A)), vec![(b, HandshakePath::Full, Direction::Outbound)]);
    assert_eq!(connected(&p.take_events(Side::B)), vec![(a, HandshakePath::Full, Direction::Inbound)]);
    p
}

#[test]
fn full_handshake_negotiates_shared_protocols_and_exchanges_messages() {
    let mut a_protocols = protocols();
    a_protocols.push(Protocol::new("a-only", 1, 1));
    let mut b_protocols = vec![Protocol::new("blocks", 2, 16), Protocol::new("chat", 1, 4)];
    b_protocols.push(Protocol::new("chat", 0, 4));
    let mut p = Pair::with_configs(Config::with_protocols(a_protocols), Config::with_protocols(b_protocols));
    p.connect(None);
    p.drive();
    let ea = p.take_events(Side::A);
    let eb = p.take_events(Side::B);
    let pa = match &ea[0] {
        Event::PeerConnected { protocols, .. } => protocols.clone(),
        e => panic!("{e:?}"),
    };
    let pb = match &eb[0] {
        Event::PeerConnected { protocols, .. } => protocols.clone(),
        e => panic!("{e:?}"),
    };
    // Channel order is (name, version): blocks, chat.
    assert_eq!(pa, vec![BLOCKS, CHAT]);
    assert_eq!(pb, vec![ProtocolId(0), ProtocolId(1)]);
    let b = p.id(Side::B);
    p.a.send(&b, CHAT, 3, Bytes::from_static(b"hello")).unwrap();
    p.a.send(&b, BLOCKS, 15, Bytes::from_static(b"block")).unwrap();
    assert_eq!(p.a.send(&b, ProtocolId(2), 0, Bytes::new()), Err(SendError::ProtocolNotShared));
    assert_eq!(p.a.send(&b, CHAT, 4, Bytes::new()), Err(SendError::UnknownMessageType));
    p.drive();
    // On B, "chat" v1 is ProtocolId(1) and "blocks" ProtocolId(0).
    assert_eq!(
        messages(&p.take_events(Side::B)),
        vec![
            (ProtocolId(1), 3, Bytes::from_static(b"hello")),
            (ProtocolId(0), 15, Bytes::from_static(b"block"))
        ]
    );
}

#[test]
fn introduced_handshake_takes_one_round_trip() {
    let mut p = Pair::new();
    let b = p.id(Side::B);
    p.connect(Some(b));
    p.drive();
    // A is connected after one round trip; B after A's first record, which
    // confirms A's keys (so a replayed first message never connects).
    assert_eq!(p.times_a[0], crate::Instant::ZERO + p.latency * 2);
    assert_eq!(p.times_b[0], crate::Instant::ZERO + p.latency * 3);
    assert_eq!(connected(&p.take_events(Side::A))[0].1, HandshakePath::Introduced);
    assert_eq!(connected(&p.take_events(Side::B))[0].1, HandshakePath::Introduced);
}

#[test]
fn resumption_uses_the_previous_session_secret_once() {
    let mut p = connected_pair();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    assert!(p.a.has_ticket(&b) && p.b.has_ticket(&a));
    p.a.disconnect(&b, DisconnectReason::Requested, p.now);
    p.drive();
    assert_eq!(disconnected(&p.take_events(Side::A)), vec![(DisconnectReason::Requested, false, 0)]);
    assert_eq!(disconnected(&p.take_events(Side::B)), vec![(DisconnectReason::Requested, true, 0)]);
    p.connect(Some(b));
    p.drive();
    assert_eq!(connected(&p.take_events(Side::A)), vec![(b, HandshakePath::Resumed, Direction::Outbound)]);
    assert_eq!(connected(&p.take_events(Side::B)), vec![(a, HandshakePath::Resumed, Direction::Inbound)]);
    p.a.send(&b, CHAT, 0, Bytes::from_static(b"resumed")).unwrap();
    p.drive();
    assert_eq!(messages(&p.take_events(Side::B)).len(), 1);
    // The resumed session issued a fresh ticket on both sides.
    assert!(p.a.has_ticket(&b) && p.b.has_ticket(&a));
}

#[test]
fn failed_resumption_drops_the_ticket_and_falls_back_to_introduced() {
    let mut p = connected_pair();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    p.a.disconnect(&b, DisconnectReason::Requested, p.now);
    p.drive();
    p.take_events(Side::A);
    p.take_events(Side::B);
    // B lost its tickets (say, it restarted without persisting them).
    p.b.forget_ticket(&a);
    p.connect(Some(b));
    p.drive();
    let ea = p.take_events(Side::A);
    assert_eq!(downgrades(&ea), vec![(HandshakePath::Resumed, HandshakePath::Introduced)]);
    assert_eq!(connected(&ea), vec![(b, HandshakePath::Introduced, Direction::Outbound)]);
    assert_eq!(connected(&p.take_events(Side::B))[0].1, HandshakePath::Introduced);
}

#[test]
fn a_dial_naming_another_key_is_refused_not_handed_whoever_answers() {
    // A was introduced to `other` at B's address; B answers. The
    // introduced attempt fails (B cannot open it and asks for a retry),
    // the full handshake reaches B, and A refuses it: B is not the node
    // that was dialled.
    let mut p = Pair::new();
    let b = p.id(Side::B);
    let other = NodeId(super::harness::node(99, Config::default()).node_id().0);
    p.connect(Some(other));
    p.drive();
    let ea = p.take_events(Side::A);
    assert_eq!(downgrades(&ea), vec![(HandshakePath::Introduced, HandshakePath::Full)]);
    assert!(connected(&ea).is_empty(), "A never announces B as a peer: {ea:?}");
    assert!(
        ea.iter().any(|e| matches!(e, Event::ConnectionFailed { reason: DisconnectReason::WrongPeer, peer: Some(d), found: Some(f), .. } if *d == other && *f == b)),
        "{ea:?}"
    );
    assert!(!p.a.is_connected(&b) && !p.a.is_connected(&other));
    // B was told why.
    let eb = p.take_events(Side::B);
    assert!(
        eb.iter().any(|e| matches!(
            e,
            Event::PeerDisconnected { reason: DisconnectReason::WrongPeer, remote: true, .. }
        )),
        "{eb:?}"
    );
    assert_eq!(p.a.connection_count() + p.b.connection_count(), 0);
    // By address alone, whoever answers is accepted: that is the explicit choice.
    p.connect(None);
    p.drive();
    assert_eq!(connected(&p.take_events(Side::A)), vec![(b, HandshakePath::Full, Direction::Outbound)]);
}

#[test]
fn both_downgrades_in_one_connection() {
    // A holds a ticket for B. B is then replaced at the same address by a
    // node with another key and no tickets: resumption fails, the
    // introduced key fails, the full handshake reaches the new node, and
    // the dial is refused: the new node is not the one dialled.
    let mut p = connected_pair();
    let old_b = p.id(Side::B);
    p.a.disconnect(&old_b, DisconnectReason::Requested, p.now);
    p.drive();
    assert!(p.a.has_ticket(&old_b));
    let a = p.a;
    let mut p = Pair::from_nodes(a, super::harness::node(77, Config::with_protocols(protocols())));
    let new_b = p.id(Side::B);
    p.connect(Some(old_b));
    p.drive();
    let ea = p.take_events(Side::A);
    assert_eq!(
        downgrades(&ea),
        vec![
            (HandshakePath::Resumed, HandshakePath::Introduced),
            (HandshakePath::Introduced, HandshakePath::Full)
        ]
    );
    assert!(connected(&ea).is_empty(), "{ea:?}");
    assert!(
        ea.iter().any(|e| matches!(e, Event::ConnectionFailed { reason: DisconnectReason::WrongPeer, found: Some(f), .. } if *f == new_b)),
        "{ea:?}"
    );
    assert!(!p.a.has_ticket(&old_b), "the failed ticket is gone");
    assert!(!p.a.has_ticket(&new_b), "nothing is learnt from a refused connection");
}

#[test]
fn small_messages_share_records() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.wire_a.clear();
    for i in 0..100u32 {
        p.a.send(&b, CHAT, i % 4, Bytes::from(vec![i as u8; 64])).unwrap();
    }
    p.drive();
    let got = messages(&p.take_events(Side::B));
    assert_eq!(got.len(), 100);
    for (i, (_, t, payload)) in got.iter().enumerate() {
        assert_eq!(*t, i as u32 % 4);
        assert_eq!(payload[..], vec![i as u8; 64][..]);
    }
    // 100 × (64 + 5) bytes fit in one record: one frame on the wire.
    let frames = count_frames(&p.wire_a.concat());
    assert_eq!(frames, 1, "100 small messages should be sealed in one record");
    // ... and B polled them as one batch (recorded above as its messages).
    assert_eq!(p.batches, 1);
}

#[test]
fn a_send_batch_arrives_as_its_messages_in_order() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    let mut batch = crate::SendBatch::with_capacity(300, 300 * 70);
    for i in 0..300u32 {
        // Mostly small, with a few large ones that take several records.
        let len = if i % 100 == 7 { 70_000 } else { 40 + (i as usize % 30) };
        batch.push(i % 4, &vec![i as u8; len]);
    }
    let want: Vec<(ProtocolId, u32, Bytes)> =
        batch.iter().map(|(t, payload)| (CHAT, t, Bytes::copy_from_slice(payload))).collect();
    let bytes = batch.payload_bytes();
    p.a.send_packed(&b, CHAT, batch).unwrap();
    let m = &p.a.metrics()[0].protocols;
    let chat = m.iter().find(|m| m.protocol == CHAT).unwrap();
    assert_eq!((chat.queued_messages, chat.queued_bytes), (300, bytes));
    p.drive();
    assert_eq!(messages(&p.take_events(Side::B)), want);
    let m = &p.a.metrics()[0].protocols;
    let chat = m.iter().find(|m| m.protocol == CHAT).unwrap();
    assert_eq!(
        (chat.queued_messages, chat.queued_bytes, chat.messages_out, chat.bytes_out),
        (0, 0, 300, bytes as u64)
    );
}

#[test]
fn a_refused_send_batch_queues_nothing_and_comes_back_whole() {
    let config = {
        let mut config_ = Config::with_protocols(protocols());
        config_.limits.max_queued_per_protocol = 1000;
        config_
    };
    let mut p = Pair::with_configs(config, Config::with_protocols(protocols()[..2].to_vec()));
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    let batch = |msgs: &[(u32, usize)]| -> crate::SendBatch {
        let mut s = crate::SendBatch::new();
        for &(t, n) in msgs {
            s.push(t, &vec![t as u8; n]);
        }
        s
    };
    let only_local = ProtocolId(2);
    for (protocol, msgs, want) in [
        (CHAT, vec![(0, 10), (4, 10)], SendError::UnknownMessageType),
        (only_local, vec![(0, 10)], SendError::ProtocolNotShared),
        // Larger than the protocol's queue limit on its own: never fits.
        (CHAT, vec![(0, 600), (1, 600)], SendError::QueueFull),
    ] {
        let sent = batch(&msgs);
        let (e, back) = p.a.send_packed(&b, protocol, sent.clone()).unwrap_err();
        assert_eq!((e, &back), (want, &sent));
        assert!(p.a.metrics()[0].protocols.iter().all(|m| m.queued_messages == 0));
    }
    // Fits: queued whole; the next one would pass the limit.
    p.a.send_packed(&b, CHAT, batch(&[(0, 500), (1, 400)])).unwrap();
    let (e, back) = p.a.send_packed(&b, CHAT, batch(&[(2, 50), (3, 60)])).unwrap_err();
    assert_eq!((e, back.len()), (SendError::QueueFull, 2));
    p.drive();
    let got = messages(&p.take_events(Side::B));
    assert_eq!(got.iter().map(|(_, t, m)| (*t, m.len())).collect::<Vec<_>>(), vec![(0, 500), (1, 400)]);
    let stranger = NodeId([7; 32]);
    assert_eq!(p.a.send_packed(&stranger, CHAT, batch(&[(0, 1)])).unwrap_err().0, SendError::NotConnected);
}

#[test]
fn a_waiting_send_batch_is_queued_in_parts_as_room_appears() {
    // Room for five messages of 200 bytes, each counting 16 more.
    let config = {
        let mut config_ = Config::with_protocols(protocols());
        config_.limits.max_queued_per_peer = 5 * 216;
        config_
    };
    let mut p = Pair::with_configs(config, Config::with_protocols(protocols()));
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    let batch = |n: usize, len: usize| -> crate::SendBatch {
        let mut s = crate::SendBatch::new();
        (0..n).for_each(|i| s.push(0, &vec![i as u8; len]));
        s
    };
    let chat_queued = |p: &Pair| {
        let m = p.a.peer_metrics(&b).unwrap();
        m.protocols.iter().find(|m| m.protocol == CHAT).map(|m| m.queued_messages).unwrap()
    };
    let mut w: crate::Waiters<(), u32> = crate::Waiters::default();
    // CHAT holds three of the peer's five: of three more, the first two
    // are queued and the third waits.
    assert_eq!(w.send_packed(&mut p.a, b, CHAT, batch(3, 200), 1), Some((1, Ok(()))));
    assert!(w.send_packed(&mut p.a, b, CHAT, batch(3, 200), 2).is_none());
    assert_eq!(chat_queued(&p), 5);
    w.retry_sends(&mut p.a, |_, _| panic!("nothing was written yet"));
    assert_eq!(chat_queued(&p), 5, "still waiting");
    // Once written, the rest fits.
    p.drive();
    let mut done = Vec::new();
    w.retry_sends(&mut p.a, |r, res| done.push((r, res)));
    assert_eq!(done, vec![(2, Ok(()))]);
    assert_eq!(chat_queued(&p), 1);
    p.drive();
    let got: Vec<u8> = messages(&p.take_events(Side::B)).iter().map(|(_, _, m)| m[0]).collect();
    assert_eq!(got, vec![0, 1, 2, 0, 1, 2], "in order");
    // Another protocol fills the peer's queue and CHAT holds nothing: the
    // batch's messages go one by one (a protocol with nothing queued may
    // always queue one), instead of waiting for room that may never come.
    p.a.send(&b, BLOCKS, 0, Bytes::from(vec![1u8; 990])).unwrap();
    assert!(w.send_packed(&mut p.a, b, CHAT, batch(3, 200), 3).is_none());
    assert_eq!(chat_queued(&p), 1, "the first message, alone");
    // A message with an undefined type refuses the whole batch.
    let mut bad = batch(2, 10);
    bad.push(99, b"no such type");
    let Some((4, Err(e))) = w.send_packed(&mut p.a, b, BLOCKS, bad, 4) else { panic!("refused at once") };
    assert_eq!((e.error, e.unsent.len()), (SendError::UnknownMessageType, 3));
}

#[test]
fn empty_messages_count_against_the_queue_limits() {
    // Each queued message counts MESSAGE_OVERHEAD (16) bytes more than its
    // payload: a queue of empty messages fills up too.
    let per_message = crate::MESSAGE_OVERHEAD as usize;
    let config = {
        let mut config_ = Config::with_protocols(protocols());
        config_.limits.max_queued_per_protocol = 100 * per_message;
        config_.limits.max_queued_per_peer = 150 * per_message;
        config_
    };
    let mut p = Pair::with_configs(config, Config::with_protocols(protocols()));
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    let empty = Bytes::new();
    let queued = |p: &Pair, proto: ProtocolId| {
        let m = p.a.peer_metrics(&b).unwrap();
        m.protocols.iter().find(|m| m.protocol == proto).map(|m| m.queued_messages).unwrap()
    };
    // One by one: the protocol's limit.
    let sent = (0..1000).take_while(|_| p.a.send(&b, CHAT, 0, empty.clone()).is_ok()).count();
    assert_eq!(sent, 100);
    assert_eq!(p.a.send(&b, CHAT, 0, empty.clone()), Err(SendError::QueueFull));
    // A batch of handles: what fits is queued, the rest stays.
    let mut msgs: alloc::collections::VecDeque<(u32, Bytes)> = vec![(0, empty.clone()); 80].into();
    assert_eq!(p.a.send_queue(&b, BLOCKS, &mut msgs), Err(SendError::QueueFull));
    assert_eq!(msgs.len(), 30, "the peer's limit: 150 in all");
    // A send batch: all or nothing, or what fits.
    let mut batch = crate::SendBatch::new();
    (0..10).for_each(|_| batch.push(0, &[]));
    assert_eq!(p.a.send_packed(&b, BLOCKS, batch.clone()).unwrap_err().0, SendError::QueueFull);
    let (e, back) = p.a.send_packed_from(&b, BLOCKS, batch.clone(), true).unwrap_err();
    assert_eq!((e, back.len()), (SendError::QueueFull, 10), "the peer's queue is full: none fits");
    assert_eq!((queued(&p, CHAT), queued(&p, BLOCKS)), (100, 50));
    // Once written, there is room again: the first messages of a batch
    // that fit are queued, up to the protocol's limit.
    p.drive();
    let mut big = crate::SendBatch::new();
    (0..200).for_each(|_| big.push(0, &[]));
    let (e, back) = p.a.send_packed_from(&b, BLOCKS, big, true).unwrap_err();
    assert_eq!((e, back.len()), (SendError::QueueFull, 100));
    p.a.send_packed(&b, CHAT, batch).unwrap();
    p.drive();
    assert_eq!(messages(&p.take_events(Side::B)).len(), 100 + 50 + 100 + 10, "every message arrives");
    assert_eq!(p.a.queued_totals(), (0, 0), "the node's counters come back to zero");
    // Messages still queued at a disconnect come back, and leave the
    // counters at zero too.
    (0..20).for_each(|_| p.a.send(&b, CHAT, 0, empty.clone()).unwrap());
    assert_eq!(p.a.queued_totals(), (20, 0));
    p.a.disconnect(&b, DisconnectReason::Requested, p.now);
    p.drive();
    assert_eq!(p.a.queued_totals(), (0, 0));
}

#[test]
fn a_send_batch_still_queued_is_handed_back_message_by_message() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.a.send(&b, CHAT, 3, Bytes::from_static(b"first")).unwrap();
    let mut batch = crate::SendBatch::new();
    for i in 0..5u8 {
        batch.push(u32::from(i % 4), &[i; 3]);
    }
    p.a.send_packed(&b, CHAT, batch).unwrap();
    p.a.send(&b, BLOCKS, 9, Bytes::from_static(b"last")).unwrap();
    p.a.disconnect(&b, DisconnectReason::Requested, p.now);
    p.drive();
    let unsent = p
        .take_events(Side::A)
        .into_iter()
        .find_map(|e| match e {
            Event::PeerDisconnected { unsent, .. } => Some(unsent),
            _ => None,
        })
        .expect("disconnected");
    let got: Vec<(ProtocolId, u32, Vec<u8>)> =
        unsent.into_iter().map(|m| (m.protocol, m.msg_type, m.payload.to_vec())).collect();
    let mut want = vec![(CHAT, 3, b"first".to_vec())];
    want.extend((0..5u8).map(|i| (CHAT, u32::from(i % 4), vec![i; 3])));
    want.push((BLOCKS, 9, b"last".to_vec()));
    assert_eq!(got, want);
}

fn count_frames(mut wire: &[u8]) -> usize {
    let mut n = 0;
    while wire.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([wire[0], wire[1]]));
        wire = &wire[2 + len..];
        n += 1;
    }
    n
}

#[test]
fn large_messages_are_split_across_records_and_reassembled() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    let big: Vec<u8> = (0..(1 << 20) + 7).map(|i: u32| (i * 31 % 251) as u8).collect();
    p.a.send(&b, BLOCKS, 1, Bytes::from(big.clone())).unwrap();
    p.a.send(&b, CHAT, 2, Bytes::from_static(b"after")).unwrap();
    p.wire_a.clear();
    p.drive();
    let got = messages(&p.take_events(Side::B));
    assert_eq!(got.len(), 2);
    // The small message on another protocol overtakes the bulk transfer.
    assert_eq!(got[0].2, Bytes::from_static(b"after"));
    assert!(got[1].2[..] == big[..], "1 MiB message intact");
    assert!(count_frames(&p.wire_a.concat()) >= 16, "1 MiB in records of at most 64 KiB");
}

#[test]
fn protocols_share_the_link_by_weight() {
    let weighted = vec![Protocol::new("chat", 1, 4), Protocol::new("blocks", 2, 16).with_weight(3)];
    let mut p =
        Pair::with_configs(Config::with_protocols(weighted.clone()), Config::with_protocols(weighted));
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    for _ in 0..40 {
        p.a.send(&b, CHAT, 0, Bytes::from(vec![1u8; 64 << 10])).unwrap();
        p.a.send(&b, BLOCKS, 0, Bytes::from(vec![2u8; 64 << 10])).unwrap();
    }
    p.drive();
    let order: Vec<ProtocolId> = messages(&p.take_events(Side::B)).into_iter().map(|m| m.0).collect();
    assert_eq!(order.len(), 80);
    // While both are busy, blocks (weight 3) gets three times chat's bytes
    // (give or take one turn: a 64 KiB quantum is about one message).
    let at_ten_chat = order.iter().enumerate().filter(|(_, p)| **p == CHAT).nth(9).map(|(i, _)| i).unwrap();
    let blocks_by_then = order[..at_ten_chat].iter().filter(|p| **p == BLOCKS).count();
    assert!((27..=33).contains(&blocks_by_then), "{blocks_by_then} blocks messages per 10 chat messages");
}

#[test]
fn queued_messages_are_handed_back_on_disconnect() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    for i in 0..5u8 {
        p.a.send(&b, CHAT, 0, Bytes::from(vec![i])).unwrap();
    }
    p.a.disconnect(&b, DisconnectReason::Requested, p.now);
    let ev = {
        p.drive();
        p.take_events(Side::A)
    };
    let unsent = ev
        .iter()
        .find_map(|e| match e {
            Event::PeerDisconnected { unsent, .. } => Some(unsent.clone()),
            _ => None,
        })
        .expect("disconnected");
    let payloads: Vec<u8> = unsent.iter().map(|m| m.payload[0]).collect();
    assert_eq!(payloads, vec![0, 1, 2, 3, 4]);
    assert!(messages(&p.take_events(Side::B)).is_empty());
    assert_eq!(p.a.send(&b, CHAT, 0, Bytes::new()), Err(SendError::NotConnected));
}

#[test]
fn transport_loss_hands_back_unsent_messages() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.b_stalled = true;
    // Fill the pipe: the first poll writes, the rest stays queued.
    for i in 0..40u8 {
        p.a.send(&b, BLOCKS, 0, Bytes::from(vec![i; 100_000])).unwrap();
    }
    p.drive();
    let link = p.links[0];
    let now = p.now;
    p.a.handle_close(link.a, now);
    p.drive();
    let d = disconnected(&p.take_events(Side::A));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, DisconnectReason::TransportClosed);
    assert!(d[0].2 > 0, "messages still queued come back");
}

#[test]
fn keepalive_measures_rtt_and_idle_timeout_disconnects() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.advance(Duration::from_secs(16));
    let rtt = p.a.rtt(&b).expect("pinged");
    assert_eq!(rtt, p.latency * 2);
    assert!(p.a.is_connected(&b), "pings keep the connection alive");
    p.advance(Duration::from_secs(120));
    assert!(p.a.is_connected(&b));
    p.partitioned = true;
    p.a.send(&b, CHAT, 0, Bytes::from_static(b"lost")).unwrap();
    p.advance(Duration::from_secs(61));
    let d = disconnected(&p.take_events(Side::A));
    assert_eq!(d, vec![(DisconnectReason::IdleTimeout, false, 0)]);
}

#[test]
fn rekeying_keeps_the_session_working() {
    let mut c = Config::with_protocols(protocols());
    c.rekey.after_bytes = 10_000;
    let mut p = Pair::with_configs(c.clone(), c);
    p.connect(None);
    p.drive();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    p.take_events(Side::A);
    for round in 0..20u8 {
        p.a.send(&b, CHAT, 1, Bytes::from(vec![round; 3000])).unwrap();
        p.b.send(&a, CHAT, 1, Bytes::from(vec![round; 3000])).unwrap();
        p.drive();
    }
    assert_eq!(messages(&p.take_events(Side::B)).len(), 20);
    assert_eq!(messages(&p.take_events(Side::A)).len(), 20);
    // Time-based rekey too.
    p.advance(Duration::from_secs(3700));
    p.a.send(&b, CHAT, 1, Bytes::from_static(b"later")).unwrap();
    p.drive();
    assert_eq!(messages(&p.take_events(Side::B)).len(), 1);
}

#[test]
fn handshake_timeout_and_half_open_limit() {
    let mut c = Config::with_protocols(protocols());
    c.limits.max_handshaking = 3;
    let mut p = Pair::with_configs(Config::with_protocols(protocols()), c);
    let now = p.now;
    for _ in 0..3 {
        p.b.accept(crate::io::TEST_ADDR, now).unwrap();
    }
    assert_eq!(p.b.accept(crate::io::TEST_ADDR, now), Err(crate::ConnectError::TooManyHandshakes));
    p.advance(Duration::from_secs(11));
    let f = failed(&p.take_events(Side::B));
    assert_eq!(f, vec![DisconnectReason::HandshakeTimeout; 3]);
    assert_eq!(p.b.connection_count(), 0);
    assert!(p.b.accept(crate::io::TEST_ADDR, p.now).is_ok());
}

#[test]
fn no_shared_protocols_is_refused_with_a_reason() {
    let mut p = Pair::with_configs(
        Config::with_protocols(vec![Protocol::new("x", 1, 1)]),
        Config::with_protocols(vec![Protocol::new("y", 1, 1)]),
    );
    p.connect(None);
    p.drive();
    assert_eq!(failed(&p.take_events(Side::A)), vec![DisconnectReason::NoSharedProtocols]);
    let fb = failed(&p.take_events(Side::B));
    assert_eq!(fb, vec![DisconnectReason::NoSharedProtocols]);
    assert_eq!(p.a.connection_count() + p.b.connection_count(), 0);
}

#[test]
fn a_replayed_introduced_first_message_never_announces_a_peer() {
    let mut p = Pair::new();
    let b = p.id(Side::B);
    p.connect(Some(b));
    p.drive();
    p.take_events(Side::B);
    // An eavesdropper replays A's first message on a new connection to B.
    let mut first = p.wire_a[0].clone();
    let now = p.now;
    let replayed = p.b.accept(crate::io::TEST_ADDR, now).expect("accept");
    p.b.handle_input(replayed, &mut first, now);
    p.advance(Duration::from_secs(11));
    let eb = p.take_events(Side::B);
    assert!(connected(&eb).is_empty(), "{eb:?}");
    assert_eq!(failed(&eb), vec![DisconnectReason::HandshakeTimeout]);
    assert!(p.b.is_connected(&p.id(Side::A)), "the real connection is untouched");
}

#[test]
fn simultaneous_dials_keep_exactly_one_connection() {
    let mut p = Pair::new();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    p.connect(Some(b));
    p.connect_ba(Some(a));
    p.drive();
    assert!(p.a.is_connected(&b) && p.b.is_connected(&a));
    assert_eq!(p.a.connection_count(), 1);
    assert_eq!(p.b.connection_count(), 1);
    p.a.send(&b, CHAT, 0, Bytes::from_static(b"one")).unwrap();
    p.drive();
    assert_eq!(messages(&p.events_b).len(), 1);
}

#[test]
fn garbage_before_handshake_is_rejected() {
    let mut p = Pair::new();
    let link = p.connect(None);
    p.inject(Side::B, link, vec![0, 3, 0x42, 1, 2]);
    p.drive();
    assert_eq!(failed(&p.take_events(Side::B)), vec![DisconnectReason::ProtocolViolation]);
    // A learns the reason from B's REJECT frame.
    assert_eq!(failed(&p.take_events(Side::A)), vec![DisconnectReason::ProtocolViolation]);
}

#[test]
fn tampered_replayed_and_reordered_records_close_the_connection() {
    for mode in 0..3 {
        let mut p = connected_pair();
        let b = p.id(Side::B);
        let link = 0;
        p.a.send(&b, CHAT, 0, Bytes::from_static(b"one")).unwrap();
        // Capture the record instead of delivering it.
        let mut buf = Vec::new();
        let c = p.a.poll_transmit(p.now, &mut buf).unwrap();
        p.a.handle_written(c, p.now);
        p.a.send(&b, CHAT, 0, Bytes::from_static(b"two")).unwrap();
        let mut buf2 = Vec::new();
        let c = p.a.poll_transmit(p.now, &mut buf2).unwrap();
        p.a.handle_written(c, p.now);
        match mode {
            0 => {
                let last = buf.len() - 1;
                buf[last] ^= 0x80;
                p.inject(Side::B, link, buf);
            }
            1 => {
                p.inject(Side::B, link, buf.clone());
                p.inject(Side::B, link, buf);
            }
            _ => {
                p.inject(Side::B, link, buf2);
                p.inject(Side::B, link, buf);
            }
        }
        p.drive();
        let eb = p.take_events(Side::B);
        assert_eq!(disconnected(&eb), vec![(DisconnectReason::DecryptFailed, false, 0)], "mode {mode}");
        assert!(messages(&eb).len() <= 1);
    }
}

#[test]
fn a_peer_that_never_reads_gets_backpressure_not_memory() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.b_stalled = true;
    let mut sent = 0usize;
    loop {
        match p.a.send(&b, BLOCKS, 0, Bytes::from(vec![0u8; 64 << 10])) {
            Ok(()) => sent += 1,
            Err(SendError::QueueFull) => break,
            Err(e) => panic!("{e}"),
        }
        p.drive();
        assert!(sent < 10_000, "queue never filled");
    }
    let limit = p.a.config().limits.max_queued_per_peer;
    assert!(p.a.queued_bytes(&b) <= limit);
    assert!(p.a.buffered_bytes() <= limit + (1 << 20));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Mixed protocols, types and sizes both ways arrive exactly once, in
    /// order per protocol, uncorrupted, whatever the record size.
    #[test]
    fn messages_arrive_in_order(
        msgs in proptest::collection::vec((any::<bool>(), 0u32..4, 0usize..40_000, any::<u8>(), any::<bool>()), 1..60),
        record in 64usize..20_000,
    ) {
        let mut c = Config::with_protocols(protocols());
        c.records.max_record_size = record;
        let mut p = Pair::with_configs(c.clone(), c);
        p.connect(None);
        p.drive();
        let (a, b) = (p.id(Side::A), p.id(Side::B));
        p.take_events(Side::A);
        p.take_events(Side::B);
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        for (chat, t, len, fill, from_a) in msgs {
            let proto = if chat { CHAT } else { BLOCKS };
            let payload = Bytes::from(vec![fill; len]);
            if from_a {
                p.a.send(&b, proto, t, payload.clone()).unwrap();
                to_b.push((proto, t, payload));
            } else {
                p.b.send(&a, proto, t, payload.clone()).unwrap();
                to_a.push((proto, t, payload));
            }
        }
        p.drive();
        // Order is kept per protocol; protocols interleave by the scheduler.
        let per_protocol = |v: Vec<(ProtocolId, u32, Bytes)>, proto: ProtocolId| -> Vec<(u32, Bytes)> {
            v.into_iter().filter(|m| m.0 == proto).map(|m| (m.1, m.2)).collect()
        };
        let (got_b, got_a) = (messages(&p.take_events(Side::B)), messages(&p.take_events(Side::A)));
        for proto in [CHAT, BLOCKS] {
            prop_assert_eq!(per_protocol(got_b.clone(), proto), per_protocol(to_b.clone(), proto));
            prop_assert_eq!(per_protocol(got_a.clone(), proto), per_protocol(to_a.clone(), proto));
        }
        prop_assert_eq!(got_b.len(), to_b.len());
        prop_assert_eq!(got_a.len(), to_a.len());
    }

    /// Arbitrary bytes fed to a node in any phase never panic and end in a
    /// closed connection with a reason, or are buffered as a partial frame.
    #[test]
    fn arbitrary_input_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        established in any::<bool>(),
    ) {
        let mut p = if established { connected_pair() } else { Pair::new() };
        let link = if established { 0 } else { p.connect(None) };
        p.inject(Side::B, link, junk);
        p.advance(Duration::from_secs(20));
        for e in p.take_events(Side::B) {
            if let Event::ConnectionFailed { reason, .. } | Event::PeerDisconnected { reason, .. } = e {
                prop_assert!(reason != DisconnectReason::Unknown(0));
            }
        }
    }
}

/// A hub connected to several leaves, driven without I/O.
struct Star {
    hub: crate::Node,
    leaves: Vec<(crate::Node, crate::ConnectionId, crate::ConnectionId)>,
}

impl Star {
    fn new(n: usize, leaf_protocols: impl Fn(usize) -> Vec<Protocol>) -> Self {
        let mut hub = super::harness::node(100, Config::with_protocols(protocols()));
        let now = crate::Instant::ZERO;
        let leaves = (0..n)
            .map(|i| {
                let mut leaf =
                    super::harness::node(200 + i as u64, Config::with_protocols(leaf_protocols(i)));
                let cl = leaf.dial_opened(None, now).unwrap();
                let ch = hub.accept(crate::io::TEST_ADDR, now).unwrap();
                (leaf, cl, ch)
            })
            .collect();
        let mut s = Star { hub, leaves };
        s.pump();
        s
    }

    fn pump(&mut self) -> Vec<Vec<Event>> {
        let now = crate::Instant::ZERO;
        let mut events = vec![Vec::new(); self.leaves.len()];
        for _ in 0..100 {
            let mut moved = false;
            let mut buf = Vec::new();
            while let Some(c) = self.hub.poll_transmit(now, &mut buf) {
                self.hub.handle_written(c, now);
                if let Some((leaf, cl, _)) = self.leaves.iter_mut().find(|l| l.2 == c) {
                    leaf.handle_input(*cl, &mut buf, now);
                }
                buf.clear();
                moved = true;
            }
            for (i, (leaf, _, ch)) in self.leaves.iter_mut().enumerate() {
                while let Some(c) = leaf.poll_transmit(now, &mut buf) {
                    leaf.handle_written(c, now);
                    self.hub.handle_input(*ch, &mut buf, now);
                    buf.clear();
                    moved = true;
                }
                while let Some(e) = leaf.poll_event() {
                    events[i].push(e);
                }
            }
            while self.hub.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
        events
    }
}

#[test]
fn broadcast_reaches_every_peer_speaking_the_protocol_sharing_one_buffer() {
    // Leaf 2 does not speak "chat".
    let mut star = Star::new(4, |i| if i == 2 { vec![Protocol::new("blocks", 2, 16)] } else { protocols() });
    assert_eq!(star.hub.peers().count(), 4);
    let payload = Bytes::from(vec![7u8; 10_000]);
    let out = star.hub.broadcast(CHAT, 1, payload.clone());
    assert_eq!(out.sent.len(), 3);
    assert!(out.failed.is_empty());
    // Every queued copy is the same buffer: disconnecting hands them back
    // and they all point at the original bytes.
    star.hub.shutdown(crate::Instant::ZERO);
    let mut handed_back = Vec::new();
    while let Some(e) = star.hub.poll_event() {
        if let Event::PeerDisconnected { unsent, .. } = e {
            handed_back.extend(unsent);
        }
    }
    assert_eq!(handed_back.len(), 3);
    assert!(handed_back.iter().all(|m| m.payload.as_ptr() == payload.as_ptr()));

    let mut star = Star::new(4, |i| if i == 2 { vec![Protocol::new("blocks", 2, 16)] } else { protocols() });
    star.hub.broadcast(CHAT, 1, payload.clone());
    let events = star.pump();
    for (i, ev) in events.iter().enumerate() {
        let got = messages(ev);
        if i == 2 {
            assert!(got.is_empty());
        } else {
            assert_eq!(got, vec![(ProtocolId(0), 1, payload.clone())]);
        }
    }
}

#[test]
fn metrics_count_traffic_and_queues_per_protocol() {
    let mut p = connected_pair();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    for _ in 0..3 {
        p.a.send(&b, CHAT, 0, Bytes::from(vec![1u8; 100])).unwrap();
    }
    p.a.send(&b, BLOCKS, 0, Bytes::from(vec![2u8; 100_000])).unwrap();
    p.drive();
    let ma = p.a.peer_metrics(&b).expect("connected");
    let mb = p.b.peer_metrics(&a).expect("connected");
    let find = |m: &crate::PeerMetrics, id| *m.protocols.iter().find(|x| x.protocol == id).expect("shared");
    let (a_chat, a_blocks) = (find(&ma, CHAT), find(&ma, BLOCKS));
    assert_eq!((a_chat.messages_out, a_chat.bytes_out), (3, 300));
    assert_eq!((a_blocks.messages_out, a_blocks.bytes_out), (1, 100_000));
    // B registered "chat" as ProtocolId(0) and "blocks" as ProtocolId(1) too.
    assert_eq!((find(&mb, CHAT).messages_in, find(&mb, CHAT).bytes_in), (3, 300));
    assert_eq!((find(&mb, BLOCKS).messages_in, find(&mb, BLOCKS).bytes_in), (1, 100_000));
    assert_eq!(a_chat.queued_messages, 0);
    // With B not reading, the queue depth shows.
    p.b_stalled = true;
    for _ in 0..20 {
        p.a.send(&b, BLOCKS, 1, Bytes::from(vec![3u8; 64 << 10])).unwrap();
    }
    p.drive();
    let q = find(&p.a.peer_metrics(&b).unwrap(), BLOCKS);
    assert!(q.queued_messages > 10 && q.queued_bytes > 10 * (64 << 10), "{q:?}");
    assert_eq!(p.a.metrics().len(), 1);
}

#[test]
fn padded_records_have_only_the_configured_sizes() {
    let buckets = vec![128, 1024, 8192];
    let mut c = Config::with_protocols(protocols());
    c.shaping.padding_buckets = buckets.clone();
    let mut p = Pair::with_configs(c.clone(), c);
    p.connect(None);
    p.drive();
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    p.take_events(Side::B);
    p.wire_a.clear();
    p.wire_b.clear();
    let sizes = [0usize, 1, 60, 100, 500, 1000, 5000, 8000, 20_000, 100_000];
    for &n in &sizes {
        p.a.send(&b, CHAT, 0, Bytes::from(vec![5u8; n])).unwrap();
        p.b.send(&a, BLOCKS, 0, Bytes::from(vec![6u8; n])).unwrap();
        p.drive();
    }
    p.advance(Duration::from_secs(20)); // keepalives too
    let got = messages(&p.take_events(Side::B));
    assert_eq!(got.iter().map(|m| m.2.len()).collect::<Vec<_>>(), sizes);
    let mut frames = 0;
    for wire in p.wire_a.iter().chain(p.wire_b.iter()) {
        let mut w = &wire[..];
        while w.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([w[0], w[1]]));
            assert!(buckets.contains(&len), "record body of {len} bytes");
            w = &w[2 + len..];
            frames += 1;
        }
    }
    assert!(frames > 40, "{frames} records checked");
}

#[test]
fn a_connection_rate_cap_holds() {
    let mut c = Config::with_protocols(protocols());
    c.shaping.max_connection_rate = Some(200_000);
    let mut p = Pair::with_configs(c.clone(), c);
    p.latency = Duration::from_millis(1);
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    p.take_events(Side::B);
    for _ in 0..10 {
        p.a.send(&b, BLOCKS, 0, Bytes::from(vec![1u8; 200_000])).unwrap();
    }
    let start = p.now;
    p.advance(Duration::from_secs(5));
    let delivered = messages(&p.take_events(Side::B)).len();
    // 5 s at 200 kB/s is 1 MB: five messages (one record of burst aside).
    assert!((4..=5).contains(&delivered), "{delivered} messages after {:?}", p.now - start);
    p.advance(Duration::from_secs(6));
    assert_eq!(messages(&p.take_events(Side::B)).len(), 10 - delivered);
}

#[test]
fn a_node_rate_cap_holds() {
    let mut hub_cfg = Config::with_protocols(protocols());
    hub_cfg.shaping.max_node_rate = Some(100_000);
    let mut p = Pair::with_configs(hub_cfg, Config::with_protocols(protocols()));
    p.latency = Duration::from_millis(1);
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    p.take_events(Side::B);
    for _ in 0..40 {
        p.a.send(&b, BLOCKS, 0, Bytes::from(vec![1u8; 50_000])).unwrap();
    }
    p.advance(Duration::from_secs(10));
    let delivered = messages(&p.take_events(Side::B)).len();
    // 10 s at 100 kB/s is 1 MB; the burst and one record of overdraft
    // (about 130 kB) may come on top.
    assert!((19..=23).contains(&delivered), "{delivered} messages of 50 kB in 10 s at 100 kB/s");
}

#[test]
fn cover_traffic_keeps_an_idle_link_busy_with_padded_records() {
    let mut c = Config::with_protocols(protocols());
    c.shaping.cover_traffic_interval = Some(Duration::from_millis(100));
    c.shaping.padding_buckets = vec![512];
    let mut p = Pair::with_configs(c.clone(), c);
    p.connect(None);
    p.drive();
    p.take_events(Side::B);
    p.wire_a.clear();
    p.advance(Duration::from_secs(1));
    let mut records = 0;
    for wire in &p.wire_a {
        let mut w = &wire[..];
        while w.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([w[0], w[1]]));
            assert_eq!(len, 512);
            w = &w[2 + len..];
            records += 1;
        }
    }
    assert!((9..=11).contains(&records), "{records} cover records in 1 s");
    assert!(messages(&p.take_events(Side::B)).is_empty());
    assert!(p.b.is_connected(&p.id(Side::A)));
}

/// A connected pair whose B says itself when its application consumed a
/// message (`manual_consume`), granting `window` per protocol.
fn consuming_pair(window: u64) -> Pair {
    let mut cb = Config::with_protocols(protocols());
    cb.flow.manual_consume = true;
    cb.flow.receive_window = window;
    let mut p = Pair::with_configs(Config::with_protocols(protocols()), cb);
    p.connect(None);
    p.drive();
    p.take_events(Side::A);
    p.take_events(Side::B);
    p
}

#[test]
fn a_stalled_consumer_stops_only_its_own_protocol_and_memory_stays_bounded() {
    let window = 256 << 10;
    let mut p = consuming_pair(window);
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    let msg = Bytes::from(vec![7u8; 16 << 10]);
    let (mut chat_refused, mut chat_held, mut blocks_bytes) = (0usize, Vec::new(), 0usize);
    // B's application handles BLOCKS at once and never gets to CHAT.
    for round in 0..400 {
        for _ in 0..4 {
            match p.a.send(&b, CHAT, 0, msg.clone()) {
                Ok(()) => {}
                Err(SendError::QueueFull) => chat_refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        for _ in 0..8 {
            if p.a.send(&b, BLOCKS, 0, msg.clone()).is_err() {
                break;
            }
        }
        p.drive();
        for ev in p.take_events(Side::B) {
            if let Event::Message { connection, protocol, payload, .. } = ev {
                if protocol == CHAT {
                    chat_held.push((connection, payload));
                } else {
                    blocks_bytes += payload.len();
                    p.b.consume(connection, protocol, 1, payload.len() as u64);
                }
            }
        }
        // What B holds for CHAT never exceeds the window it granted.
        let held: u64 = chat_held.iter().map(|m| m.1.len() as u64 + crate::MESSAGE_OVERHEAD).sum();
        assert!(held <= window, "B holds {held} bytes of CHAT");
        let mb = p.b.peer_metrics(&a).expect("connected");
        assert_eq!(mb.protocols.iter().find(|m| m.protocol == CHAT).map(|m| m.unconsumed), Some(held));
        // A's queue for CHAT is capped; BLOCKS still has room.
        let ma = p.a.peer_metrics(&b).expect("connected");
        let chat = ma.protocols.iter().find(|m| m.protocol == CHAT).expect("chat");
        assert!(chat.queued_bytes <= p.a.config().limits.max_queued_per_protocol);
        if round >= 8 {
            assert!(chat.send_credit < msg.len() as i64 + 16, "A is out of CHAT credit");
        }
        assert!(p.a.buffered_bytes() <= p.a.config().limits.max_queued_per_peer + (1 << 20));
    }
    assert!(chat_refused > 0, "send surfaced backpressure on CHAT");
    assert!(blocks_bytes >= 400 * 8 * (16 << 10), "BLOCKS kept flowing: {blocks_bytes}");
    assert_eq!(
        chat_held.len() * (16 << 10) + chat_held.len() * 16,
        window as usize / (16 * 1024 + 16) * (16 * 1024 + 16)
    );
    // Once B's application catches up, CHAT flows again.
    let n = chat_held.len() as u64;
    p.b.consume(chat_held[0].0, CHAT, n, n * (16 << 10));
    p.drive();
    let more = messages(&p.take_events(Side::B)).iter().filter(|m| m.0 == CHAT).count();
    assert!(more > 0, "CHAT resumed");
}

#[test]
fn busy_protocols_share_the_in_flight_limit_and_one_alone_uses_its_window() {
    const WINDOW: u64 = 1 << 20;
    // What B holds unconsumed per protocol once A has sent all it may.
    let held = |busy: &[ProtocolId]| -> Vec<u64> {
        let mut ca = Config::with_protocols(protocols());
        ca.flow.max_in_flight_per_peer = WINDOW;
        let mut cb = Config::with_protocols(protocols());
        cb.flow.manual_consume = true;
        cb.flow.receive_window = WINDOW;
        let mut p = Pair::with_configs(ca, cb);
        p.connect(None);
        p.drive();
        let (a, b) = (p.id(Side::A), p.id(Side::B));
        let msg = Bytes::from(vec![3u8; 64 << 10]);
        for _ in 0..40 {
            for &proto in busy {
                p.a.send(&b, proto, 0, msg.clone()).expect("queued");
            }
        }
        p.drive();
        let m = p.b.peer_metrics(&a).expect("connected");
        busy.iter()
            .map(|&proto| m.protocols.iter().find(|x| x.protocol == proto).unwrap().unconsumed)
            .collect()
    };
    let cost = (64 << 10) + crate::MESSAGE_OVERHEAD;
    // Alone, BLOCKS fills the peer's whole window.
    assert_eq!(held(&[BLOCKS]), vec![WINDOW / cost * cost]);
    // Busy together, CHAT and BLOCKS each keep half the limit in flight.
    let both = held(&[CHAT, BLOCKS]);
    assert_eq!(both, vec![WINDOW / 2 / cost * cost; 2], "{both:?}");
}

#[test]
fn caught_up_credit_rides_with_a_reply_or_follows_within_the_delay() {
    let mut p = consuming_pair(1 << 20);
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    let credit = |p: &mut Pair| {
        let m = p.a.peer_metrics(&b).expect("connected");
        m.protocols.iter().find(|x| x.protocol == CHAT).expect("chat").send_credit
    };
    let full = credit(&mut p);
    let consume_one = |p: &mut Pair| {
        p.a.send(&b, CHAT, 0, Bytes::from_static(&[5; 100])).unwrap();
        p.drive();
        for ev in p.take_events(Side::B) {
            if let Event::Message { connection, protocol, payload, .. } = ev {
                p.b.consume(connection, protocol, 1, payload.len() as u64);
            }
        }
        p.drive();
    };
    // B consumed all it got: the credit waits for a record to ride in...
    consume_one(&mut p);
    assert_eq!(credit(&mut p), full - 116, "no record of its own at once");
    // ... such as B's reply, which brings it back.
    p.b.send(&a, CHAT, 1, Bytes::from_static(b"reply")).unwrap();
    p.drive();
    assert_eq!(credit(&mut p), full);
    // Without a reply it follows on its own within the delay.
    consume_one(&mut p);
    assert_eq!(credit(&mut p), full - 116);
    p.advance(crate::session::flow::CAUGHT_UP_DELAY);
    assert_eq!(credit(&mut p), full);
}

#[test]
fn credit_is_returned_when_events_are_polled_by_default() {
    let mut c = Config::with_protocols(protocols());
    c.flow.receive_window = 4096;
    let mut p = Pair::with_configs(c.clone(), c);
    p.connect(None);
    p.drive();
    let b = p.id(Side::B);
    // 100 messages of 1000 bytes need the 4 KiB window many times over.
    for i in 0..100u32 {
        p.a.send(&b, BLOCKS, i % 16, Bytes::from(vec![i as u8; 1000])).unwrap();
    }
    p.drive();
    let got = messages(&p.take_events(Side::B));
    assert_eq!(got.len(), 100);
    assert!(got.iter().enumerate().all(|(i, m)| m.1 == i as u32 % 16 && m.2[0] == i as u8));
}

#[test]
fn a_batch_waits_for_queue_space_in_order_and_hands_back_what_is_refused() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    let mut w: crate::Waiters<(), u32> = crate::Waiters::default();
    // 6.25 MiB of 64 KiB messages: more than one protocol's 4 MiB queue.
    let batch: Vec<(u32, Bytes)> =
        (0..100u32).map(|i| (i % 16, Bytes::from(vec![i as u8; 64 << 10]))).collect();
    assert!(w.send_batch(&mut p.a, b, BLOCKS, batch, 1).is_none(), "part of the batch waits");
    assert!(w.has_waiting_sends());
    // A later batch on another protocol is not held up by it.
    let other = w.send_batch(&mut p.a, b, CHAT, vec![(0, Bytes::from_static(b"hi"))], 2);
    assert_eq!(other, Some((2, Ok(()))));
    let mut done = Vec::new();
    for _ in 0..100 {
        p.drive();
        w.retry_sends(&mut p.a, |reply, r| done.push((reply, r)));
        if !done.is_empty() {
            break;
        }
    }
    assert_eq!(done, vec![(1, Ok(()))]);
    p.drive();
    let got = messages(&p.take_events(Side::B));
    let blocks: Vec<u8> = got.iter().filter(|m| m.0 == BLOCKS).map(|m| m.2[0]).collect();
    assert_eq!(blocks, (0..100u8).collect::<Vec<_>>(), "all of the batch, in order");
    // A refusal mid-batch hands back that message and the rest, in order.
    let batch =
        vec![(1, Bytes::from_static(b"a")), (99, Bytes::from_static(b"b")), (2, Bytes::from_static(b"c"))];
    let (_, r) = w.send_batch(&mut p.a, b, BLOCKS, batch, 3).expect("resolved at once");
    let e = r.expect_err("type 99 is not defined");
    assert_eq!(e.error, SendError::UnknownMessageType);
    assert_eq!(e.unsent, vec![(99, Bytes::from_static(b"b")), (2, Bytes::from_static(b"c"))]);
}

/// Outputs whose recycled buffers come back dirty, as a runtime's might,
/// and whose writer has room for `room` buffers before it is full.
#[derive(Default)]
struct DirtyBuffers {
    written: Vec<Vec<u8>>,
    room: usize,
}

impl crate::Outputs<(), u32> for DirtyBuffers {
    fn buffer(&mut self) -> Vec<u8> {
        vec![0xaa; 10]
    }
    fn recycle(&mut self, _: Vec<u8>) {}
    fn write(&mut self, _: crate::ConnectionId, buf: Vec<u8>) -> Result<bool, Vec<u8>> {
        self.written.push(buf);
        self.room = self.room.saturating_sub(1);
        Ok(self.room > 0)
    }
    fn close(&mut self, _: crate::ConnectionId) {}
    fn dial(&mut self, _: crate::Dial) {}
    fn datagram(&mut self, _: core::net::SocketAddr, _: Vec<u8>) {}
    fn event(&mut self, _: crate::Event) {}
    fn dial_done(&mut self, _: (), _: Result<crate::NodeId, crate::DialFailure>) {}
    fn send_done(&mut self, _: u32, _: Result<(), crate::BatchError>) {}
}

#[test]
fn bytes_left_in_a_reused_buffer_never_reach_a_connection() {
    let mut p = connected_pair();
    let b = p.id(Side::B);
    p.a.send(&b, CHAT, 0, Bytes::from_static(b"hello")).unwrap();
    let mut w: crate::Waiters<(), u32> = crate::Waiters::default();
    let mut out = DirtyBuffers::default();
    w.drain(&mut p.a, p.now, &mut out);
    assert!(!out.written.is_empty(), "the message was written");
    assert!(out.written.iter().all(|buf| !buf.starts_with(&[0xaa; 10])), "stale bytes were sent");
}

#[test]
fn a_writer_with_room_is_given_the_next_buffer_at_once() {
    for room in [1, 2, 3] {
        let mut p = connected_pair();
        let b = p.id(Side::B);
        let conn = p.links[0].a;
        // 2 MiB queued: eight buffers of `max_transmit_size` (256 KiB).
        for _ in 0..32 {
            p.a.send(&b, BLOCKS, 0, Bytes::from(vec![7u8; 64 << 10])).unwrap();
        }
        let mut w: crate::Waiters<(), u32> = crate::Waiters::default();
        let mut out = DirtyBuffers { room, ..DirtyBuffers::default() };
        w.drain(&mut p.a, p.now, &mut out);
        // Every write the runtime acknowledged at once (room left) let the
        // drain seal the next buffer; the one that filled the writer waits.
        assert_eq!(out.written.len(), room, "buffers handed over with room for {room}");
        assert!(out.written.iter().all(|b| b.len() >= 256 << 10));
        w.drain(&mut p.a, p.now, &mut out);
        assert_eq!(out.written.len(), room, "nothing more until the writer has room");
        // The writer wrote one: the runtime acknowledges the owed buffer.
        out.room = 1;
        p.a.handle_written(conn, p.now);
        w.drain(&mut p.a, p.now, &mut out);
        assert_eq!(out.written.len(), room + 1);
    }
}

#[test]
fn stalled_protocols_cannot_take_the_whole_peer_queue_from_another() {
    let mut p = consuming_pair(64 << 10);
    let b = p.id(Side::B);
    // B's application consumes neither CHAT nor BLOCKS: A fills both
    // protocols' queues (4 MiB each, the peer's 8 MiB in all).
    let msg = Bytes::from(vec![1u8; 64 << 10]);
    for proto in [CHAT, BLOCKS] {
        for _ in 0..200 {
            if p.a.send(&b, proto, 0, msg.clone()).is_err() {
                break;
            }
            p.drive();
        }
    }
    assert!(p.a.queued_bytes(&b) >= 7 << 20, "the peer queue is (nearly) full: {}", p.a.queued_bytes(&b));
    assert_eq!(p.a.send(&b, CHAT, 0, msg.clone()), Err(SendError::QueueFull));
    // A third protocol still gets through.
    const THIRD: ProtocolId = ProtocolId(2);
    p.a.send(&b, THIRD, 0, Bytes::from_static(b"still flowing")).expect("one message always fits");
    p.drive();
    let got = messages(&p.take_events(Side::B));
    assert!(got.iter().any(|m| m.0 == THIRD && &m.2[..] == b"still flowing"));
}

#[test]
fn consuming_messages_of_a_closed_connection_returns_no_credit_to_the_next() {
    let mut p = consuming_pair(64 << 10);
    let (a, b) = (p.id(Side::A), p.id(Side::B));
    let msg = Bytes::from(vec![2u8; 16 << 10]);
    let fill = |p: &mut Pair| {
        for _ in 0..8 {
            let _ = p.a.send(&b, CHAT, 0, msg.clone());
            p.drive();
        }
        p.take_events(Side::B)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message { connection, payload, .. } => Some((connection, payload.len())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let old = fill(&mut p);
    assert_eq!(old.len(), 3, "a 64 KiB window holds three 16 KiB messages");
    // The peer reconnects; the application still holds the old messages.
    p.b.disconnect(&a, DisconnectReason::Requested, p.now);
    p.drive();
    p.take_events(Side::A);
    p.take_events(Side::B);
    p.connect(None);
    p.drive();
    p.take_events(Side::B);
    let new = fill(&mut p);
    assert_eq!(new.len(), 3);
    assert_ne!(new[0].0, old[0].0, "another connection");
    let credit = |p: &Pair| p.a.peer_metrics(&b).expect("connected").protocols[0].send_credit;
    let before = credit(&p);
    // Consuming the old connection's messages returns nothing to the new one.
    for (c, len) in &old {
        p.b.consume(*c, CHAT, 1, *len as u64);
    }
    p.drive();
    assert_eq!(credit(&p), before);
    assert!(messages(&p.take_events(Side::B)).is_empty(), "nothing more was let through");
    // Consuming the new ones does: A's queued messages flow again.
    for (c, len) in &new {
        p.b.consume(*c, CHAT, 1, *len as u64);
    }
    p.drive();
    assert_eq!(messages(&p.take_events(Side::B)).len(), 3);
}

#[test]
fn a_dial_is_an_output_the_runtime_answers() {
    let mut p = Pair::new();
    let b = p.id(Side::B);
    let addr: core::net::SocketAddr = "[2001:db8::7]:30303".parse().unwrap();
    let now = p.now;
    let c = p.a.dial(crate::PeerAddr::with_id(b, addr), now).unwrap();
    assert_eq!(p.a.poll_dial(), Some(crate::Dial { connection: c, addr }));
    assert_eq!(p.a.poll_dial(), None);
    assert_eq!(p.a.remote_addr(c), Some(addr));
    // Nothing is written before the transport is open.
    assert_eq!(p.a.poll_transmit(now, &mut Vec::new()), None);
    assert!(p.a.handle_connected(c, now));
    let mut first = Vec::new();
    assert_eq!(p.a.poll_transmit(now, &mut first), Some(c), "the handshake starts once connected");
    assert!(!first.is_empty());
    // A second answer for the same dial is refused.
    assert!(!p.a.handle_connected(c, now));
}

#[test]
fn a_dial_that_cannot_connect_fails_as_unreachable_and_closes_once() {
    let mut p = Pair::new();
    let now = p.now;
    let c = p.a.dial(crate::PeerAddr::from(crate::io::TEST_ADDR), now).unwrap();
    let _ = p.a.poll_dial();
    p.a.handle_dial_failed(c, now);
    let ev: Vec<Event> = core::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(
        matches!(ev.as_slice(), [Event::ConnectionFailed { connection, peer: None, reason: DisconnectReason::Unreachable, .. }] if *connection == c),
        "{ev:?}"
    );
    assert_eq!(p.a.poll_close(), Some(c));
    assert_eq!(p.a.poll_close(), None);
    assert_eq!(p.a.connection_count(), 0);
    // A late answer for the abandoned dial is refused.
    assert!(!p.a.handle_connected(c, now));
}

#[test]
fn a_dial_that_never_connects_times_out_and_a_late_transport_is_refused() {
    let mut p = Pair::new();
    let b = p.id(Side::B);
    let now = p.now;
    let c = p.a.dial(crate::PeerAddr::with_id(b, crate::io::TEST_ADDR), now).unwrap();
    let _ = p.a.poll_dial();
    assert!(p.a.poll_timeout().is_some(), "the handshake timeout covers connecting");
    p.advance(Duration::from_secs(11));
    let ev = p.take_events(Side::A);
    assert_eq!(failed(&ev), vec![DisconnectReason::HandshakeTimeout]);
    assert!(matches!(ev.as_slice(), [Event::ConnectionFailed { peer: Some(x), .. }] if *x == b));
    assert_eq!(p.a.connection_count(), 0);
    assert!(!p.a.handle_connected(c, p.now), "the runtime must close a transport that opens late");
}

#[test]
fn dialling_oneself_by_id_is_refused_before_any_transport() {
    let mut p = Pair::new();
    let a = p.id(Side::A);
    let now = p.now;
    assert_eq!(
        p.a.dial(crate::PeerAddr::with_id(a, crate::io::TEST_ADDR), now),
        Err(crate::ConnectError::SelfConnect)
    );
    assert_eq!(p.a.poll_dial(), None);
}

#[test]
fn peer_connected_carries_the_remote_address_and_datagrams_are_counted() {
    let mut p = Pair::new();
    p.connect(None);
    p.drive();
    let ea = p.take_events(Side::A);
    let eb = p.take_events(Side::B);
    for ev in [&ea, &eb] {
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::PeerConnected { addr, .. } if *addr == crate::io::TEST_ADDR)),
            "{ev:?}"
        );
    }
    let now = p.now;
    assert_eq!(p.b.datagrams_dropped(), 0);
    p.b.handle_datagram(crate::io::TEST_ADDR, &mut [1, 2, 3], now);
    assert_eq!(p.b.datagrams_dropped(), 1);
    assert_eq!(p.b.poll_datagram(&mut Vec::new()), None);
}
