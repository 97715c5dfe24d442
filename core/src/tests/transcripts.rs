//! Byte-exact transcripts of every handshake path (SPEC.md §14.3), made by
//! the real code and compared with the text in SPEC.md, so the spec cannot
//! drift from the code. `scripts/bless-transcripts.sh` writes them into
//! SPEC.md after an intended change of the wire.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rand_core::{CryptoRng, RngCore};

use crate::crypto::CipherState;
use crate::knowledge::Ticket;
use crate::transport::handshake::kind;
use crate::{
    Bytes, Config, DisconnectReason, Event, Instant, Keypair, Node, PeerAddr, Protocol, ProtocolId, SeededRng,
};

std::thread_local! {
    /// Every Noise `Split()` on this thread: `h`, `k1`, `k2`, the resumption seed.
    static SPLITS: RefCell<Vec<[[u8; 32]; 4]>> = const { RefCell::new(Vec::new()) };
}

/// Called by the Noise handshake when it splits (tests only).
pub(crate) fn note_split(h: &[u8; 32], k1: &[u8; 32], k2: &[u8; 32], seed: &[u8; 32]) {
    SPLITS.with(|s| s.borrow_mut().push([*h, *k1, *k2, *seed]));
}

fn take_splits() -> Vec<[[u8; 32]; 4]> {
    SPLITS.with(|s| core::mem::take(&mut *s.borrow_mut()))
}

