//! Nodes over real TCP, on every pairing of runtimes: 10,000 messages of
//! mixed protocols and sizes both ways (content and order checked), every
//! handshake path and both downgrades, malformed input and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devp2p_core::{
    Bytes, Config, DisconnectReason, Event, HandshakePath, Keypair, NodeId, PeerAddr, ProtocolId,
};
use devp2p_integration::{
    expect_event, spawn_on, spawn_with_capacity, spawn_with_config, AnyEvents, Runtime,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use Runtime::{Smol, Tokio};

/// Deterministic payload for message `i`: sizes from 0 to 1 MiB, mostly small.
fn payload(i: u32) -> Bytes {
    let len = match i % 1000 {
        0 => 1 << 20,
        1..=9 => 64 << 10,
        _ => (i as usize * 7919) % 4096,
    };
    Bytes::from((0..len).map(|j| (i as usize * 131 + j) as u8).collect::<Vec<u8>>())
}

fn route(i: u32) -> (ProtocolId, u32) {
    match i % 3 {
        0 => (ProtocolId(0), i % 4),
        1 => (ProtocolId(1), i % 8),
        _ => (ProtocolId(2), i % 2),
    }
}

const N: u32 = 10_000;

/// Receives the N messages sent with `route(i + offset)` and
/// `payload(i + offset)`: each exactly once, intact, and in send order per
/// protocol (protocols interleave by the scheduler).
async fn check(offset: u32, mut events: AnyEvents, from: NodeId) -> AnyEvents {
    let mut expected: [std::collections::VecDeque<u32>; 3] = Default::default();
    for i in 0..N {
        expected[route(i + offset).0 .0 as usize].push_back(i + offset);
    }
    let mut received = 0u32;
    while received < N {
        let e = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("timely")
            .expect("open");
        if let Event::Message { peer, protocol, msg_type, payload: got, .. } = e {
            assert_eq!(peer, from);
            let i =
                expected[protocol.0 as usize].pop_front().expect("a message was expected on this protocol");
            assert_eq!((protocol, msg_type), route(i), "message {i} route");
            assert!(got == payload(i), "message {i} content");
            received += 1;
        }
    }
    events
}

async fn exchange_10k(ra: Runtime, rb: Runtime, listen: &str) {
    let (a, ea) = spawn_on(ra, listen, None).await;
    let (b, mut eb) = spawn_on(rb, listen, None).await;
    let peer_b = a.dial(b.peer_addr()).await.expect("dial");
    assert_eq!(peer_b, b.node_id());
    let peer_a = a.node_id();
    expect_event(&mut eb, |e| matches!(e, Event::PeerConnected { .. })).await;
    let sa = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let (p, t) = route(i);
                a.send(peer_b, p, t, payload(i)).await.expect("send a");
            }
        })
    };
    let sb = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let (p, t) = route(i + 1);
                b.send(peer_a, p, t, payload(i + 1)).await.expect("send b");
            }
        })
    };
    let (mut eb, ea) = tokio::join!(check(0, eb, peer_a), check(1, ea, peer_b));
    sa.await.expect("sender a");
    sb.await.expect("sender b");
    a.shutdown().await;
    drop(ea);
    let e = expect_event(&mut eb, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    let Event::PeerDisconnected { reason, remote, unsent, .. } = e else { unreachable!() };
    assert_eq!(reason, DisconnectReason::Shutdown);
    assert!(remote);
    assert!(unsent.is_empty());
    b.shutdown().await;
}

