//! `devp2p bench`: the four workloads of `../shared/peers/libp2p-bench`,
//! two nodes in one process on 127.0.0.1, each printed as one JSON line:
//! bulk transfer, 64-byte messages, 64-byte round trips, and connections
//! with a full handshake per second.

use std::time::{Duration, Instant};

use devp2p_core::{Bytes, Config, Event, PeerAddr, Protocol, ProtocolId};

use crate::{Events, Node, NodeConfig};

fn config() -> Config {
    let mut c = Config::with_protocols(vec![Protocol::new("bench", 1, 2)]);
    c.max_queued_per_peer = 64 << 20;
    c.max_message_size = 1 << 20;
    c.max_reassembly_per_peer = 4 << 20;
    c
}

async fn pair() -> Result<(Node, Events, Node, Events), String> {
    let listen = "127.0.0.1:0".parse().map_err(|_| "addr")?;
    let (a, ea) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    let (b, eb) = Node::spawn(NodeConfig::new(config()).listen(listen)).await.map_err(|e| e.to_string())?;
    a.dial(b.peer_addr().ok_or("no listener")?).await.map_err(|e| e.to_string())?;
    Ok((a, ea, b, eb))
}

/// Counts message bytes on `events` until `total` arrived.
async fn receive(mut events: Events, total: u64) -> Result<(u64, Events), String> {
    let mut got = 0u64;
    let mut msgs = 0u64;
    while got < total {
        match events.next().await {
            Some(Event::Message { payload, .. }) => {
                got += payload.len() as u64;
                msgs += 1;
            }
            Some(_) => {}
            None => return Err("events ended".into()),
        }
    }
    Ok((msgs, events))
}

/// Bulk: `bytes` in 1 MiB messages. Returns MB/s.
pub async fn bulk(bytes: u64) -> Result<String, String> {
    let (a, _ea, b, eb) = pair().await?;
    let peer = b.node_id();
    let chunk = Bytes::from(vec![0x5a; 1 << 20]);
    let n = bytes / chunk.len() as u64;
    let t = Instant::now();
    let rx = tokio::spawn(receive(eb, n * chunk.len() as u64));
    for _ in 0..n {
        a.send(peer, ProtocolId(0), 0, chunk.clone()).await.map_err(|e| e.to_string())?;
    }
    rx.await.map_err(|e| e.to_string())??;
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    Ok(format!(
        "{{\"bench\":\"bulk\",\"bytes\":{},\"secs\":{s:.3},\"mb_per_sec\":{:.1}}}",
        n << 20,
        (n << 20) as f64 / s / 1e6
    ))
}

/// 64-byte messages, sent one `send` at a time. Returns messages/s.
pub async fn messages(count: u64) -> Result<String, String> {
    let (a, _ea, b, eb) = pair().await?;
    let peer = b.node_id();
    let msg = Bytes::from(vec![1u8; 64]);
    let t = Instant::now();
    let rx = tokio::spawn(receive(eb, count * 64));
    for _ in 0..count {
        a.send(peer, ProtocolId(0), 0, msg.clone()).await.map_err(|e| e.to_string())?;
    }
    let (msgs, _) = rx.await.map_err(|e| e.to_string())??;
    let s = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    Ok(format!(
        "{{\"bench\":\"msgs\",\"messages\":{msgs},\"secs\":{s:.3},\"msgs_per_sec\":{:.0}}}",
        msgs as f64 / s
    ))
}

/// 64-byte round trips (B echoes). Returns p50/p99 in µs.
pub async fn rtt(rounds: usize) -> Result<String, String> {
    let (a, mut ea, b, mut eb) = pair().await?;
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
    let msg = Bytes::from(vec![2u8; 64]);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.send(pb, ProtocolId(0), 0, msg.clone()).await.map_err(|e| e.to_string())?;
        loop {
            match ea.next().await {
                Some(Event::Message { .. }) => break,
                Some(_) => {}
                None => return Err("events ended".into()),
            }
        }
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let p = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)].as_secs_f64() * 1e6;
    a.shutdown().await;
    b.shutdown().await;
    echo.abort();
    Ok(format!("{{\"bench\":\"rtt\",\"rounds\":{rounds},\"p50_us\":{:.1},\"p99_us\":{:.1}}}", p(50), p(99)))
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