/// A seeded generator that records every draw (the ephemeral secrets).
struct Recording {
    inner: SeededRng,
    draws: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RngCore for Recording {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        if let Ok(mut d) = self.draws.lock() {
            d.push(dest.to_vec());
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Recording {}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `b` as rows of 32 space-separated bytes, indented.
fn hex_rows(b: &[u8]) -> String {
    let mut s = String::new();
    for row in b.chunks(32) {
        let line: Vec<String> = row.iter().map(|x| format!("{x:02x}")).collect();
        let _ = writeln!(s, "    {}", line.join(" "));
    }
    s
}

/// A node of a transcript: a fixed static key, a recording RNG.
struct Party {
    name: &'static str,
    node: Node,
    secret: [u8; 32],
    draws: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The protocol both parties register (the hello of SPEC.md §14.2).
const CHAT: ProtocolId = ProtocolId(0);

impl Party {
    fn new(name: &'static str, secret: [u8; 32], seed: u64) -> Self {
        let draws = Arc::new(Mutex::new(Vec::new()));
        let rng = Recording { inner: SeededRng::from_u64(seed), draws: draws.clone() };
        let mut config = Config::default();
        config.register(Protocol::new("chat", 1, 1));
        let node = Node::new(config, Keypair::from_secret_bytes(secret), Box::new(rng), Instant::ZERO)
            .expect("valid config");
        Party { name, node, secret, draws }
    }

    fn describe(&self, out: &mut String) {
        let _ = writeln!(out, "{}: static secret `{}`", self.name, hex(&self.secret));
        let _ = writeln!(
            out,
            "{}  node ID (static public key) `{}`",
            " ".repeat(self.name.len()),
            self.node.node_id()
        );
    }

    fn ephemerals(&self, out: &mut String) {
        let draws = self.draws.lock().map(|d| d.clone()).unwrap_or_default();
        let _ =
            writeln!(out, "{}'s ephemeral secrets, in the order its handshake messages use them:", self.name);
        if draws.is_empty() {
            let _ = writeln!(out, "- none");
        }
        for d in &draws {
            let _ = writeln!(out, "- `{}`", hex(d));
        }
        if let Ok(mut d) = self.draws.lock() {
            d.clear();
        }
    }
}

fn frame_name(body: &[u8]) -> String {
    match (body.first().copied(), body.get(1)) {
        (Some(kind::FULL_INIT), _) => "FULL_INIT".into(),
        (Some(kind::INTRODUCED_INIT), _) => "INTRODUCED_INIT".into(),
        (Some(kind::RESUME_INIT), _) => "RESUME_INIT".into(),
        (Some(kind::RESPONSE), _) => "RESPONSE".into(),
        (Some(kind::FINISH), _) => "FINISH".into(),
        (Some(kind::RETRY), Some(c)) => format!("RETRY, cause {c}"),
        (Some(kind::REJECT), Some(c)) => format!("REJECT, reason {c}"),
        _ => "unknown".into(),
    }
}

/// Runs one connection from `a` to `b` (A dials `target` at B) until both
/// sides are quiet, writing every frame, the handshake's outputs and the
/// events into `out`. Once A is connected it sends "hello" on `chat`, and
/// B answers "hi": the first records of each side.
fn run(out: &mut String, a: &mut Party, b: &mut Party, target: Option<crate::NodeId>) {
    let now = Instant::ZERO;
    let addr = PeerAddr { id: target, addr: crate::io::TEST_ADDR };
    let ca = a.node.dial(addr, now).expect("dial");
    let _ = a.node.poll_dial();
    assert!(a.node.handle_connected(ca, now));
    let cb = b.node.accept(crate::io::TEST_ADDR, now).expect("accept");
    let _ = writeln!(out, "```text");
    let mut log_after = Vec::new();
    // The record ciphers of each direction, from the last split: A is the
    // initiator, so A→B uses k1 and B→A k2.
    let mut ciphers: [Option<CipherState>; 2] = [None, None];
    for _ in 0..32 {
        let mut progress = false;
        for dir in 0..2 {
            let (from, to, cf, ct) =
                if dir == 0 { (&mut *a, &mut *b, ca, cb) } else { (&mut *b, &mut *a, cb, ca) };
            let plain = from.node.table.connections.get(&cf).map_or(0, |c| c.plain_out.len());
            let mut buf = Vec::new();
            if from.node.poll_transmit(now, &mut buf).is_some() {
                from.node.handle_written(cf, now);
                progress = true;
                let mut at = 0;
                while at + 2 <= buf.len() {
                    let len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
                    let frame = &buf[at..at + 2 + len];
                    let what = if at < plain { frame_name(&frame[2..]) } else { "record".into() };
                    let _ =
                        writeln!(out, "{}→{} {what}, frame of {} bytes:", from.name, to.name, frame.len());
                    out.push_str(&hex_rows(frame));
                    if at >= plain {
                        let (body, tag) = frame[2..].split_at(frame.len() - 2 - 16);
                        let mut text = body.to_vec();
                        let tag: [u8; 16] = tag.try_into().expect("16 bytes");
                        let opened = ciphers[dir].as_mut().map(|c| c.open_in_place(&[], &mut text, &tag));
                        assert!(matches!(opened, Some(Ok(()))), "a record of the transcript opens");
                        let _ = writeln!(out, "  plaintext ({} bytes):", text.len());
                        out.push_str(&hex_rows(&text));
                    }
                    at += 2 + len;
                }
                to.node.handle_input(ct, &mut buf, now);
            }
            for split in take_splits() {
                // Both sides split the same keys; note them once.
                if !log_after.contains(&split) {
                    log_after.push(split);
                    let [h, k1, k2, seed] = split;
                    ciphers = [Some(CipherState::new(k1)), Some(CipherState::new(k2))];
                    let t = Ticket::derive(&seed, Instant::ZERO);
                    let _ = writeln!(out, "-- handshake complete:");
                    let _ = writeln!(out, "   h (final handshake hash)       {}", hex(&h));
                    let _ = writeln!(out, "   k1 (initiator→responder key)   {}", hex(&k1));
                    let _ = writeln!(out, "   k2 (responder→initiator key)   {}", hex(&k2));
                    let _ = writeln!(out, "   resumption seed (next ticket)  {}", hex(&seed));
                    let _ = writeln!(out, "   next ticket id                 {}", hex(&t.id));
                }
            }
            while let Some(ev) = from.node.poll_event() {
                progress = true;
                match ev {
                    Event::HandshakeDowngraded { from: f, to: t, .. } => {
                        let _ = writeln!(out, "-- {}: downgraded {f:?} → {t:?}", from.name);
                    }
                    Event::PeerConnected { path, .. } => {
                        let _ = writeln!(out, "-- {}: PeerConnected, path {path:?}", from.name);
                        if from.name == "A" {
                            let peer = to.node.node_id();
                            from.node.send(&peer, CHAT, 0, Bytes::from_static(b"hello")).expect("send");
                        }
                    }
                    Event::Message { payload, .. } => {
                        let text = core::str::from_utf8(&payload).unwrap_or("?");
                        let _ = writeln!(out, "-- {}: message on chat, type 0: {text:?}", from.name);
                        if from.name == "B" {
                            let peer = to.node.node_id();
                            from.node.send(&peer, CHAT, 0, Bytes::from_static(b"hi")).expect("send");
                        }
                    }
                    ev => {
                        let _ = writeln!(out, "-- {}: {ev:?}", from.name);
                    }
                }
            }
        }
        if !progress {
            break;
        }
    }
    let _ = writeln!(out, "```");
    // End the connection quietly, so that the next one starts afresh.
    let peer = b.node.node_id();
    a.node.disconnect(&peer, DisconnectReason::Requested, now);
    let mut buf = Vec::new();
    while a.node.poll_transmit(now, &mut buf).is_some() {
        a.node.handle_written(ca, now);
        b.node.handle_input(cb, &mut buf, now);
        buf.clear();
    }
    for p in [&mut *a, &mut *b] {
        while p.node.poll_event().is_some() {}
        while p.node.poll_close().is_some() {}
        while p.node.poll_transmit(now, &mut buf).is_some() {
            buf.clear();
        }
    }
    let _ = take_splits();
}

/// The transcripts of §14.3, as markdown.
pub(crate) fn transcripts() -> String {
    // Splits of earlier tests on this thread are not ours.
    let _ = take_splits();
    let mut out = String::new();
    let (sa, sb, sx) = ([0x11; 32], [0x22; 32], [0x33; 32]);
    let intro = |out: &mut String, title: &str, setup: &str, a: &Party, b: &Party| {
        let _ = writeln!(out, "#### {title}\n");
        a.describe(out);
        b.describe(out);
        let _ = writeln!(out, "\n{setup}\n");
    };

    // Full.
    let (mut a, mut b) = (Party::new("A", sa, 1), Party::new("B", sb, 2));
    intro(&mut out, "14.3.1 Full (XX)", "A dials B by address alone.", &a, &b);
    run(&mut out, &mut a, &mut b, None);
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);

    // Resumed: A and B keep the tickets of the full session above.
    let _ = writeln!(out);
    intro(
        &mut out,
        "14.3.2 Resumed (NNpsk0)",
        "Continues §14.3.1: each side holds the ticket derived from that session's resumption seed \
         (its id and secret above). A dials `B_ID@address`.",
        &a,
        &b,
    );
    let bid = b.node.node_id();
    run(&mut out, &mut a, &mut b, Some(bid));
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);

    // Introduced.
    let (mut a, mut b) = (Party::new("A", sa, 3), Party::new("B", sb, 4));
    let _ = writeln!(out);
    intro(
        &mut out,
        "14.3.3 Introduced (IK)",
        "A knows B's node ID from introduction and holds no ticket; it dials `B_ID@address`.",
        &a,
        &b,
    );
    let bid = b.node.node_id();
    run(&mut out, &mut a, &mut b, Some(bid));
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);

    // Resumed → introduced: B has lost its tickets.
    let _ = writeln!(out);
    let aid = a.node.node_id();
    b.node.forget_ticket(&aid);
    intro(
        &mut out,
        "14.3.4 Downgrade: resumed → introduced",
        "Continues §14.3.3: A holds the ticket of that session, B has lost it (restarted without \
         persisting it). A dials `B_ID@address`.",
        &a,
        &b,
    );
    run(&mut out, &mut a, &mut b, Some(bid));
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);

