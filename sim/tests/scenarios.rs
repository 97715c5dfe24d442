//! Scenario and property tests of the simulator and, through it, the core.

use std::time::Duration;

use devp2p_core::{Event, HandshakePath};
use devp2p_sim::{Fault, HostId, LinkConfig, Sim, SimConfig};
use proptest::prelude::*;

fn paths(sim: &Sim, h: HostId) -> Vec<HandshakePath> {
    sim.events(h)
        .iter()
        .filter_map(|e| match e {
            Event::PeerConnected { path, .. } => Some(*path),
            _ => None,
        })
        .collect()
}

/// A small busy scenario: a ring of dials, traffic, a partition, a crash.
fn scenario(seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::with_seed(seed));
    let hosts: Vec<HostId> = (0..6).map(|_| sim.add_host()).collect();
    for i in 0..6 {
        sim.connect(hosts[i], hosts[(i + 1) % 6], i % 2 == 0);
    }
    sim.run_for(Duration::from_secs(1));
    sim.start_traffic(Duration::from_millis(50), 300);
    // A fault schedule: partition, heal, crash, restart and reconnect.
    sim.schedule(Duration::from_secs(5), Fault::Partition(hosts[..2].to_vec()));
    sim.schedule(Duration::from_secs(10), Fault::Heal);
    sim.schedule(Duration::from_secs(10), Fault::Crash(hosts[3]));
    sim.schedule(Duration::from_secs(12), Fault::Restart(hosts[3]));
    sim.schedule(Duration::from_secs(12), Fault::Connect(hosts[3], hosts[4], true));
    sim.run_for(Duration::from_secs(17));
    assert!(sim.is_connected(hosts[3], hosts[4]));
    sim
}

#[test]
fn same_seed_same_run_byte_for_byte() {
    let a = scenario(42);
    let b = scenario(42);
    let c = scenario(43);
    assert_eq!(a.trace_hash(), b.trace_hash(), "seed 42 replayed differently");
    assert_eq!(a.stats().steps, b.stats().steps);
    assert_eq!(a.ledger().delivered, b.ledger().delivered);
    assert_ne!(a.trace_hash(), c.trace_hash(), "different seeds gave the same trace");
    assert!(a.ledger().delivered > 100, "{}", a.ledger());
    a.check_invariants().unwrap();
}

#[test]
fn every_path_in_the_simulator() {
    let mut sim = Sim::new(SimConfig::with_seed(1));
    let (a, b, c) = (sim.add_host(), sim.add_host(), sim.add_host());
    sim.connect(a, b, false);
    sim.connect(c, b, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(paths(&sim, a), vec![HandshakePath::Full]);
    assert_eq!(paths(&sim, c), vec![HandshakePath::Introduced]);
    sim.disconnect(a, b);
    sim.run_for(Duration::from_secs(1));
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(paths(&sim, a), vec![HandshakePath::Full, HandshakePath::Resumed]);
    // B restarts without its tickets: A's resumption falls back to introduced.
    let mut cfg = SimConfig::with_seed(2);
    cfg.persist_tickets = false;
    let mut sim = Sim::new(cfg);
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, false);
    sim.run_for(Duration::from_secs(1));
    sim.crash(b);
    sim.run_for(Duration::from_secs(1));
    sim.restart(b);
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(paths(&sim, a), vec![HandshakePath::Full, HandshakePath::Introduced]);
    assert_eq!(sim.stats().downgrades, 1);
}

#[test]
fn restarted_host_keeps_identity_and_persisted_tickets() {
    let mut sim = Sim::new(SimConfig::with_seed(3));
    let (a, b) = (sim.add_host(), sim.add_host());
    let id = sim.node_id(a);
    sim.connect(a, b, false);
    sim.run_for(Duration::from_secs(1));
    sim.crash(a);
    sim.run_for(Duration::from_secs(1));
    assert!(!sim.is_connected(b, a), "B noticed the reset");
    sim.restart(a);
    assert_eq!(sim.node_id(a), id);
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(paths(&sim, a), vec![HandshakePath::Full, HandshakePath::Resumed]);
}

#[test]
fn messages_during_a_short_partition_arrive_after_the_heal() {
    let mut sim = Sim::new(SimConfig::with_seed(4));
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    sim.partition(&[a]);
    for _ in 0..20 {
        assert!(sim.send(a, b, 0, 1, 1000));
    }
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.ledger().delivered, 0);
    sim.heal();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.ledger().delivered, 20, "{}", sim.ledger());
    sim.check_invariants().unwrap();
}

