//! `devp2p demo`: several nodes on loopback connect by every handshake path
//! (full, introduced, resumed, and both downgrades), exchange messages on
//! two protocols, and print a summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devp2p_tokio::{Bytes, Config, Event, HandshakePath, Keypair, NodeId, Protocol, ProtocolId};
use rand_core::OsRng;

use devp2p_tokio::PeerAddr;
use devp2p_tokio::{DialError, Node, NodeConfig};

/// What the demo observed.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Nodes started.
    pub nodes: usize,
    /// Successful handshakes by path (counted on the dialling side).
    pub paths: BTreeMap<String, usize>,
    /// Downgrades seen, as `from -> to`.
    pub downgrades: Vec<String>,
    /// Dials of a node ID refused because another key answered.
    pub refused_wrong_peer: usize,
    /// Messages sent.
    pub sent: usize,
    /// Messages received with the expected content.
    pub received: usize,
    /// Messages received with unexpected content or out of order.
    pub corrupt: usize,
    /// Round-trip times measured by keepalive, in microseconds.
    pub rtts_us: Vec<u128>,
    /// Wall time of the whole demo.
    pub elapsed: Duration,
}

struct DemoNode {
    node: Node,
    key: Keypair,
    log: Arc<Mutex<Vec<Event>>>,
}

fn protocols() -> Vec<Protocol> {
    vec![Protocol::new("chat", 1, 2), Protocol::new("blocks", 1, 4)]
}

async fn start(key: Keypair, port4: u16) -> std::io::Result<DemoNode> {
    let mut core = Config::with_protocols(protocols());
    core.timeouts.keepalive = Duration::from_millis(100);
    let mut cfg =
        NodeConfig::new(core).keypair(key.clone()).listen(SocketAddr::from(([127, 0, 0, 1], port4)));
    // IPv6 loopback too, where the machine has it.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        cfg = cfg.listen("[::1]:0".parse().expect("literal"));
    }
    let (node, mut events) = Node::spawn(cfg).await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let Ok(mut v) = l.lock() {
                v.push(e);
            }
        }
    });
    Ok(DemoNode { node, key, log })
}

impl DemoNode {
    fn addr(&self) -> PeerAddr {
        self.node.peer_addr().expect("listening")
    }

    fn plain_addr(&self) -> PeerAddr {
        PeerAddr::from(self.node.listen_addrs()[0])
    }

    fn events(&self) -> Vec<Event> {
        self.log.lock().map(|v| v.clone()).unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, mut f: impl FnMut(&[Event]) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if f(&self.events()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("timed out waiting for {what}"))
    }
}

fn path_name(p: HandshakePath) -> &'static str {
    match p {
        HandshakePath::Full => "full (XX)",
        HandshakePath::Introduced => "introduced (IK)",
        HandshakePath::Resumed => "resumed (NNpsk0)",
    }
}

fn paths_to(node: &DemoNode, peer: NodeId) -> Vec<HandshakePath> {
    node.events()
        .iter()
        .filter_map(|e| match e {
            Event::PeerConnected { peer: p, path, .. } if *p == peer => Some(*path),
            _ => None,
        })
        .collect()
}

/// Dials and records the path of the new connection (waiting for its event
/// to reach the node's log).
async fn dial(s: &mut Summary, node: &DemoNode, addr: PeerAddr, print: bool) -> Result<NodeId, String> {
    let before = match addr.id {
        Some(id) => paths_to(node, id).len(),
        None => node.events().iter().filter(|e| matches!(e, Event::PeerConnected { .. })).count(),
    };
    let peer = node.node.dial(addr).await.map_err(|e| e.to_string())?;
    let after = if addr.id == Some(peer) { before + 1 } else { paths_to(node, peer).len().max(1) };
    node.wait_for("the connection event", |_| paths_to(node, peer).len() >= after).await?;
    let p = *paths_to(node, peer).last().ok_or("no connection event")?;
    *s.paths.entry(path_name(p).to_string()).or_default() += 1;
    if print {
        println!("  connected {:?} -> {:?} by the {} path", node.node.node_id(), peer, path_name(p));
    }
    Ok(peer)
}