fn ipv6() -> bool {
    let ok = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("SKIP: no IPv6 loopback on this machine");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tokio_10k_messages_ipv4() {
    exchange_10k(Tokio, Tokio, "127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tokio_10k_messages_ipv6() {
    if ipv6() {
        exchange_10k(Tokio, Tokio, "[::1]:0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_smol_10k_messages_ipv4() {
    exchange_10k(Tokio, Smol, "127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_tokio_10k_messages_ipv6() {
    if ipv6() {
        exchange_10k(Smol, Tokio, "[::1]:0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_smol_10k_messages_ipv4() {
    exchange_10k(Smol, Smol, "127.0.0.1:0").await;
}

fn path_of(e: &Event) -> Option<HandshakePath> {
    match e {
        Event::PeerConnected { path, .. } => Some(*path),
        _ => None,
    }
}

async fn next_path(events: &mut AnyEvents) -> Option<HandshakePath> {
    path_of(&expect_event(events, |e| path_of(e).is_some()).await)
}

/// A (runtime `ra`) and C (`ra`) dial B (runtime `rb`) by every path; B restarts.
async fn every_path(ra: Runtime, rb: Runtime) {
    let (a, mut ea) = spawn_on(ra, "127.0.0.1:0", None).await;
    let key_b = Keypair::from_secret_bytes([42; 32]);
    let (b, mut eb) = spawn_on(rb, "127.0.0.1:0", Some(key_b.clone())).await;
    let b_addr = b.peer_addr();
    let b_id = b.node_id();

    // Full: dialled by address only.
    a.dial(PeerAddr::from(b_addr.addr)).await.expect("full");
    assert_eq!(next_path(&mut ea).await, Some(HandshakePath::Full));
    assert_eq!(next_path(&mut eb).await, Some(HandshakePath::Full));

    // Resumed: redialled by NODEID@address after a disconnect.
    a.disconnect(b_id).await;
    expect_event(&mut eb, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    expect_event(&mut ea, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    a.dial(b_addr).await.expect("resume");
    assert_eq!(next_path(&mut ea).await, Some(HandshakePath::Resumed));
    assert_eq!(next_path(&mut eb).await, Some(HandshakePath::Resumed));
    a.send(b_id, ProtocolId(0), 1, Bytes::from_static(b"after resumption")).await.expect("send");
    expect_event(
        &mut eb,
        |e| matches!(e, Event::Message { payload, .. } if payload == &b"after resumption"[..]),
    )
    .await;

    // Introduced: a fresh node that knows B's key.
    let (c, mut ec) = spawn_on(ra, "127.0.0.1:0", None).await;
    c.dial(b_addr).await.expect("introduced");
    assert_eq!(next_path(&mut ec).await, Some(HandshakePath::Introduced));
    assert_eq!(next_path(&mut eb).await, Some(HandshakePath::Introduced));

    // Introduced → full → refused: A dials B's address naming another
    // node's key. B cannot open the introduced first packet and asks for
    // a retry; the full handshake reaches B, whose key is not the one
    // dialled: the dial fails naming the key that answered, and A is never
    // handed a connection to B as if it were the other node.
    a.disconnect(b_id).await;
    expect_event(&mut ea, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    let other = Keypair::from_secret_bytes([9; 32]).node_id();
    let err = a.dial_typed(PeerAddr::with_id(other, b_addr.addr)).await.expect_err("another key answered");
    assert!(
        matches!(err, devp2p_tokio::DialError::WrongPeer { dialled, found } if dialled == other && found == b_id),
        "{err:?}"
    );
    let d = expect_event(&mut ea, |e| matches!(e, Event::HandshakeDowngraded { .. })).await;
    assert!(matches!(
        d,
        Event::HandshakeDowngraded { from: HandshakePath::Introduced, to: HandshakePath::Full, .. }
    ));
    let f = expect_event(&mut ea, |e| matches!(e, Event::ConnectionFailed { .. })).await;
    assert!(
        matches!(f, Event::ConnectionFailed { reason: DisconnectReason::WrongPeer, peer: Some(p), found: Some(k), .. } if p == other && k == b_id),
        "{f:?}"
    );
    assert!(!a.peers().await.contains(&b_id), "no connection to B was kept");

    // Resumed → introduced: B restarts with the same key but without its
    // tickets; A still holds one from the last session.
    b.shutdown().await;
    drop(eb);
    let (b2, mut eb2) = spawn_on(rb, "127.0.0.1:0", Some(key_b)).await;
    assert_eq!(a.dial(b2.peer_addr()).await.expect("redial"), b_id);
    let d = expect_event(&mut ea, |e| matches!(e, Event::HandshakeDowngraded { .. })).await;
    assert!(matches!(
        d,
        Event::HandshakeDowngraded { from: HandshakePath::Resumed, to: HandshakePath::Introduced, .. }
    ));
    assert_eq!(next_path(&mut ea).await, Some(HandshakePath::Introduced));
    assert_eq!(next_path(&mut eb2).await, Some(HandshakePath::Introduced));
    for n in [a, b2, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tokio_every_path() {
    every_path(Tokio, Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_dials_smol_every_path() {
    every_path(Tokio, Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_dials_tokio_every_path() {
    every_path(Smol, Tokio).await;
}

async fn garbage_is_rejected(rt: Runtime) {
    let (a, mut ea) = spawn_on(rt, "127.0.0.1:0", None).await;
    let addr = a.peer_addr().addr;
    for junk in [vec![0u8, 5, 0x99, 1, 2, 3, 4], vec![0xff; 70_000], vec![0, 0]] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&junk).await;
        let e = expect_event(&mut ea, |e| matches!(e, Event::ConnectionFailed { .. })).await;
        let Event::ConnectionFailed { reason, .. } = e else { unreachable!() };
        assert!(
            matches!(reason, DisconnectReason::ProtocolViolation | DisconnectReason::HandshakeFailed),
            "{reason:?}"
        );
        // The node answers with a REJECT frame naming the reason, then closes.
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await.expect("closed");
        assert_eq!(back.get(2), Some(&0x07), "REJECT frame: {back:?}");
        assert_eq!(back.get(3), Some(&reason.code()));
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_raw_socket_is_rejected_tokio() {
    garbage_is_rejected(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_raw_socket_is_rejected_smol() {
    garbage_is_rejected(Smol).await;
}

/// The driver's timer fires the core's deadlines: a socket that connects
/// and sends nothing is closed once the handshake timeout passes, again and
/// again (the timer is re-armed for later deadlines).
async fn a_silent_socket_is_closed_at_the_handshake_timeout(rt: Runtime) {
    let mut config = Config::with_protocols(devp2p_integration::protocols());
    config.timeouts.handshake = Duration::from_millis(300);
    let (a, mut ea) = spawn_with_config(rt, "127.0.0.1:0", config).await;
    let addr = a.peer_addr().addr;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let e = expect_event(&mut ea, |e| matches!(e, Event::ConnectionFailed { .. })).await;
        let Event::ConnectionFailed { reason, .. } = e else { unreachable!() };
        assert_eq!(reason, DisconnectReason::HandshakeTimeout);
        let mut back = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await.expect("closed");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_handshake_timeout_tokio() {
    a_silent_socket_is_closed_at_the_handshake_timeout(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_handshake_timeout_smol() {
    a_silent_socket_is_closed_at_the_handshake_timeout(Smol).await;
}

/// An application that does not read its events must still be able to use
/// its node (commands and timers keep running while network reading stops),
/// and then read every message in order; shutdown completes regardless.
async fn commands_work_while_events_back_up(rt: Runtime) {
    let (a, mut ea) = spawn_with_capacity(rt, "127.0.0.1:0", None, 2).await;
    let (b, _eb) = spawn_on(Tokio, "127.0.0.1:0", None).await;
    let a_id = b.dial(a.peer_addr()).await.expect("dial");
    for i in 0..200u32 {
        b.send(a_id, ProtocolId(0), 0, Bytes::from(i.to_be_bytes().to_vec())).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peers = tokio::time::timeout(Duration::from_secs(5), a.peers()).await.expect("peers answered");
    assert_eq!(peers, vec![b.node_id()]);
    tokio::time::timeout(
        Duration::from_secs(5),
        a.send(b.node_id(), ProtocolId(0), 1, Bytes::from_static(b"x")),
    )
    .await
    .expect("send answered")
    .expect("sent");
    let mut next = 0u32;
    while next < 200 {
        if let Event::Message { payload, .. } =
            expect_event(&mut ea, |e| matches!(e, Event::Message { .. })).await
        {
            assert_eq!(payload[..], next.to_be_bytes());
            next += 1;
        }
    }
    // Shutdown with events left unread still completes.
    b.send(a_id, ProtocolId(0), 0, Bytes::from_static(b"unread")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), a.shutdown()).await.expect("shutdown completes");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_work_while_events_back_up_tokio() {
    commands_work_while_events_back_up(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_work_while_events_back_up_smol() {
    commands_work_while_events_back_up(Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_peers_on_both_runtimes() {
    let (hub, _eh) = spawn_on(Tokio, "127.0.0.1:0", None).await;
    let (t, mut et) = spawn_on(Tokio, "127.0.0.1:0", None).await;
    let (s, mut es) = spawn_on(Smol, "127.0.0.1:0", None).await;
    hub.dial(t.peer_addr()).await.expect("dial tokio leaf");
    hub.dial(s.peer_addr()).await.expect("dial smol leaf");
    let payload = Bytes::from(vec![9u8; 100_000]);
    assert_eq!(hub.broadcast(ProtocolId(1), 2, payload.clone()).await, 2);
    for events in [&mut et, &mut es] {
        let e = expect_event(events, |e| matches!(e, Event::Message { .. })).await;
        assert!(
            matches!(e, Event::Message { protocol: ProtocolId(1), msg_type: 2, payload: ref p, .. } if *p == payload)
        );
    }
    for n in [hub, t, s] {
        n.shutdown().await;
    }
}

/// One protocol's consumer stops reading for a long time; another protocol
/// keeps flowing at full speed, and what is held for the stalled one stays
/// within its flow-control window on the receiver and its queue cap on the
/// sender. Then the consumer resumes and gets everything, in order.
async fn a_stalled_protocol_holds_up_no_other(ra: Runtime, rb: Runtime) {
    const CHAT: ProtocolId = ProtocolId(0);
    const BLOCKS: ProtocolId = ProtocolId(1);
    let window = 1 << 20;
    let mut core = Config::with_protocols(devp2p_integration::protocols());
    core.flow.receive_window = window;
    let (a, _ea) = spawn_with_config(ra, "127.0.0.1:0", core.clone()).await;
    let (b, _eb) = spawn_with_config(rb, "127.0.0.1:0", core).await;
    let mut chat = b.messages(CHAT).await;
    let mut blocks = b.messages(BLOCKS).await;
    let pb = a.dial(b.peer_addr()).await.expect("dial");
    let pa = a.node_id();
    // CHAT: a sender that never stops (it blocks once credit and queue are used up).
    let chat_sent = Arc::new(AtomicUsize::new(0));
    let (a2, sent) = (a.clone(), chat_sent.clone());
    let chat_sender = tokio::spawn(async move {
        for i in 0u32.. {
            if a2.send(pb, CHAT, 0, Bytes::from(vec![i as u8; 64 << 10])).await.is_err() {
                return;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
    });
    // BLOCKS: 256 MiB, read as it comes, while nobody reads CHAT.
    let total = 256usize << 20;
    let msg = Bytes::from(vec![9u8; 256 << 10]);
    let a3 = a.clone();
    let blocks_sender = tokio::spawn(async move {
        for _ in 0..total / msg.len() {
            a3.send(pb, BLOCKS, 1, msg.clone()).await.expect("send blocks");
        }
    });
    let mut got = 0usize;
    tokio::time::timeout(Duration::from_secs(60), async {
        while got < total {
            let m = blocks.next().await.expect("blocks stream");
            assert_eq!((m.peer, m.protocol, m.payload.len()), (pa, BLOCKS, 256 << 10));
            got += m.payload.len();
        }
    })
    .await
    .expect("BLOCKS kept flowing while CHAT was stalled");
    blocks_sender.await.expect("blocks sender");
    // The stalled protocol: B holds at most its window, A at most its queue cap.
    let held: u64 =
        b.metrics().await[0].protocols.iter().find(|p| p.protocol == CHAT).expect("chat").unconsumed;
    assert!(held > 0 && held <= window, "B holds {held} bytes for CHAT");
    let ma = a.metrics().await;
    let chat_a = ma[0].protocols.iter().find(|p| p.protocol == CHAT).expect("chat");
    assert!(chat_a.queued_bytes <= 4 << 20, "A queues {} bytes for CHAT", chat_a.queued_bytes);
    assert!(chat_a.send_credit < (64 << 10) + 16, "A is out of CHAT credit: {}", chat_a.send_credit);
    let stalled_at = chat_sent.load(Ordering::Relaxed);
    assert!(stalled_at < 100, "CHAT sends were held back ({stalled_at} accepted)");
    // The consumer resumes: everything arrives, in order, and the sender goes on.
    tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..stalled_at + 50 {
            let m = chat.next().await.expect("chat stream");
            assert_eq!(m.payload[0], i as u8, "CHAT message {i} in order");
        }
    })
    .await
    .expect("CHAT resumed");
    chat_sender.abort();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_protocol_holds_up_no_other_tokio_smol() {
    a_stalled_protocol_holds_up_no_other(Runtime::Tokio, Runtime::Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_protocol_holds_up_no_other_smol_tokio() {
    a_stalled_protocol_holds_up_no_other(Runtime::Smol, Runtime::Tokio).await;
}

/// `send_batch` delivers every message in order across runtimes, waits for
/// queue space, and hands back what the peer refuses; a dropped message
/// stream sends later messages of its protocol to `Events`.
async fn batches_and_streams(ra: Runtime, rb: Runtime) {
    let (a, _ea) = spawn_on(ra, "127.0.0.1:0", None).await;
    let (b, mut eb) = spawn_on(rb, "127.0.0.1:0", None).await;
    let mut chat = b.messages(ProtocolId(0)).await;
    // The stream of a protocol the node does not register ends at once.
    let mut unknown = b.messages(ProtocolId(999)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), unknown.next()).await.expect("ends at once");
    assert!(ended.is_none(), "no messages on an unregistered protocol");
    let pb = a.dial(b.peer_addr()).await.expect("dial");
    // 20,000 small messages in batches of 1,000 (more than one queue's worth in flight).
    for batch in 0..20u32 {
        let msgs =
            (0..1000u32).map(|i| (i % 4, Bytes::from((batch * 1000 + i).to_le_bytes().to_vec()))).collect();
        a.send_batch(pb, ProtocolId(0), msgs).await.expect("batch");
    }
    // Read one at a time and as batches, alternately: a batch after single
    // reads holds the rest of the messages that arrived together.
    let (mut i, mut largest) = (0u32, 0);
    while i < 20_000 {
        let expect = |i: u32| (i % 4, i.to_le_bytes());
        if i % 3 == 0 {
            let m = tokio::time::timeout(Duration::from_secs(30), chat.next())
                .await
                .expect("timely")
                .expect("stream");
            assert_eq!((m.msg_type, &m.payload[..]), (expect(i).0, &expect(i).1[..]), "message {i}");
            i += 1;
        } else {
            let b = tokio::time::timeout(Duration::from_secs(30), chat.next_batch())
                .await
                .expect("timely")
                .expect("stream");
            assert!(!b.is_empty() && b.protocol == ProtocolId(0));
            largest = largest.max(b.len());
            for (t, payload) in &b {
                assert_eq!((t, payload), (expect(i).0, &expect(i).1[..]), "message {i}");
                i += 1;
            }
        }
    }
    assert_eq!(i, 20_000, "no message more");
    assert!(largest > 100, "small messages arrive in batches (largest {largest})");
    // A refused message and those after it come back, in order.
    let msgs = vec![
        (0, Bytes::from_static(b"ok")),
        (99, Bytes::from_static(b"bad")),
        (1, Bytes::from_static(b"after")),
    ];
    let e = a.send_batch(pb, ProtocolId(0), msgs).await.expect_err("type 99 is not defined");
    assert_eq!(e.error, devp2p_core::SendError::UnknownMessageType);
    assert_eq!(e.unsent, vec![(99, Bytes::from_static(b"bad")), (1, Bytes::from_static(b"after"))]);
    let m = chat.next().await.expect("the message before the refused one");
    assert_eq!(&m.payload[..], b"ok");
    // Without its stream, the protocol's messages come as events.
    drop(chat);
    a.send(pb, ProtocolId(0), 2, Bytes::from_static(b"to events")).await.expect("send");
    a.send(pb, ProtocolId(0), 2, Bytes::from_static(b"to events too")).await.expect("send");
    let ev = expect_event(&mut eb, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { payload, .. } = ev else { unreachable!("matched") };
    // The first may have been on its way to the dropped stream; the second is not.
    assert!(&payload[..] == b"to events" || &payload[..] == b"to events too", "{payload:?}");
    // Events hands out a batch as its messages, in order, `limit` at a time.
    let msgs = (0..300u32).map(|i| (3, Bytes::from(format!("e{i}")))).collect();
    a.send_batch(pb, ProtocolId(0), msgs).await.expect("batch");
    let (mut got, mut out) = (Vec::new(), Vec::new());
    while got.len() < 300 {
        out.clear();
        let n =
            tokio::time::timeout(Duration::from_secs(30), eb.next_batch(&mut out, 7)).await.expect("timely");
        assert!((1..=7).contains(&n) && n == out.len(), "{n} events for a limit of 7");
        for e in out.drain(..) {
            match e {
                Event::Message { msg_type: 3, payload, .. } => got.push(payload),
                Event::Messages(_) => panic!("a batch reached Events"),
                _ => {}
            }
        }
    }
    let expect: Vec<Bytes> = (0..300u32).map(|i| Bytes::from(format!("e{i}"))).collect();
    assert_eq!(got, expect);
    a.shutdown().await;
    b.shutdown().await;
}

/// A message stream dropped in the middle of a batch: the messages it
/// held, and those still on their way to it, count as consumed, so their
/// credit goes back and the protocol keeps flowing (to `Events`) through a
/// window far smaller than what is sent.
async fn a_stream_dropped_mid_batch_returns_its_credit(ra: Runtime, rb: Runtime) {
    const CHAT: ProtocolId = ProtocolId(0);
    let mut core = Config::with_protocols(devp2p_integration::protocols());
    core.flow.receive_window = 4096;
    let (a, _ea) = spawn_with_config(ra, "127.0.0.1:0", core.clone()).await;
    let (b, mut eb) = spawn_with_config(rb, "127.0.0.1:0", core).await;
    let mut chat = b.messages(CHAT).await;
    let pb = a.dial(b.peer_addr()).await.expect("dial");
    let first = (0..2000u32).map(|i| (1, Bytes::from(i.to_le_bytes().to_vec()))).collect();
    let sender = a.clone();
    let sending = tokio::spawn(async move { sender.send_batch(pb, CHAT, first).await });
    // Read a few, then drop the stream with the rest of its batch unread.
    for i in 0..3u32 {
        let m = tokio::time::timeout(Duration::from_secs(30), chat.next())
            .await
            .expect("timely")
            .expect("stream");
        assert_eq!(&m.payload[..], &i.to_le_bytes()[..]);
    }
    drop(chat);
    // The 2,000 need the 4 KiB window about ten times over: they all leave
    // only if the dropped ones' credit came back.
    tokio::time::timeout(Duration::from_secs(30), sending)
        .await
        .expect("all sent")
        .expect("task")
        .expect("batch");
    a.send(pb, CHAT, 2, Bytes::from_static(b"marker")).await.expect("send");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match eb.next().await.expect("events") {
                Event::Message { msg_type: 2, payload, .. } if &payload[..] == b"marker" => break,
                Event::Messages(_) => panic!("a batch reached Events"),
                _ => {}
            }
        }
    })
    .await
    .expect("the marker arrived after everything the stream dropped");
    a.shutdown().await;
    b.shutdown().await;
}

/// Send batches across runtimes: 40,000 small messages in batches of
/// 1,000 through a queue that holds about two batches and a 4 KiB window
/// (the sender waits for room, queueing each batch in parts), then a batch
/// larger than the queue limit, all delivered in order; a refused
/// batch comes back whole with nothing of it delivered.
async fn send_batches(ra: Runtime, rb: Runtime) {
    const CHAT: ProtocolId = ProtocolId(0);
    let mut core = Config::with_protocols(devp2p_integration::protocols());
    core.limits.max_queued_per_protocol = 40_000;
    // A small window, so that the queue fills and batches wait for room.
    core.flow.receive_window = 4096;
    let (a, _ea) = spawn_with_config(ra, "127.0.0.1:0", core.clone()).await;
    let (b, _eb) = spawn_with_config(rb, "127.0.0.1:0", core).await;
    let mut chat = b.messages(CHAT).await;
    let pb = a.dial(b.peer_addr()).await.expect("dial");
    fn payload(i: u32) -> Vec<u8> {
        (0..(i % 17) as usize + 8).map(|j| (i as usize + j) as u8).collect()
    }
    fn batch(range: std::ops::Range<u32>) -> devp2p_core::SendBatch {
        let mut b = devp2p_core::SendBatch::new();
        for i in range {
            b.push(i % 4, &payload(i));
        }
        b
    }
    let sender = a.clone();
    let sending = tokio::spawn(async move {
        for k in 0..40u32 {
            sender.send_packed(pb, CHAT, batch(k * 1000..k * 1000 + 1000)).await.expect("batch");
        }
        // About 100 KB: more than the protocol's 40,000-byte queue.
        let big = batch(40_000..48_000);
        assert!(big.payload_bytes() > 40_000);
        sender.send_packed(pb, CHAT, big).await.expect("oversize batch");
    });
    let mut i = 0u32;
    while i < 48_000 {
        let got = tokio::time::timeout(Duration::from_secs(30), chat.next_batch())
            .await
            .expect("timely")
            .expect("stream");
        for (t, p) in &got {
            assert_eq!((t, p), (i % 4, &payload(i)[..]), "message {i}");
            i += 1;
        }
    }
    tokio::time::timeout(Duration::from_secs(30), sending).await.expect("sent").expect("sender");
    let refused = batch(0..3);
    let mut bad = refused.clone();
    bad.push(99, b"undefined type");
    let e = a.send_packed(pb, CHAT, bad.clone()).await.expect_err("type 99 is not defined");
    assert_eq!(e.error, devp2p_core::SendError::UnknownMessageType);
    let want: Vec<(u32, Bytes)> = bad.iter().map(|(t, p)| (t, Bytes::copy_from_slice(p))).collect();
    assert_eq!(e.unsent, want, "all of it comes back");
    a.send(pb, CHAT, 2, Bytes::from_static(b"marker")).await.expect("send");
    let m =
        tokio::time::timeout(Duration::from_secs(30), chat.next()).await.expect("timely").expect("stream");
    assert_eq!(&m.payload[..], b"marker", "nothing of the refused batch was delivered");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batches_tokio_smol() {
    send_batches(Tokio, Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batches_smol_tokio() {
    send_batches(Smol, Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_batch_returns_its_credit_tokio_smol() {
    a_stream_dropped_mid_batch_returns_its_credit(Tokio, Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_batch_returns_its_credit_smol_tokio() {
    a_stream_dropped_mid_batch_returns_its_credit(Smol, Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_streams_tokio_smol() {
    batches_and_streams(Tokio, Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_streams_smol_tokio() {
    batches_and_streams(Smol, Tokio).await;
}

/// `Events::next`'s future may be dropped at any time (the losing branch
/// of a `select!`) without losing an event: 2,000 messages arrive, in
/// order, though a branch that is ready at every other poll keeps
/// cancelling the reads.
async fn next_is_cancel_safe(rt: Runtime) {
    let (a, _ea) = spawn_on(rt, "127.0.0.1:0", None).await;
    let (b, mut eb) = spawn_on(rt, "127.0.0.1:0", None).await;
    let peer_b = a.dial(b.peer_addr()).await.expect("dial");
    expect_event(&mut eb, |e| matches!(e, Event::PeerConnected { .. })).await;
    const COUNT: u32 = 2_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..COUNT {
                let p = Bytes::from(i.to_le_bytes().to_vec());
                a.send(peer_b, ProtocolId(0), 0, p).await.expect("send");
            }
        })
    };
    let (mut got, mut cancelled) = (0u32, 0u32);
    while got < COUNT {
        tokio::select! {
            biased;
            () = tokio::task::yield_now() => cancelled += 1,
            e = eb.next() => {
                if let Event::Message { payload, .. } = e.expect("open") {
                    assert_eq!(&payload[..], &got.to_le_bytes()[..], "message {got}");
                    got += 1;
                }
            }
        }
    }
    assert!(cancelled > 0, "no read was cancelled");
    sender.await.expect("sender");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_tokio() {
    next_is_cancel_safe(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_smol() {
    next_is_cancel_safe(Smol).await;
}

/// A dial to an address where nobody listens fails as `Unreachable`, on
/// both runtimes, and the node dials on afterwards.
async fn a_dial_to_a_closed_port_fails_as_unreachable(rt: Runtime) {
    let (a, mut ea) = spawn_on(rt, "127.0.0.1:0", None).await;
    // A port that was just free: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let err = a.dial_typed(PeerAddr::from(closed)).await.expect_err("nobody listens");
    assert!(matches!(err, devp2p_tokio::DialError::Failed(DisconnectReason::Unreachable)), "{err:?}");
    let e = expect_event(&mut ea, |e| matches!(e, Event::ConnectionFailed { .. })).await;
    assert!(matches!(e, Event::ConnectionFailed { reason: DisconnectReason::Unreachable, peer: None, .. }));
    let (b, _eb) = spawn_on(rt, "127.0.0.1:0", None).await;
    assert_eq!(a.dial(b.peer_addr()).await.expect("dial"), b.node_id());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_closed_port_fails_as_unreachable_tokio() {
    a_dial_to_a_closed_port_fails_as_unreachable(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_a_closed_port_fails_as_unreachable_smol() {
    a_dial_to_a_closed_port_fails_as_unreachable(Smol).await;
}

/// Datagrams reach the core with their source address: on both runtimes,
/// over IPv4 and IPv6 where present, each counted as dropped (no part of
/// the node reads datagrams yet).
async fn datagrams_reach_the_core(rt: Runtime) {
    let mut cfg = devp2p_tokio::NodeConfig::new(Config::with_protocols(devp2p_integration::protocols()))
        .datagram_listen("127.0.0.1:0".parse().expect("addr"));
    if ipv6() {
        cfg = cfg.datagram_listen("[::1]:0".parse().expect("addr"));
    }
    let (a, _ea) = devp2p_integration::spawn_node(rt, cfg).await;
    let addrs = a.datagram_addrs();
    assert!(addrs.iter().all(|a| a.port() != 0), "{addrs:?}");
    let mut sent = 0;
    for to in &addrs {
        let from = if to.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
        let s = std::net::UdpSocket::bind(from).expect("bind");
        for i in 0..10u8 {
            s.send_to(&[i; 100], to).expect("send");
            sent += 1;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.datagrams_dropped().await < sent {
        assert!(std::time::Instant::now() < deadline, "only {} of {sent}", a.datagrams_dropped().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.datagrams_dropped().await, sent);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_reach_the_core_tokio() {
    datagrams_reach_the_core(Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_reach_the_core_smol() {
    datagrams_reach_the_core(Smol).await;
}

/// Dropping every handle of a node shuts it down: its peers are told
/// `Shutdown`, and its event stream ends.
async fn dropping_every_handle_shuts_the_node_down(ra: Runtime, rb: Runtime) {
    let (a, mut ea) = spawn_on(ra, "127.0.0.1:0", None).await;
    let (b, mut eb) = spawn_on(rb, "127.0.0.1:0", None).await;
    a.dial(b.peer_addr()).await.expect("dial");
    expect_event(&mut eb, |e| matches!(e, Event::PeerConnected { .. })).await;
    let a2 = a.clone();
    drop(a);
    drop(a2);
    let e = expect_event(&mut eb, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    assert!(
        matches!(e, Event::PeerDisconnected { reason: DisconnectReason::Shutdown, remote: true, .. }),
        "{e:?}"
    );
    let ended =
        tokio::time::timeout(Duration::from_secs(10), async { while ea.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the dropped node's event stream ends");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_shuts_the_node_down_tokio_smol() {
    dropping_every_handle_shuts_the_node_down(Tokio, Smol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_shuts_the_node_down_smol_tokio() {
    dropping_every_handle_shuts_the_node_down(Smol, Tokio).await;
}
