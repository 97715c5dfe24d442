//! `devp2p bench`: the four workloads of `../shared/peers/libp2p-bench`,
//! two nodes in one process on 127.0.0.1, each printed as one JSON line:
//! bulk transfer, 64-byte messages, 64-byte round trips, and connections
//! with a full handshake per second; plus bulk spread over 8 protocols.
//! Every workload checks what arrives (content and order).

use std::time::{Duration, Instant};

use devp2p_tokio::{Bytes, Config, Event, PeerAddr, Protocol, ProtocolId};

use devp2p_tokio::{Events, Messages, Node, NodeConfig};

/// Protocols registered by bench nodes: "bench" first, then 7 more for the
/// multi-protocol workload. `WINDOW` (bytes) overrides the receive window.
fn config() -> Config {
    let mut protocols = vec![Protocol::new("bench", 1, 2)];
    protocols.extend((1..8).map(|i| Protocol::new(format!("bulk-{i}"), 1, 1)));
    let mut c = Config::with_protocols(protocols);
    c.limits.max_queued_per_peer = 64 << 20;
    c.limits.max_queued_per_protocol = 16 << 20;
    c.limits.max_message_size = 1 << 20;
    c.limits.max_reassembly_per_peer = 16 << 20;
    if let Ok(w) = std::env::var("WINDOW") {
        c.flow.receive_window = w.parse().expect("WINDOW");
    }
    c
}

async fn pair() -> Result<(Node, Events, Node, Events), String> {
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    let (a, ea) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    let (b, eb) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    Ok((a, ea, b, eb))
}

async fn connect(a: &Node, b: &Node) -> Result<(), String> {
    a.dial(b.peer_addr().ok_or("no listener")?).await.map(|_| ()).map_err(|e| e.to_string())
}

/// A 1 MiB message whose bytes depend on its sequence number.
fn bulk_message(seq: u64) -> Bytes {
    (0..1u32 << 20).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq) as u8).collect::<Vec<u8>>().into()
}

/// Receives `count` bulk messages on `stream`, checking each against `expect`.
async fn receive_bulk(mut stream: Messages, count: u64, expect: Vec<Bytes>) -> Result<Messages, String> {
    let mut seq = 0u64;
    while seq < count {
        let batch = stream.next_batch().await.ok_or("stream ended")?;
        for (_, payload) in &batch {
            if payload != expect[(seq % expect.len() as u64) as usize] {
                return Err(format!("bulk message {seq} corrupted"));
            }
            seq += 1;
        }
    }
    Ok(stream)
}

/// Sends `count` 1 MiB messages on `protocol`.
async fn send_bulk(a: Node, peer: devp2p_tokio::NodeId, protocol: ProtocolId, count: u64, msgs: Vec<Bytes>) {
    for seq in 0..count {
        let m = msgs[(seq % msgs.len() as u64) as usize].clone();
        if a.send(peer, protocol, 0, m).await.is_err() {
            return;
        }
    }
}

/// Bulk: `bytes` in 1 MiB messages on `protocols` protocols at once (the
/// bytes split evenly), every byte checked. Returns MB/s.
pub async fn bulk(bytes: u64, protocols: u16) -> Result<String, String> {
    let (a, _ea, b, _eb) = pair().await?;
    let mut streams = Vec::new();
    for p in 0..protocols {
        streams.push(b.messages(ProtocolId(p)).await);
    }
    connect(&a, &b).await?;
    let peer = b.node_id();
    let per_protocol = bytes / (1 << 20) / u64::from(protocols);
    let msgs: Vec<Bytes> = (0..4).map(bulk_message).collect();
    let t = Instant::now();
    let receivers: Vec<_> =
        streams.into_iter().map(|s| tokio::spawn(receive_bulk(s, per_protocol, msgs.clone()))).collect();
    for p in 0..protocols {
        tokio::spawn(send_bulk(a.clone(), peer, ProtocolId(p), per_protocol, msgs.clone()));
    }
    for r in receivers {
        r.await.map_err(|e| e.to_string())??;
    }
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    let total = (per_protocol * u64::from(protocols)) << 20;
    Ok(format!(
        "{{\"bench\":\"bulk\",\"protocols\":{protocols},\"bytes\":{total},\"secs\":{s:.3},\"mb_per_sec\":{:.1}}}",
        total as f64 / s / 1e6
    ))
}

/// How the 64 B workload's receiver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// The protocol's own stream, a batch at a time (`Messages::next_batch`).
    Batches,
    /// The protocol's own stream, one typed `Message` per call (`Messages::next`).
    Messages,
    /// `Events::next`, one typed `Event::Message` per message.
    Events,
}

impl Receive {
    /// The name `--recv` takes.
    pub fn name(self) -> &'static str {
        match self {
            Receive::Batches => "batches",
            Receive::Messages => "messages",
            Receive::Events => "events",
        }
    }
}

