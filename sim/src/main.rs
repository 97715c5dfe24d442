//! `devp2p-sim`: runs a large simulated network and prints a summary.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use devp2p_sim::{Fault, HostId, Sim, SimConfig};

#[derive(Parser)]
#[command(name = "devp2p-sim", about = "Deterministic simulation of a devp2p network")]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Seed; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual duration in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Average number of peers per node (each node dials half of them).
    #[arg(long, default_value_t = 8)]
    degree: usize,
    /// Seconds between the messages each node sends to a random peer.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Every this many seconds, crash a random node, restart it half an
    /// interval later and redial its old peers by ID (0: no churn).
    #[arg(long, default_value_t = 0)]
    churn: u64,
    /// Print the summary as one JSON line too.
    #[arg(long)]
    json: bool,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    let seed = args.seed;
    let result = std::panic::catch_unwind(|| run(&args));
    if result.is_err() {
        eprintln!("\nsimulation failed; replay with --seed {seed}");
        std::process::exit(1);
    }
}

fn run(args: &Args) {
    let mut cfg = SimConfig::with_seed(args.seed);
    cfg.record_events = false;
    cfg.check_every_step = false;
    let mut sim = Sim::new(cfg);
    let wall = Instant::now();
    for _ in 0..args.nodes {
        sim.add_host();
    }
    sim.connect_random(args.degree.div_ceil(2));
    sim.start_traffic(Duration::from_secs_f64(args.interval), args.size);
    if args.churn > 0 {
        // A deterministic schedule derived from the seed.
        let mut x = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = args.churn;
        while t < args.duration {
            let h = HostId((next() % args.nodes as u64) as usize);
            sim.schedule(Duration::from_secs(t), Fault::Crash(h));
            let back = Duration::from_secs(t) + Duration::from_secs(args.churn) / 2;
            sim.schedule(back, Fault::Restart(h));
            for _ in 0..args.degree.div_ceil(2) {
                let peer = HostId((next() % args.nodes as u64) as usize);
                if peer != h {
                    sim.schedule(back, Fault::Connect(h, peer, true));
                }
            }
            t += args.churn;
        }
    }
    let total = Duration::from_secs(args.duration);
    let slices = 50u32;
    let mut err = std::io::stderr();
    for i in 1..=slices {
        sim.run_for(total / slices);
        if let Err(v) = sim.check_invariants() {
            panic!("invariant broken at {:?} (seed {}): {v}", sim.now(), args.seed);
        }
        let done = (i * 40 / slices) as usize;
        let _ = write!(
            err,
            "\r[{}{}] {:>3}% virtual {:>5}s  events {:>10}  delivered {:>9}  wall {:>6.1}s",
            "#".repeat(done),
            " ".repeat(40 - done),
            i * 100 / slices,
            (total / slices * i).as_secs(),
            sim.stats().steps,
            sim.ledger().delivered,
            wall.elapsed().as_secs_f64()
        );
    }
    let _ = writeln!(err);
    let elapsed = wall.elapsed();
    let s = sim.stats();
    let peers: usize = (0..sim.host_count()).map(|h| sim.peer_count(devp2p_sim::HostId(h))).sum();
    println!("seed                 {}", args.seed);
    println!("nodes                {} (average degree {:.1})", args.nodes, peers as f64 / args.nodes as f64);
    println!("virtual time         {} s", args.duration);
    println!("events processed     {}", s.steps);
    println!("messages             {}", sim.ledger());
    for (path, n) in &s.handshakes {
        println!("handshakes {path:<10} {n}");
    }
    println!("downgrades           {}", s.downgrades);
    println!("churn                every {} s", args.churn);
    println!("failed connections   {}", s.failed_connections);
    println!("stream bytes         {}", s.stream_bytes);
    println!("wall time            {:.2} s", elapsed.as_secs_f64());
    println!("events per second    {:.0}", s.steps as f64 / elapsed.as_secs_f64());
    println!("peak memory          {} MiB", peak_rss_kib() / 1024);
    println!("largest node buffer  {} bytes", s.peak_node_buffer);
    println!("trace hash           {:016x}", sim.trace_hash());
    if args.json {
        println!(
            "{{\"nodes\":{},\"seed\":{},\"virtual_s\":{},\"events\":{},\"delivered\":{},\"wall_s\":{:.3},\"events_per_s\":{:.0},\"peak_rss_mib\":{},\"trace\":\"{:016x}\"}}",
            args.nodes,
            args.seed,
            args.duration,
            s.steps,
            sim.ledger().delivered,
            elapsed.as_secs_f64(),
            s.steps as f64 / elapsed.as_secs_f64(),
            peak_rss_kib() / 1024,
            sim.trace_hash()
        );
    }
}
