//! Two tokio nodes over real TCP: message suites, every handshake path,
//! malformed input and shutdown.

use std::time::Duration;

use devp2p_integration::{expect_event, spawn, spawn_with};
use devp2p_tokio::{Bytes, DisconnectReason, Event, HandshakePath, Keypair, PeerAddr, ProtocolId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

async fn exchange_10k(listen: &str) {
    let (a, mut ea) = spawn(listen).await;
    let (b, mut eb) = spawn(listen).await;
    let peer_b = a.dial(b.peer_addr().expect("addr")).await.expect("dial");
    assert_eq!(peer_b, b.node_id());
    let peer_a = a.node_id();
    expect_event(&mut eb, |e| matches!(e, Event::PeerConnected { .. })).await;
    const N: u32 = 10_000;
    // Both directions at once: A sends even-numbered, B odd-numbered streams.
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
    let check = |offset: u32, mut events: devp2p_tokio::Events, from: devp2p_tokio::NodeId| async move {
        let mut next = 0u32;
        while next < N {
            let e = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .expect("timely")
                .expect("open");
            if let Event::Message { peer, protocol, msg_type, payload: got } = e {
                assert_eq!(peer, from);
                let i = next + offset;
                assert_eq!((protocol, msg_type), route(i), "message {next} route");
                assert!(got == payload(i), "message {next} content");
                next += 1;
            }
        }
        events
    };
    let (rb, ra) = tokio::join!(check(0, eb, peer_a), check(1, ea, peer_b));
    sa.await.expect("sender a");
    sb.await.expect("sender b");
    ea = ra;
    a.shutdown().await;
    let mut eb = rb;
    let e = expect_event(&mut eb, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    match e {
        Event::PeerDisconnected { reason, remote, unsent, .. } => {
            assert_eq!(reason, DisconnectReason::Shutdown);
            assert!(remote);
            assert!(unsent.is_empty());
        }
        _ => unreachable!(),
    }
    drop(ea);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_ipv4() {
    exchange_10k("127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no IPv6 loopback on this machine");
        return;
    }
    exchange_10k("[::1]:0").await;
}

fn path_of(e: &Event) -> Option<HandshakePath> {
    match e {
        Event::PeerConnected { path, .. } => Some(*path),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handshake_path_and_both_downgrades() {
    let (a, mut ea) = spawn("127.0.0.1:0").await;
    let key_b = Keypair::from_secret_bytes([42; 32]);
    let (b, mut eb) = spawn_with("127.0.0.1:0", key_b.clone()).await;
    let b_addr = b.peer_addr().expect("addr");
    let b_id = b.node_id();

    // Full: dialled by address only.
    a.dial(PeerAddr::from(b_addr.addr)).await.expect("full");
    assert_eq!(path_of(&expect_event(&mut ea, |e| path_of(e).is_some()).await), Some(HandshakePath::Full));
    assert_eq!(path_of(&expect_event(&mut eb, |e| path_of(e).is_some()).await), Some(HandshakePath::Full));

    // Resumed: redialled by NODEID@address after a disconnect.
    a.disconnect(b_id).await;
    expect_event(&mut eb, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    expect_event(&mut ea, |e| matches!(e, Event::PeerDisconnected { .. })).await;
    a.dial(b_addr).await.expect("resume");
    assert_eq!(path_of(&expect_event(&mut ea, |e| path_of(e).is_some()).await), Some(HandshakePath::Resumed));
    assert_eq!(path_of(&expect_event(&mut eb, |e| path_of(e).is_some()).await), Some(HandshakePath::Resumed));
    a.send(b_id, ProtocolId(0), 1, Bytes::from_static(b"after resumption")).await.expect("send");
    expect_event(
        &mut eb,
        |e| matches!(e, Event::Message { payload, .. } if payload == &b"after resumption"[..]),
    )
    .await;

    // Introduced: a fresh node that knows B's key.
    let (c, mut ec) = spawn("127.0.0.1:0").await;
    c.dial(b_addr).await.expect("introduced");
    assert_eq!(
        path_of(&expect_event(&mut ec, |e| path_of(e).is_some()).await),
        Some(HandshakePath::Introduced)
    );

    // Introduced → full: C dials A naming a stale key.
    let stale =
        PeerAddr::with_id(Keypair::from_secret_bytes([9; 32]).node_id(), a.peer_addr().expect("addr").addr);
    assert_eq!(c.dial(stale).await.expect("downgraded dial"), a.node_id());
    let d = expect_event(&mut ec, |e| matches!(e, Event::HandshakeDowngraded { .. })).await;
    assert!(matches!(
        d,
        Event::HandshakeDowngraded { from: HandshakePath::Introduced, to: HandshakePath::Full, .. }
    ));
    assert_eq!(path_of(&expect_event(&mut ec, |e| path_of(e).is_some()).await), Some(HandshakePath::Full));

    // Resumed → introduced: B restarts with the same key but without its
    // tickets; A still holds one from the resumed session.
    b.shutdown().await;
    drop(eb);
    expect_event(&mut ea, |e| matches!(e, Event::PeerDisconnected { peer, .. } if *peer == b_id)).await;
    let (b2, mut eb2) = spawn_with("127.0.0.1:0", key_b).await;
    let b2_addr = b2.peer_addr().expect("addr");
    assert_eq!(a.dial(b2_addr).await.expect("redial"), b_id);
    let d = expect_event(&mut ea, |e| matches!(e, Event::HandshakeDowngraded { .. })).await;
    assert!(matches!(
        d,
        Event::HandshakeDowngraded { from: HandshakePath::Resumed, to: HandshakePath::Introduced, .. }
    ));
    assert_eq!(
        path_of(&expect_event(&mut ea, |e| path_of(e).is_some()).await),
        Some(HandshakePath::Introduced)
    );
    assert_eq!(
        path_of(&expect_event(&mut eb2, |e| path_of(e).is_some()).await),
        Some(HandshakePath::Introduced)
    );
    for n in [a, b2, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_every_path() {
    let s = devp2p_tokio::demo::run(4).await.expect("demo");
    assert_eq!(s.corrupt, 0);
    assert_eq!(s.received, s.sent);
    assert!(s.sent > 0);
    for p in ["full (XX)", "introduced (IK)", "resumed (NNpsk0)"] {
        assert!(s.paths.get(p).copied().unwrap_or(0) > 0, "path {p} used: {:?}", s.paths);
    }
    assert!(s.downgrades.iter().any(|d| d == "resumed (NNpsk0) -> introduced (IK)"), "{:?}", s.downgrades);
    assert!(s.downgrades.iter().any(|d| d == "introduced (IK) -> full (XX)"), "{:?}", s.downgrades);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_raw_socket_is_rejected_with_a_reason() {
    let (a, mut ea) = spawn("127.0.0.1:0").await;
    let addr = a.listen_addrs()[0];
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