    // Introduced → full: A was introduced to a key B does not hold.
    let (mut a, mut b) = (Party::new("A", sa, 5), Party::new("B", sb, 6));
    let x = Keypair::from_secret_bytes(sx).node_id();
    let _ = writeln!(out);
    intro(
        &mut out,
        "14.3.5 Downgrade: introduced → full, refused",
        &format!(
            "A was introduced to node `{x}` (static secret `{}`) at B's address, where B answers. A dials \
             `X_ID@address`; the full handshake reaches B, whose key is not the one dialled, and A closes \
             with `WrongPeer` (15, §7.2).",
            hex(&sx)
        ),
        &a,
        &b,
    );
    run(&mut out, &mut a, &mut b, Some(x));
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);

    // Resumed → introduced → full: a ticket for X, and X's key, at B's address.
    let (mut a, mut xn) = (Party::new("A", sa, 7), Party::new("X", sx, 8));
    run(&mut String::new(), &mut a, &mut xn, None);
    let _ = a.draws.lock().map(|mut d| d.clear());
    let mut b = Party::new("B", sb, 9);
    let _ = writeln!(out);
    intro(
        &mut out,
        "14.3.6 Downgrade: resumed → introduced → full, refused",
        &format!(
            "A holds a ticket for node `{x}` (from a full session with it, not shown) and dials \
             `X_ID@address`; B now answers at that address, and A closes with `WrongPeer` (15, §7.2) \
             once the full handshake proves B's key."
        ),
        &a,
        &b,
    );
    run(&mut out, &mut a, &mut b, Some(x));
    a.ephemerals(&mut out);
    b.ephemerals(&mut out);
    out
}

const BEGIN: &str = "<!-- transcripts: generated by core/src/tests/transcripts.rs -->\n";
const END: &str = "<!-- transcripts: end -->";

#[test]
fn spec_transcripts_are_what_the_code_sends() {
    let generated = transcripts();
    if std::env::var_os("DEVP2P_PRINT_TRANSCRIPTS").is_some() {
        std::print!("=====TRANSCRIPTS BEGIN=====\n{generated}=====TRANSCRIPTS END=====\n");
    }
    let spec = include_str!("../../../SPEC.md");
    let start = spec.find(BEGIN).expect("SPEC.md has the transcripts' begin marker") + BEGIN.len();
    let end = spec.find(END).expect("SPEC.md has the transcripts' end marker");
    assert!(
        spec[start..end] == generated,
        "SPEC.md §14.3 differs from what the code sends: run scripts/bless-transcripts.sh if the change is intended"
    );
}