#[test]
fn a_burst_of_small_messages_arrives_in_batches_and_all_are_accounted() {
    // A slow link: while a record is on its way, the next messages gather.
    let mut cfg = SimConfig::with_seed(6);
    cfg.link = LinkConfig { bandwidth: Some(125_000), ..LinkConfig::default() };
    let mut sim = Sim::new(cfg);
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    // B's application holds protocol 0 (its credit does not go back), then
    // lets go: the batches' messages are counted one by one either way.
    sim.stall_consumer(b, 0);
    for i in 0..600 {
        // The ledger's header takes 40 of each message's bytes.
        assert!(sim.send(a, b, (i % 3 == 0) as u16, 1, 40 + i % 24));
    }
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.ledger().delivered, 600, "{}", sim.ledger());
    assert_eq!(sim.unconsumed(b), 400, "the stalled protocol's messages, each counted");
    let batches: Vec<usize> = sim
        .events(b)
        .iter()
        .filter_map(|e| match e {
            Event::Messages(batch) => Some(batch.len()),
            _ => None,
        })
        .collect();
    assert!(!batches.is_empty() && batches.iter().all(|&n| n >= 2), "{batches:?}");
    sim.resume_consumer(b, 0);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.unconsumed(b), 0);
    sim.check_invariants().unwrap();
}

#[test]
fn a_long_partition_times_out_and_accounts_for_every_message() {
    let mut sim = Sim::new(SimConfig::with_seed(5));
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    sim.partition(&[a]);
    for _ in 0..20 {
        sim.send(a, b, 0, 1, 1000);
    }
    sim.run_for(Duration::from_secs(90));
    assert!(!sim.is_connected(a, b));
    sim.heal();
    sim.run_for(Duration::from_secs(5));
    let l = sim.ledger();
    assert_eq!(l.outstanding(), 0, "{l}");
    assert_eq!(l.delivered + l.returned + l.lost, 20, "{l}");
    sim.check_invariants().unwrap();
}

#[test]
fn bandwidth_and_latency_shape_delivery_time() {
    let mut sim = Sim::new(SimConfig::with_seed(6));
    let (a, b) = (sim.add_host(), sim.add_host());
    let link = LinkConfig {
        latency: Duration::from_millis(50),
        jitter: Duration::ZERO,
        bandwidth: Some(1_000_000),
        ..LinkConfig::default()
    };
    sim.set_link(a, b, link);
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    let start = sim.now();
    assert!(sim.send(a, b, 1, 0, 1_000_000));
    let mut arrived = None;
    while sim.step() {
        if sim.ledger().delivered == 1 {
            arrived = Some(sim.now());
            break;
        }
    }
    let took = arrived.expect("delivered") - start;
    // 1 MB at 1 MB/s plus 50 ms latency, plus framing overhead.
    assert!(took >= Duration::from_millis(1050) && took < Duration::from_millis(1100), "{took:?}");
}