/// Runs the demo with `n` nodes (at least 3).
pub async fn run(n: usize) -> Result<Summary, String> {
    let n = n.max(3);
    let t0 = Instant::now();
    let mut s = Summary { nodes: n, ..Summary::default() };
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start(Keypair::generate(&mut OsRng), 0).await.map_err(|e| e.to_string())?);
    }
    println!("started {n} nodes:");
    for d in &nodes {
        println!("  {} (also {:?})", d.addr(), &d.node.listen_addrs()[1..]);
    }
    println!("1. node 0 dials node 1 by address only: full handshake");
    let p1 = dial(&mut s, &nodes[0], nodes[1].plain_addr(), true).await?;

    println!("2. node 0 dials node 2 by NODEID@address: introduced 1-RTT handshake");
    let p2 = dial(&mut s, &nodes[0], nodes[2].addr(), true).await?;

    println!("3. node 0 drops node 1 and redials it: resumption keyed by the last session");
    nodes[0].node.disconnect(p1).await;
    nodes[1]
        .wait_for("disconnect", |ev| ev.iter().any(|e| matches!(e, Event::PeerDisconnected { .. })))
        .await?;
    dial(&mut s, &nodes[0], nodes[1].addr(), true).await?;

    println!(
        "4. node {} dials another node ID at node 1's address: introduced fails, the full handshake reaches node 1, \
         and the dial is refused (node 1 is not the node dialled)",
        n - 1
    );
    let other = Keypair::generate(&mut OsRng).node_id();
    let stale = PeerAddr::with_id(other, nodes[1].addr().addr);
    match nodes[n - 1].node.dial(stale).await {
        Err(DialError::WrongPeer { dialled, found })
            if dialled == other && found == nodes[1].node.node_id() =>
        {
            println!("  refused: {}", DialError::WrongPeer { dialled, found });
            s.refused_wrong_peer += 1;
        }
        Err(e) => return Err(format!("dial of a wrong node ID: {e}")),
        Ok(p) => return Err(format!("a dial of {other:?} was handed {p:?}")),
    }
    // The downgrade reaches the node's log just before the refusal.
    nodes[n - 1]
        .wait_for("the downgrade", |ev| ev.iter().any(|e| matches!(e, Event::HandshakeDowngraded { .. })))
        .await?;

    println!("5. node 2 restarts and forgets its tickets; node 0 redials: resumption fails, falls back to introduced");
    let port = nodes[2].node.listen_addrs()[0].port();
    nodes[2].node.shutdown().await;
    nodes[0]
        .wait_for("node 2 gone", |ev| {
            ev.iter().any(|e| matches!(e, Event::PeerDisconnected { peer, .. } if *peer == p2))
        })
        .await?;
    let key2 = nodes[2].key.clone();
    nodes[2] = start(key2, port).await.map_err(|e| e.to_string())?;
    dial(&mut s, &nodes[0], nodes[2].addr(), true).await?;

    println!("6. the other nodes dial node 0 by NODEID@address");
    for i in 3..n.saturating_sub(1) {
        dial(&mut s, &nodes[i], nodes[0].addr(), false).await?;
    }

    for d in &nodes {
        for e in d.events() {
            if let Event::HandshakeDowngraded { from, to, .. } = e {
                s.downgrades.push(format!("{} -> {}", path_name(from), path_name(to)));
            }
        }
    }

    println!("7. every node sends 200 messages to each peer on two protocols");
    let mut expected: BTreeMap<(usize, NodeId), usize> = BTreeMap::new();
    for (i, d) in nodes.iter().enumerate() {
        for peer in d.node.peers().await {
            for k in 0..200u32 {
                let (proto, ty) = if k % 2 == 0 { (ProtocolId(0), 0) } else { (ProtocolId(1), 3) };
                let payload = Bytes::from(format!("{i}:{k}:{}", "x".repeat((k as usize * 37) % 3000)));
                d.node.send(peer, proto, ty, payload).await.map_err(|e| e.to_string())?;
                s.sent += 1;
            }
            let j = nodes.iter().position(|x| x.node.node_id() == peer).ok_or("unknown peer")?;
            *expected.entry((j, d.node.node_id())).or_default() += 200;
        }
    }
    for ((j, from), count) in &expected {
        let from = *from;
        nodes[*j]
            .wait_for("messages", |ev| {
                ev.iter().filter(|e| matches!(e, Event::Message { peer, .. } if *peer == from)).count()
                    >= *count
            })
            .await?;
        let sender = nodes.iter().position(|x| x.node.node_id() == from).ok_or("unknown sender")?;
        // Messages k = 0, 2, 4, ... went on `chat`, the odd ones on `blocks`;
        // order is kept per protocol.
        let mut next = [0u32, 1u32];
        for e in nodes[*j].events() {
            if let Event::Message { peer, protocol, payload, .. } = e {
                if peer != from {
                    continue;
                }
                let lane = usize::from(protocol.0 == 1);
                let k = next[lane];
                let want = format!("{sender}:{k}:{}", "x".repeat((k as usize * 37) % 3000));
                if payload == want.as_bytes() {
                    s.received += 1;
                } else {
                    s.corrupt += 1;
                }
                next[lane] += 2;
            }
        }
    }

    tokio::time::sleep(Duration::from_millis(250)).await;
    for d in &nodes {
        for p in d.node.peers().await {
            if let Some(r) = d.node.rtt(p).await {
                s.rtts_us.push(r.as_micros());
            }
        }
    }
    for d in &nodes {
        d.node.shutdown().await;
    }
    s.elapsed = t0.elapsed();
    s.rtts_us.sort_unstable();
    println!("summary:");
    println!("  nodes: {}", s.nodes);
    for (p, c) in &s.paths {
        println!("  handshakes by the {p} path: {c}");
    }
    for d in &s.downgrades {
        println!("  downgrade: {d}");
    }
    println!("  dials refused because another key answered: {}", s.refused_wrong_peer);
    println!("  messages: {} sent, {} received intact and in order, {} bad", s.sent, s.received, s.corrupt);
    if let (Some(lo), Some(hi)) = (s.rtts_us.first(), s.rtts_us.last()) {
        println!("  keepalive RTT: {lo}..{hi} µs over {} links", s.rtts_us.len());
    }
    println!("  wall time: {:.2?}", s.elapsed);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::run;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_runs_every_path() {
        let s = run(4).await.expect("demo");
        assert_eq!(s.corrupt, 0);
        assert_eq!(s.received, s.sent);
        assert!(s.sent > 0);
        for p in ["full (XX)", "introduced (IK)", "resumed (NNpsk0)"] {
            assert!(s.paths.get(p).copied().unwrap_or(0) > 0, "path {p} used: {:?}", s.paths);
        }
        assert!(
            s.downgrades.iter().any(|d| d == "resumed (NNpsk0) -> introduced (IK)"),
            "{:?}",
            s.downgrades
        );
        assert!(s.downgrades.iter().any(|d| d == "introduced (IK) -> full (XX)"), "{:?}", s.downgrades);
        assert_eq!(s.refused_wrong_peer, 1, "the dial of a wrong node ID is refused");
    }
}
