//! Three workloads of `devp2p bench` on the smol runtime, so that both
//! runtimes can be measured the same way: 64 B messages (batches of 1,024,
//! one typed message each, every one checked in order), bulk transfer
//! (1 MiB messages, every byte checked) and 64 B round trips. Two nodes in one process
//! on 127.0.0.1, on smol's global executor with 2 threads (as the tokio
//! bench has 2 workers). Prints one JSON line per workload.
//!
//! ```text
//! cargo run --release -p devp2p-smol --example bench [messages] [bulk-bytes]
//! ```

use std::time::Instant;

use devp2p_core::{Bytes, Config, Protocol, ProtocolId};
use devp2p_smol::{Messages, Node, NodeConfig};

fn config() -> Config {
    let mut c = Config::with_protocols(vec![Protocol::new("bench", 1, 2)]);
    c.limits.max_queued_per_peer = 64 << 20;
    c.limits.max_queued_per_protocol = 16 << 20;
    c.limits.max_message_size = 1 << 20;
    c.limits.max_reassembly_per_peer = 16 << 20;
    c
}

/// Two connected nodes, the second's stream of protocol 0, and its ID.
async fn pair() -> (Node, Node, Messages, devp2p_core::NodeId) {
    let listen = "127.0.0.1:0".parse().expect("address");
    let (a, _) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.expect("node a");
    let (b, _) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.expect("node b");
    let stream = b.messages(ProtocolId(0)).await;
    a.dial(b.peer_addr().expect("listening")).await.expect("dial");
    let id = b.node_id();
    (a, b, stream, id)
}

async fn messages(count: u64) -> String {
    let (a, b, mut stream, peer) = pair().await;
    let t = Instant::now();
    let rx = smol::spawn(async move {
        let mut got = 0u64;
        while got < count {
            let batch = stream.next_batch().await.expect("stream ended");
            for (_, payload) in &batch {
                let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                assert!(seq == got && payload.len() == 64, "message {got} arrived as {seq}");
                got += 1;
            }
        }
    });
    // Each message written into a send batch (as `devp2p bench` does).
    let mut seq = 0u64;
    while seq < count {
        let n = (count - seq).min(1024);
        let mut msgs = devp2p_core::SendBatch::with_capacity(n as usize, 64 * n as usize);
        let mut payload = [0u8; 64];
        for i in seq..seq + n {
            payload[..8].copy_from_slice(&i.to_le_bytes());
            msgs.push(0, &payload);
        }
        a.send_packed(peer, ProtocolId(0), msgs).await.expect("send");
        seq += n;
    }
    rx.await;
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    format!(
        "{{\"runtime\":\"smol\",\"bench\":\"msgs\",\"messages\":{count},\"secs\":{s:.3},\"msgs_per_sec\":{:.0}}}",
        count as f64 / s
    )
}

async fn bulk(bytes: u64) -> String {
    let (a, b, mut stream, peer) = pair().await;
    let count = bytes >> 20;
    let msgs: Vec<Bytes> = (0..4u64)
        .map(|seq| (0..1u32 << 20).map(|i| (u64::from(i).wrapping_mul(31).wrapping_add(seq)) as u8).collect())
        .collect();
    let expect = msgs.clone();
    let t = Instant::now();
    let rx = smol::spawn(async move {
        let mut got = 0u64;
        while got < count {
            let batch = stream.next_batch().await.expect("stream ended");
            for (_, payload) in &batch {
                assert!(payload == expect[(got % 4) as usize], "bulk message {got} corrupted");
                got += 1;
            }
        }
    });
    for seq in 0..count {
        a.send(peer, ProtocolId(0), 0, msgs[(seq % 4) as usize].clone()).await.expect("send");
    }
    rx.await;
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    format!(
        "{{\"runtime\":\"smol\",\"bench\":\"bulk\",\"bytes\":{},\"secs\":{s:.3},\"mb_per_sec\":{:.1}}}",
        count << 20,
        (count << 20) as f64 / s / 1e6
    )
}

/// 64 B round trips: B echoes each message back. Returns p50/p99 in µs.
async fn rtt(rounds: usize) -> String {
    let listen = "127.0.0.1:0".parse().expect("address");
    let (a, mut ea) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.expect("node a");
    let (b, mut eb) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.expect("node b");
    a.dial(b.peer_addr().expect("listening")).await.expect("dial");
    let (pa, pb) = (a.node_id(), b.node_id());
    let echo = {
        let b = b.clone();
        smol::spawn(async move {
            while let Some(e) = eb.next().await {
                if let devp2p_core::Event::Message { payload, .. } = e {
                    if b.send(pa, ProtocolId(0), 1, payload).await.is_err() {
                        break;
                    }
                }
            }
        })
    };
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let msg = Bytes::from(vec![i as u8; 64]);
        let t = Instant::now();
        a.send(pb, ProtocolId(0), 0, msg.clone()).await.expect("send");
        loop {
            match ea.next().await.expect("events") {
                devp2p_core::Event::Message { payload, .. } => {
                    assert!(payload == msg, "round {i}: wrong echo");
                    break;
                }
                _ => continue,
            }
        }
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let p = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)].as_secs_f64() * 1e6;
    a.shutdown().await;
    b.shutdown().await;
    drop(echo);
    format!(
        "{{\"runtime\":\"smol\",\"bench\":\"rtt\",\"rounds\":{rounds},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        p(50),
        p(99)
    )
}

fn main() {
    // Two executor threads, as the tokio bench's two workers (set before
    // smol's global executor starts).
    if std::env::var_os("SMOL_THREADS").is_none() {
        std::env::set_var("SMOL_THREADS", "2");
    }
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let count = args.next().unwrap_or(1_000_000);
    let bytes = args.next().unwrap_or(1 << 30);
    smol::block_on(smol::spawn(async move {
        println!("{}", messages(count).await);
        println!("{}", bulk(bytes).await);
        println!("{}", rtt(5000).await);
    }));
}
