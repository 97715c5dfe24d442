//! The `devp2p` command: key generation, a node you can talk through, and a demo.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

mod bench;
mod demo;

use clap::{Parser, Subcommand};
use devp2p_tokio::{Bytes, Config, Event, Keypair, Node, NodeConfig, PeerAddr, Protocol};
use rand_core::OsRng;

#[derive(Parser)]
#[command(name = "devp2p", version, about = "devp2p: encrypted typed datagrams between peers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generates an identity: prints the secret key (hex) and the node ID.
    Keygen {
        /// Also write the secret key (hex) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Runs a node: prints peers and messages; each line typed on stdin is
    /// sent to every peer on the `chat` protocol (`/stats` prints per-peer,
    /// per-protocol traffic, queue depths and flow-control credit).
    Node {
        /// Address to listen on (repeatable), e.g. 0.0.0.0:30303 or [::]:30303.
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Peer to dial (repeatable): host:port or NODEID@host:port.
        #[arg(long)]
        dial: Vec<PeerAddr>,
        /// Secret key as 64 hex digits, or a file holding them.
        #[arg(long)]
        key: Option<String>,
    },
    /// Measures the four workloads of ../shared/peers/libp2p-bench (bulk,
    /// 64 B messages, 64 B round trips, connections/s) on 127.0.0.1, and
    /// bulk over 8 protocols at once, and prints one JSON line each.
    Bench {
        /// Only this workload: bulk, bulk8, msgs, rtt, conns; or a baseline
        /// run only when named: aead (the bound for bulk: sealing records on
        /// one core and opening them on the other with the AEAD the runtimes
        /// use, no network) or tcp-rtt (64 B round trips over plain TCP on
        /// the same runtime, the baseline for rtt).
        #[arg(long)]
        only: Option<String>,
        /// Bytes for the bulk workloads.
        #[arg(long, default_value_t = 1 << 30)]
        bulk_bytes: u64,
        /// Messages for the 64 B workload.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        /// Messages per send call in the 64 B workload.
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// How the 64 B workload sends its batches: `packed` (each message
        /// written into a `SendBatch`, sent with `send_packed`) or `handles`
        /// (a `Vec` of payload handles on one buffer, sent with `send_batch`).
        #[arg(long, default_value = "packed")]
        send: String,
        /// How the 64 B workload receives: `batches` (the protocol's own
        /// stream, a batch at a time), `messages` (the same stream, one
        /// typed message per call) or `events` (`Events::next`, one typed
        /// event per message).
        #[arg(long, default_value = "batches")]
        recv: String,
        /// Round trips measured for the RTT workload (after 1,000 warm-up
        /// round trips; libp2p-bench's shape).
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        /// Connections for the handshake workload.
        #[arg(long, default_value_t = 300)]
        connections: usize,
        /// The runtime the nodes run on: `tokio` (2 workers) or `smol`
        /// (2 executor threads).
        #[arg(long, default_value = "tokio")]
        runtime: String,
    },
    /// Starts N nodes on loopback that connect by every handshake path,
    /// exchange messages and print a summary.
    Demo {
        /// Number of nodes (at least 3).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
}

fn load_key(spec: &str) -> Result<Keypair, String> {
    let text = if std::path::Path::new(spec).exists() {
        std::fs::read_to_string(spec).map_err(|e| e.to_string())?
    } else {
        spec.to_string()
    };
    let id = devp2p_tokio::NodeId::from_hex(text.trim()).ok_or("key must be 64 hex digits")?;
    Ok(Keypair::from_secret_bytes(id.0))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Bench { only, bulk_bytes, messages, batch, send, recv, rounds, connections, runtime } => {
            use bench::Receive;
            let packed = match send.as_str() {
                "packed" => true,
                "handles" => false,
                other => usage(&format!("--send is packed or handles, not {other}")),
            };
            let recv = [Receive::Batches, Receive::Messages, Receive::Events]
                .into_iter()
                .find(|r| r.name() == recv)
                .unwrap_or_else(|| usage(&format!("--recv is batches, messages or events, not {recv}")));
            let w = Workloads {
                only,
                bulk: bulk_bytes,
                messages: (messages, batch, packed, recv),
                rounds,
                connections,
            };
            match runtime.as_str() {
                "tokio" => tokio_runtime().block_on(run_bench::<devp2p_tokio::Tokio>(w, "tokio")),
                "smol" => {
                    // Two executor threads, as tokio's two workers (set
                    // before smol's global executor starts).
                    if std::env::var_os("SMOL_THREADS").is_none() {
                        std::env::set_var("SMOL_THREADS", "2");
                    }
                    smol::block_on(run_bench::<devp2p_smol::Smol>(w, "smol"))
                }
                other => usage(&format!("--runtime is tokio or smol, not {other}")),
            }
        }
        command => tokio_runtime().block_on(async move {
            match command {
                Cmd::Keygen { out } => keygen(out),
                Cmd::Node { listen, dial, key } => node(listen, dial, key).await,
                Cmd::Demo { nodes } => demo::run(nodes).await.and_then(|s| {
                    if s.corrupt == 0 && s.received == s.sent {
                        Ok(())
                    } else {
                        Err(format!("demo lost or corrupted messages: {s:?}"))
                    }
                }),
                Cmd::Bench { .. } => unreachable!("handled above"),
            }
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// tokio with two workers (the shape of libp2p-bench).
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start tokio: {e}")))
}

/// Reports a bad command line and exits.
fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

/// What `devp2p bench` runs.
struct Workloads {
    only: Option<String>,
    bulk: u64,
    messages: (u64, usize, bool, bench::Receive),
    rounds: usize,
    connections: usize,
}

/// Runs the workloads on runtime `R`, each as a task on its workers, as an
/// application would (`main` itself runs outside the worker pool), and
/// prints one JSON line each, naming the runtime.
async fn run_bench<R: devp2p_runtime::Runtime>(w: Workloads, name: &str) -> Result<(), String> {
    let run = |n: &str| w.only.as_deref().is_none_or(|o| o == n);
    let print = |line: String| println!("{{\"runtime\":\"{name}\",{}", &line[1..]);
    let (messages, batch, packed, recv) = w.messages;
    if run("bulk") {
        print(bench::spawn::<R, _>(bench::bulk::<R>(w.bulk, 1)).await??);
    }
    if run("bulk8") {
        print(bench::spawn::<R, _>(bench::bulk::<R>(w.bulk, 8)).await??);
    }
    if run("msgs") {
        print(bench::spawn::<R, _>(bench::messages::<R>(messages, batch, packed, recv)).await??);
    }
    if run("rtt") {
        print(bench::spawn::<R, _>(bench::rtt::<R>(w.rounds)).await??);
    }
    if run("conns") {
        print(bench::spawn::<R, _>(bench::connections::<R>(w.connections)).await??);
    }
    if w.only.as_deref() == Some("tcp-rtt") {
        print(bench::spawn::<R, _>(bench::tcp_rtt::<R>(w.rounds)).await??);
    }
    if w.only.as_deref() == Some("aead") {
        println!("{}", bench::aead_bound(w.bulk));
    }
    Ok(())
}

fn keygen(out: Option<PathBuf>) -> Result<(), String> {
    let k = Keypair::generate(&mut OsRng);
    let secret = hex(&k.secret_bytes());
    println!("secret  {secret}");
    println!("node id {}", k.node_id());
    if let Some(path) = out {
        std::fs::write(&path, format!("{secret}\n")).map_err(|e| e.to_string())?;
        println!("secret written to {}", path.display());
    }
    Ok(())
}

async fn node(listen: Vec<SocketAddr>, dial: Vec<PeerAddr>, key: Option<String>) -> Result<(), String> {
    let mut core = Config::default();
    let chat = core.register(Protocol::new("chat", 1, 1));
    let mut cfg = NodeConfig::new(core);
    cfg.listen = listen;
    if let Some(k) = key {
        cfg = cfg.keypair(load_key(&k)?);
    }
    let (node, mut events) = Node::spawn(cfg).await.map_err(|e| e.to_string())?;
    println!("node id {}", node.node_id());
    for a in node.listen_addrs() {
        println!("listening on {}@{a}", node.node_id());
    }
    for d in dial {
        let n = node.clone();
        tokio::spawn(async move {
            match n.dial(d).await {
                Ok(p) => println!("dialled {d}: peer {p}"),
                Err(e) => println!("dial {d} failed: {e}"),
            }
        });
    }
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Event::PeerConnected { peer, path, direction, .. }) => println!("+ peer {peer} ({direction:?}, {path:?})"),
                Some(Event::PeerDisconnected { peer, reason, unsent, .. }) => println!("- peer {peer}: {reason} ({} unsent)", unsent.len()),
                Some(Event::Message { peer, payload, .. }) => println!("<{:?}> {}", peer, String::from_utf8_lossy(&payload)),
                Some(Event::HandshakeDowngraded { peer, from, to, .. }) => println!("! handshake with {peer} downgraded {from:?} -> {to:?}"),
                Some(Event::ConnectionFailed { reason, .. }) => println!("! connection failed: {reason}"),
                Some(_) => {}
                None => break,
            },
            line = line_rx.recv() => match line {
                Some(l) if l.trim() == "/stats" => {
                    for m in node.metrics().await {
                        println!("peer {:?} rtt {:?}", m.peer, m.rtt);
                        for p in m.protocols {
                            let credit = if p.send_credit == i64::MAX {
                                "unlimited".to_string()
                            } else {
                                format!("{} B", p.send_credit)
                            };
                            println!(
                                "  protocol {:?}: in {} msgs / {} B, out {} msgs / {} B, queued {} msgs / {} B, \
                                 send credit {credit}, unconsumed {} B",
                                p.protocol, p.messages_in, p.bytes_in, p.messages_out, p.bytes_out,
                                p.queued_messages, p.queued_bytes, p.unconsumed
                            );
                        }
                    }
                }
                Some(l) => {
                    for p in node.peers().await {
                        if let Err(e) = node.send(p, chat, 0, Bytes::from(l.clone())).await {
                            println!("! send to {p:?} failed: {e}");
                        }
                    }
                }
                None => { node.shutdown().await; break; }
            },
            _ = tokio::signal::ctrl_c() => { node.shutdown().await; break; }
        }
    }
    Ok(())
}