/// 64-byte messages carrying their sequence number, sent in batches of
/// `batch` (one command per batch) and received typed, each checked in
/// order. `packed`: each message is written into a
/// [`SendBatch`](devp2p_tokio::SendBatch) (as libp2p's benchmark writes its
/// messages into a buffered writer); otherwise a batch is a `Vec` of
/// payload handles on one buffer. `recv` says how they are read. Returns
/// messages/s.
pub async fn messages(count: u64, batch: usize, packed: bool, recv: Receive) -> Result<String, String> {
    let (a, _ea, b, mut eb) = pair().await?;
    let mut stream = b.messages(ProtocolId(0)).await;
    if recv == Receive::Events {
        // Its messages go to `Events` once the stream is dropped.
        drop(stream);
        stream = b.messages(ProtocolId(1)).await;
    }
    connect(&a, &b).await?;
    let peer = b.node_id();
    let t = Instant::now();
    fn check(got: u64, payload: &[u8]) -> Result<(), String> {
        let seq = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "short message")?);
        if seq != got || payload.len() != 64 {
            return Err(format!("message {got} arrived as {seq}"));
        }
        Ok(())
    }
    let rx = tokio::spawn(async move {
        let mut got = 0u64;
        while got < count {
            match recv {
                Receive::Events => {
                    if let Event::Message { payload, .. } = eb.next().await.ok_or("events ended")? {
                        check(got, &payload)?;
                        got += 1;
                    }
                }
                Receive::Messages => {
                    let m = stream.next().await.ok_or("stream ended")?;
                    check(got, &m.payload)?;
                    got += 1;
                }
                Receive::Batches => {
                    let batch = stream.next_batch().await.ok_or("stream ended")?;
                    for (_, payload) in &batch {
                        check(got, payload)?;
                        got += 1;
                    }
                }
            }
        }
        Ok::<u64, String>(got)
    });
    let mut seq = 0u64;
    while packed && seq < count {
        let n = (count - seq).min(batch as u64);
        let mut msgs = devp2p_tokio::SendBatch::with_capacity(n as usize, 64 * n as usize);
        let mut payload = [0u8; 64];
        for i in seq..seq + n {
            payload[..8].copy_from_slice(&i.to_le_bytes());
            msgs.push(0, &payload);
        }
        a.send_packed(peer, ProtocolId(0), msgs).await.map_err(|e| e.to_string())?;
        seq += n;
    }
    while seq < count {
        let n = (count - seq).min(batch as u64);
        // The batch's payloads are slices of one buffer (as libp2p's
        // benchmark writes its messages from one buffer).
        let mut all = devp2p_tokio::bytes::BytesMut::zeroed(64 * n as usize);
        for (i, p) in (seq..seq + n).zip(all.chunks_exact_mut(64)) {
            p[..8].copy_from_slice(&i.to_le_bytes());
        }
        let all = all.freeze();
        let msgs = (0..n as usize).map(|k| (0, all.slice(k * 64..k * 64 + 64))).collect();
        a.send_batch(peer, ProtocolId(0), msgs).await.map_err(|e| e.to_string())?;
        seq += n;
    }
    let msgs = rx.await.map_err(|e| e.to_string())??;
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    Ok(format!(
        "{{\"bench\":\"msgs\",\"messages\":{msgs},\"batch\":{batch},\"send\":\"{}\",\"recv\":\"{}\",\"secs\":{s:.3},\"msgs_per_sec\":{:.0}}}",
        if packed { "packed" } else { "handles" },
        recv.name(),
        msgs as f64 / s
    ))
}

/// Round trips before the measured ones.
const RTT_WARMUP: usize = 1000;

/// 64-byte round trips (B echoes, content checked). Returns p50/p99 in µs.
pub async fn rtt(rounds: usize) -> Result<String, String> {
    let (a, mut ea, b, mut eb) = pair().await?;
    connect(&a, &b).await?;
    let (pa, pb) = (a.node_id(), b.node_id());
    let echo = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(e) = eb.next().await {
                if let Event::Message { payload, .. } = e {
                    if b.send(pa, ProtocolId(0), 1, payload).await.is_err() {
                        break;
                    }
                }
            }
        })
    };
    // Warm-up round trips first, not measured (as libp2p-bench does).
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..RTT_WARMUP + rounds {
        let msg = Bytes::from(vec![i as u8; 64]);
        let t = Instant::now();
        a.send(pb, ProtocolId(0), 0, msg.clone()).await.map_err(|e| e.to_string())?;
        loop {
            match ea.next().await {
                Some(Event::Message { payload, .. }) if payload == msg => break,
                Some(Event::Message { .. }) => return Err(format!("round {i}: wrong echo")),
                Some(_) => {}
                None => return Err("events ended".into()),
            }
        }
        if i >= RTT_WARMUP {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    let p = |q: usize| samples[(samples.len() * q / 1000).min(samples.len() - 1)].as_secs_f64() * 1e6;
    a.shutdown().await;
    b.shutdown().await;
    echo.abort();
    Ok(format!(
        "{{\"bench\":\"rtt\",\"rounds\":{rounds},\"warmup\":{RTT_WARMUP},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
        p(500),
        p(900),
        p(990),
        p(999)
    ))
}

/// Connections with a full handshake (dialled by address), one after another.
pub async fn connections(count: usize) -> Result<String, String> {
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    let (b, _eb) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    let (a, _ea) = Node::spawn(NodeConfig::new(config())).await.map_err(|e| e.to_string())?;
    let addr = PeerAddr::from(b.listen_addrs()[0]);
    let t = Instant::now();
    for _ in 0..count {
        let peer = a.dial(addr).await.map_err(|e| e.to_string())?;
        if peer != b.node_id() {
            return Err("connected to the wrong node".into());
        }
        a.disconnect(peer).await;
        // Wait until the disconnect is done before the next dial.
        while a.peers().await.contains(&peer) {
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
    }
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    Ok(format!(
        "{{\"bench\":\"conns\",\"connections\":{count},\"secs\":{s:.3},\"per_sec\":{:.0}}}",
        count as f64 / s
    ))
}
