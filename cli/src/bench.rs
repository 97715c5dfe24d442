//! `devp2p bench`: the four workloads of `../shared/peers/libp2p-bench`,
//! two nodes in one process on 127.0.0.1, each printed as one JSON line:
//! bulk transfer, 64-byte messages, 64-byte round trips, and connections
//! with a full handshake per second; plus bulk spread over 8 protocols.
//! Every workload checks what arrives (content and order).

use std::future::Future;
use std::time::{Duration, Instant};

use devp2p_runtime::Runtime;
use devp2p_tokio::{Bytes, Config, Event, Events, Messages, NodeConfig, PeerAddr, Protocol, ProtocolId};
use futures_lite::future::poll_fn;

/// A node on runtime `R`.
type Node<R> = devp2p_runtime::Node<R>;

/// Runs `f` as a task of runtime `R`; the returned future gives its output.
pub fn spawn<R: Runtime, T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = Result<T, String>> {
    let (tx, rx) = async_channel::bounded(1);
    R::default().spawn(async move {
        let _ = tx.send(f.await).await;
    });
    async move { rx.recv().await.map_err(|_| "task ended without a result".to_string()) }
}

/// Waits `d` on runtime `R`'s timer.
async fn sleep<R: Runtime>(d: Duration) {
    let mut timer = R::default().timer(Instant::now() + d);
    poll_fn(|cx| R::poll_timer(&mut timer, cx)).await;
}

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

async fn pair<R: Runtime>() -> Result<(Node<R>, Events, Node<R>, Events), String> {
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    let (a, ea) =
        Node::<R>::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    let (b, eb) =
        Node::<R>::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    Ok((a, ea, b, eb))
}