#[test]
fn datagrams_are_lost_and_reordered_as_configured() {
    let mut sim = Sim::new(SimConfig::with_seed(7));
    let (a, b) = (sim.add_host(), sim.add_host());
    let link = LinkConfig { datagram_loss: 0.2, datagram_reorder: 0.2, ..LinkConfig::default() };
    sim.set_link(a, b, link);
    for i in 0..1000u32 {
        sim.send_datagram(a, b, i.to_be_bytes().to_vec());
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_secs(1));
    let got: Vec<u32> =
        sim.take_datagrams(b).into_iter().map(|(_, d)| u32::from_be_bytes(d.try_into().unwrap())).collect();
    assert!((700..900).contains(&got.len()), "{} of 1000 arrived", got.len());
    assert!(got.windows(2).any(|w| w[0] > w[1]), "some reordering");
    sim.partition(&[a]);
    sim.send_datagram(a, b, vec![1]);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.take_datagrams(b).is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Connect(usize, usize, bool),
    Send(usize, usize, usize),
    Disconnect(usize, usize),
    Partition(usize),
    Heal,
    Crash(usize),
    Restart(usize),
    Run(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..5usize, 0..5usize, any::<bool>()).prop_map(|(a, b, i)| Op::Connect(a, b, i)),
        6 => (0..5usize, 0..5usize, 0..70_000usize).prop_map(|(a, b, n)| Op::Send(a, b, n)),
        1 => (0..5usize, 0..5usize).prop_map(|(a, b)| Op::Disconnect(a, b)),
        1 => (0..5usize).prop_map(Op::Partition),
        1 => Just(Op::Heal),
        1 => (0..5usize).prop_map(Op::Crash),
        1 => (0..5usize).prop_map(Op::Restart),
        4 => (1..30_000u64).prop_map(Op::Run),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random scenarios: the invariants are checked after every step (a
    /// violation panics with the seed); at the end, after healing and time
    /// to settle, every message is delivered, handed back or lost with a
    /// transport that was broken.
    #[test]
    fn random_scenarios_keep_every_invariant(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut cfg = SimConfig::with_seed(seed);
        if seed & 1 == 1 {
            // Half the runs on slow links, where writes complete late.
            cfg.link.bandwidth = Some(2_000_000);
        }
        let mut sim = Sim::new(cfg);
        let hosts: Vec<HostId> = (0..5).map(|_| sim.add_host()).collect();
        for a in 0..5 {
            for b in a + 1..5 {
                sim.connect(hosts[a], hosts[b], (seed >> (a + b)) & 1 == 1);
            }
        }
        sim.run_for(Duration::from_millis(200));
        for op in ops {
            match op {
                Op::Connect(a, b, id) if a != b => sim.connect(hosts[a], hosts[b], id),
                Op::Send(a, b, n) if a != b => { sim.send(hosts[a], hosts[b], (n % 2) as u16, (n % 2) as u32, n); }
                Op::Disconnect(a, b) if a != b => sim.disconnect(hosts[a], hosts[b]),
                Op::Partition(a) => sim.partition(&[hosts[a]]),
                Op::Heal => sim.heal(),
                Op::Crash(a) => sim.crash(hosts[a]),
                Op::Restart(a) => sim.restart(hosts[a]),
                Op::Run(ms) => sim.run_for(Duration::from_millis(ms)),
                _ => {}
            }
        }
        sim.heal();
        for h in &hosts {
            sim.restart(*h);
        }
        sim.run_for(Duration::from_secs(120));
        prop_assert!(sim.check_invariants().is_ok(), "seed {seed}: {:?}", sim.check_invariants());
        prop_assert_eq!(sim.ledger().outstanding(), 0, "seed {}: {}", seed, sim.ledger());
        SENT.fetch_add(sim.ledger().sent, std::sync::atomic::Ordering::Relaxed);
        DELIVERED.fetch_add(sim.ledger().delivered, std::sync::atomic::Ordering::Relaxed);
    }
}

static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static DELIVERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn random_scenarios_carry_real_traffic() {
    // Runs the property above and checks that its scenarios were not idle.
    random_scenarios_keep_every_invariant();
    let (s, d) = (
        SENT.load(std::sync::atomic::Ordering::Relaxed),
        DELIVERED.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(s > 100 && d > 50, "scenarios sent {s} and delivered {d} messages");
}

/// p50 and p99 of 64-byte messages on protocol 0 over a 10 Mbit/s link,
/// alone or while protocol 1 keeps the link saturated with 16 MiB messages.
fn small_message_latency(with_bulk: bool, record: usize) -> (Duration, Duration) {
    let mut cfg = SimConfig::with_seed(11);
    cfg.link = LinkConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::ZERO,
        bandwidth: Some(1_250_000),
        ..LinkConfig::default()
    };
    cfg.node.records.max_record_size = record;
    cfg.node.records.max_transmit_size = record;
    cfg.node.limits.max_message_size = 16 << 20;
    cfg.node.limits.max_reassembly_per_peer = 32 << 20;
    cfg.node.limits.max_queued_per_peer = 64 << 20;
    cfg.node.limits.max_queued_per_protocol = 64 << 20;
    cfg.record_events = false;
    cfg.check_every_step = false;
    let mut sim = Sim::new(cfg);
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    let peer = sim.node_id(b);
    for _ in 0..500 {
        if with_bulk && sim.node(a).map_or(0, |n| n.queued_bytes(&peer)) < (16 << 20) {
            assert!(sim.send(a, b, 1, 0, (16 << 20) - 40));
        }
        assert!(sim.send(a, b, 0, 0, 64 - 40));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(1));
    sim.check_invariants().unwrap();
    let mut l: Vec<u64> = sim.ledger().latencies(0).to_vec();
    assert_eq!(l.len(), 500);
    l.sort_unstable();
    let pct = |p: usize| Duration::from_nanos(l[(l.len() * p / 100).min(l.len() - 1)]);
    (pct(50), pct(99))
}

#[test]
fn a_small_message_waits_about_one_record_behind_a_bulk_transfer() {
    for record in [16 << 10, 4 << 10] {
        let (alone50, alone99) = small_message_latency(false, record);
        let (bulk50, bulk99) = small_message_latency(true, record);
        let record_time = Duration::from_nanos(record as u64 * 1_000_000_000 / 1_250_000);
        eprintln!(
            "record {record} B ({record_time:?} at 10 Mbit/s): 64 B alone p50 {alone50:?} p99 {alone99:?}; \
             beside 16 MiB bulk p50 {bulk50:?} p99 {bulk99:?}"
        );
        // Behind a saturating bulk transfer a small message waits for the
        // record (one transmit) already on the wire, and no more.
        assert!(
            bulk99 <= alone99 + record_time + Duration::from_millis(1),
            "p99 {bulk99:?} vs {alone99:?} + 1 record"
        );
    }
}

/// One protocol's consumer stalls on a 10 Mbit/s link: its sender stops
/// once the window is used, the other protocol keeps the link and its
/// latency, and nothing is lost when the consumer resumes.
#[test]
fn a_stalled_consumer_holds_up_only_its_own_protocol() {
    let mut cfg = SimConfig::with_seed(5);
    cfg.link = LinkConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::ZERO,
        bandwidth: Some(1_250_000),
        ..LinkConfig::default()
    };
    cfg.node.flow.receive_window = 256 << 10;
    cfg.record_events = false;
    let mut sim = Sim::new(cfg);
    let (a, b) = (sim.add_host(), sim.add_host());
    sim.connect(a, b, true);
    sim.run_for(Duration::from_secs(1));
    sim.stall_consumer(b, 0);
    let (mut sent, mut refused) = ([0usize; 2], 0usize);
    // 30 s of protocol 0 offering 16 KiB every 20 ms, protocol 1 twice that
    // (1.6 MB/s: more than the link carries).
    for _ in 0..1500 {
        for p in [0u16, 1, 1] {
            if sim.send(a, b, p, 0, 16 << 10) {
                sent[p as usize] += 1;
            } else {
                refused += 1;
            }
        }
        sim.run_for(Duration::from_millis(20));
        sim.check_invariants().unwrap();
        // B holds no more than the window of the stalled protocol.
        assert!(sim.unconsumed(b) * ((16 << 10) + 16) <= 256 << 10, "{} held", sim.unconsumed(b));
    }
    let held = sim.unconsumed(b);
    let delivered = |sim: &Sim, p| sim.ledger().latencies(p).len();
    assert!(held > 0 && delivered(&sim, 0) == held, "only the window's worth of protocol 0 arrived");
    // Protocol 1 had the link: ~1.25 MB/s for 30 s is ~2,200 messages of 16 KiB.
    assert!(delivered(&sim, 1) > 2000, "protocol 1 delivered {}", delivered(&sim, 1));
    assert!(refused > 0, "the senders saw backpressure");
    let before = delivered(&sim, 0);
    sim.resume_consumer(b, 0);
    sim.run_for(Duration::from_secs(60));
    sim.check_invariants().unwrap();
    assert_eq!(sim.unconsumed(b), 0);
    assert!(delivered(&sim, 0) > before + 100, "protocol 0 flows again");
    assert_eq!(sim.ledger().outstanding(), 0, "everything sent arrived");
    assert_eq!((delivered(&sim, 0), delivered(&sim, 1)), (sent[0], sent[1]));
}

/// The impersonation attack: A is introduced to node C at an address where
/// M answers. M cannot open the introduced first packet and asks for a
/// retry; the full handshake reaches M, and A refuses it, naming M's key:
/// A never connects to M as if it were C, and no messages flow.
#[test]
fn a_dial_naming_c_at_m_s_address_never_connects_to_m_as_c() {
    let mut sim = Sim::new(SimConfig::with_seed(11));
    let (a, m, c) = (sim.add_host(), sim.add_host(), sim.add_host());
    let (c_id, m_id) = (sim.node_id(c), sim.node_id(m));
    sim.dial_as(a, m, c_id);
    sim.run_for(Duration::from_secs(2));
    assert!(!sim.is_connected(a, m) && !sim.is_connected(a, c));
    assert!(paths(&sim, a).is_empty(), "A announced no peer: {:?}", sim.events(a));
    let refused = sim.events(a).iter().any(|e| {
        matches!(e, Event::ConnectionFailed { reason: devp2p_core::DisconnectReason::WrongPeer, peer: Some(p), found: Some(f), .. } if *p == c_id && *f == m_id)
    });
    assert!(refused, "{:?}", sim.events(a));
    sim.check_invariants().unwrap();
}