async fn connect<R: Runtime>(a: &Node<R>, b: &Node<R>) -> Result<(), String> {
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
async fn send_bulk<R: Runtime>(
    a: Node<R>,
    peer: devp2p_tokio::NodeId,
    protocol: ProtocolId,
    count: u64,
    msgs: Vec<Bytes>,
) {
    for seq in 0..count {
        let m = msgs[(seq % msgs.len() as u64) as usize].clone();
        if a.send(peer, protocol, 0, m).await.is_err() {
            return;
        }
    }
}

/// Bulk: `bytes` in 1 MiB messages on `protocols` protocols at once (the
/// bytes split evenly), every byte checked. Returns MB/s.
pub async fn bulk<R: Runtime>(bytes: u64, protocols: u16) -> Result<String, String> {
    let (a, _ea, b, _eb) = pair::<R>().await?;
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
        streams.into_iter().map(|s| spawn::<R, _>(receive_bulk(s, per_protocol, msgs.clone()))).collect();
    for p in 0..protocols {
        R::default().spawn(send_bulk(a.clone(), peer, ProtocolId(p), per_protocol, msgs.clone()));
    }
    for r in receivers {
        r.await??;
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
pub async fn messages<R: Runtime>(
    count: u64,
    batch: usize,
    packed: bool,
    recv: Receive,
) -> Result<String, String> {
    let (a, _ea, b, mut eb) = pair::<R>().await?;
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
    let rx = spawn::<R, _>(async move {
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
    let msgs = rx.await??;
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
pub async fn rtt<R: Runtime>(rounds: usize) -> Result<String, String> {
    let (a, mut ea, b, mut eb) = pair::<R>().await?;
    connect(&a, &b).await?;
    let (pa, pb) = (a.node_id(), b.node_id());
    {
        let b = b.clone();
        R::default().spawn(async move {
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
    Ok(format!(
        "{{\"bench\":\"rtt\",\"rounds\":{rounds},\"warmup\":{RTT_WARMUP},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
        p(500),
        p(900),
        p(990),
        p(999)
    ))
}

/// Connections with a full handshake (dialled by address), one after another.
pub async fn connections<R: Runtime>(count: usize) -> Result<String, String> {
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    let (b, _eb) =
        Node::<R>::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    let (a, _ea) = Node::<R>::spawn(NodeConfig::new(config())).await.map_err(|e| e.to_string())?;
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
            sleep::<R>(Duration::from_micros(50)).await;
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

/// The bound on bulk throughput set by the AEAD the runtimes use (ring's
/// ChaCha20-Poly1305): one thread seals full records (65,519 plaintext
/// bytes) while another opens them, handing buffers over as the node's
/// sender and receiver do, with no network. Returns MB/s of plaintext.
pub fn aead_bound(bytes: u64) -> String {
    use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
    const RECORD: usize = 65_519;
    let key = || LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("a 32-byte key"));
    let nonce = |n: u64| {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::assume_unique_for_key(b)
    };
    let records = (bytes / RECORD as u64).max(1);
    let (to_open, sealed) = std::sync::mpsc::sync_channel::<(Vec<u8>, Tag)>(4);
    let (to_seal, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    for _ in 0..6 {
        let _ = to_seal.send(vec![0x5a; RECORD]);
    }
    let t = Instant::now();
    let opener = std::thread::spawn(move || {
        let k = key();
        let mut n = 0u64;
        while let Ok((mut buf, tag)) = sealed.recv() {
            if k.open_in_place_separate_tag(nonce(n), Aad::empty(), tag, &mut buf, 0..).is_err() {
                return false;
            }
            n += 1;
            if to_seal.send(buf).is_err() {
                break;
            }
        }
        n == records
    });
    let k = key();
    for n in 0..records {
        let Ok(mut buf) = free.recv() else { break };
        let Ok(tag) = k.seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf) else { break };
        if to_open.send((buf, tag)).is_err() {
            break;
        }
    }
    drop(to_open);
    let ok = opener.join().unwrap_or(false);
    let s = t.elapsed().as_secs_f64();
    let total = records * RECORD as u64;
    format!(
        "{{\"bench\":\"aead_bound\",\"aead\":\"ring chacha20-poly1305\",\"ok\":{ok},\"bytes\":{total},\"secs\":{s:.3},\"mb_per_sec\":{:.1}}}",
        total as f64 / s / 1e6
    )
}

/// The baseline for `rtt`: 64-byte round trips over plain TCP on runtime
/// `R` (nodelay, one echo task, the same warm-up and rounds), through the
/// same `Runtime` calls the node's shell makes. Returns p50/p99 in µs.
pub async fn tcp_rtt<R: Runtime>(rounds: usize) -> Result<String, String> {
    let rt = R::default();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
    let listener = rt.tcp_listener(std_listener).map_err(|e| e.to_string())?;
    let client = rt.connect(addr).await.map_err(|e| e.to_string())?;
    let (server, _) = poll_fn(|cx| R::poll_accept(&listener, cx)).await.map_err(|e| e.to_string())?;
    R::set_nodelay(&client).map_err(|e| e.to_string())?;
    R::set_nodelay(&server).map_err(|e| e.to_string())?;
    async fn exact<R: Runtime>(s: &R::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            match poll_fn(|cx| R::poll_read(s, cx, &mut buf[at..])).await? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => at += n,
            }
        }
        Ok(())
    }
    async fn all<R: Runtime>(s: &R::TcpStream, buf: &[u8]) -> std::io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            at += poll_fn(|cx| R::poll_write(s, cx, &buf[at..])).await?;
        }
        Ok(())
    }
    rt.spawn(async move {
        let mut buf = [0u8; 64];
        while exact::<R>(&server, &mut buf).await.is_ok() {
            if all::<R>(&server, &buf).await.is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::with_capacity(rounds);
    let mut back = [0u8; 64];
    for i in 0..RTT_WARMUP + rounds {
        let msg = [i as u8; 64];
        let t = Instant::now();
        all::<R>(&client, &msg).await.map_err(|e| e.to_string())?;
        exact::<R>(&client, &mut back).await.map_err(|e| e.to_string())?;
        if back != msg {
            return Err(format!("round {i}: wrong echo"));
        }
        if i >= RTT_WARMUP {
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    let p = |q: usize| samples[(samples.len() * q / 1000).min(samples.len() - 1)].as_secs_f64() * 1e6;
    Ok(format!(
        "{{\"bench\":\"tcp_rtt\",\"rounds\":{rounds},\"warmup\":{RTT_WARMUP},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1}}}",
        p(500),
        p(900),
        p(990)
    ))
}
