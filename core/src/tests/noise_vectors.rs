//! The Noise patterns devp2p uses, checked against the cacophony test
//! vectors and against the `snow` implementation as the counterparty.

use alloc::string::String;
use alloc::vec::Vec;

use crate::crypto::noise::{DhKeypair, HandshakeState, Pattern, IK, NNPSK0, XX};
use crate::SeededRng;

const VECTORS: &str = include_str!("../../tests/data/noise-25519-chachapoly.json");

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn key(v: &serde_json::Value, field: &str) -> Option<[u8; 32]> {
    v.get(field).and_then(|x| x.as_str()).map(|s| unhex(s).try_into().expect("32 bytes"))
}

fn psk(v: &serde_json::Value, field: &str) -> Option<[u8; 32]> {
    v.get(field)
        .and_then(|x| x.as_array())
        .and_then(|a| a.first())
        .and_then(|x| x.as_str())
        .map(|s| unhex(s).try_into().expect("32 bytes"))
}

fn check_vector(pattern: &'static Pattern) {
    let all: serde_json::Value = serde_json::from_str(VECTORS).expect("json");
    let v = all["vectors"]
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["protocol_name"] == pattern.protocol_name)
        .expect("vector for pattern");
    let mut rng = SeededRng::from_u64(0);
    let mut init = HandshakeState::new(
        pattern,
        true,
        &unhex(v["init_prologue"].as_str().unwrap_or("")),
        key(v, "init_static").map(DhKeypair::from_secret),
        key(v, "init_remote_static"),
        psk(v, "init_psks"),
    );
    let mut resp = HandshakeState::new(
        pattern,
        false,
        &unhex(v["resp_prologue"].as_str().unwrap_or("")),
        key(v, "resp_static").map(DhKeypair::from_secret),
        key(v, "resp_remote_static"),
        psk(v, "resp_psks"),
    );
    init.set_fixed_ephemeral(key(v, "init_ephemeral").expect("init e"));
    resp.set_fixed_ephemeral(key(v, "resp_ephemeral").expect("resp e"));
    let msgs = v["messages"].as_array().expect("messages");
    let n = pattern.messages.len();
    let mut i = 0;
    while i < n {
        let m = &msgs[i];
        let payload = unhex(m["payload"].as_str().expect("payload"));
        let expected = unhex(m["ciphertext"].as_str().expect("ct"));
        let (w, r) = if i % 2 == 0 { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
        let mut out = Vec::new();
        w.write_message(&payload, &mut out, &mut rng).expect("write");
        assert_eq!(out, expected, "{} message {i}", pattern.protocol_name);
        let mut got = Vec::new();
        r.read_message(&out, &mut got).expect("read");
        assert_eq!(got, payload);
        i += 1;
    }
    let (ri, rr) = (init.finish(), resp.finish());
    assert_eq!(ri.handshake_hash[..], unhex(v["handshake_hash"].as_str().expect("hash"))[..]);
    assert_eq!(rr.handshake_hash, ri.handshake_hash);
    // Transport messages: initiator sends the even ones, responder the odd ones.
    let (mut is, mut ir, mut rs, mut rr2) = (ri.send, ri.recv, rr.send, rr.recv);
    for (j, m) in msgs.iter().enumerate().skip(n) {
        let payload = unhex(m["payload"].as_str().expect("payload"));
        let expected = unhex(m["ciphertext"].as_str().expect("ct"));
        let mut out = Vec::new();
        let mut back = Vec::new();
        if j % 2 == 0 {
            is.seal_append(&[], &payload, &mut out).expect("seal");
            rr2.open_append(&[], &out, &mut back).expect("open");
        } else {
            rs.seal_append(&[], &payload, &mut out).expect("seal");
            ir.open_append(&[], &out, &mut back).expect("open");
        }
        assert_eq!(out, expected, "{} transport {j}", pattern.protocol_name);
        assert_eq!(back, payload);
    }
}

#[test]
fn xx_matches_cacophony() {
    check_vector(&XX);
}

#[test]
fn ik_matches_cacophony() {
    check_vector(&IK);
}

#[test]
fn nnpsk0_matches_cacophony() {
    check_vector(&NNPSK0);
}

/// Runs a handshake with `snow` on one side and ours on the other, then
/// exchanges transport messages both ways.
fn interop(pattern: &'static Pattern, ours_initiates: bool) {
    let mut rng = SeededRng::from_u64(7);
    let prologue = b"devp2p interop";
    let (si, sr) = ([11u8; 32], [22u8; 32]);
    let psk_v = [33u8; 32];
    let pub_r = DhKeypair::from_secret(sr).public;
    let uses_s = pattern.protocol_name.contains("XX") || pattern.protocol_name.contains("IK");
    let is_ik = pattern.responder_static_known;
    let is_psk = pattern.protocol_name.contains("psk");
    let params: snow::params::NoiseParams = pattern.protocol_name.parse().expect("snow params");
    let mut b = snow::Builder::new(params).prologue(prologue).expect("prologue");
    let snow_secret = if ours_initiates { sr } else { si };
    if uses_s {
        b = b.local_private_key(&snow_secret).expect("key");
    }
    if is_ik && !ours_initiates {
        b = b.remote_public_key(&pub_r).expect("rs");
    }
    if is_psk {
        b = b.psk(0, &psk_v).expect("psk");
    }
    let mut theirs = if ours_initiates { b.build_responder() } else { b.build_initiator() }.expect("build");
    let our_secret = if ours_initiates { si } else { sr };
    let mut ours = HandshakeState::new(
        pattern,
        ours_initiates,
        prologue,
        uses_s.then(|| DhKeypair::from_secret(our_secret)),
        (is_ik && ours_initiates).then_some(pub_r),
        is_psk.then_some(psk_v),
    );
    let mut buf = [0u8; 1024];
    let mut turn_ours = ours_initiates;
    for i in 0..pattern.messages.len() {
        let payload = alloc::format!("message {i}");
        if turn_ours {
            let mut out = Vec::new();
            ours.write_message(payload.as_bytes(), &mut out, &mut rng).expect("write");
            let n = theirs.read_message(&out, &mut buf).expect("snow read");
            assert_eq!(&buf[..n], payload.as_bytes());
        } else {
            let n = theirs.write_message(payload.as_bytes(), &mut buf).expect("snow write");
            let mut got = Vec::new();
            ours.read_message(&buf[..n], &mut got).expect("read");
            assert_eq!(String::from_utf8(got).expect("utf8"), payload);
        }
        turn_ours = !turn_ours;
    }
    assert!(ours.is_finished() && theirs.is_handshake_finished());
    let snow_hash = theirs.get_handshake_hash().to_vec();
    let mut theirs = theirs.into_transport_mode().expect("transport");
    let res = ours.finish();
    assert_eq!(res.handshake_hash[..], snow_hash[..]);
    let (mut send, mut recv) = (res.send, res.recv);
    for i in 0..3 {
        let mut out = Vec::new();
        send.seal_append(&[], &[i; 100], &mut out).expect("seal");
        let n = theirs.read_message(&out, &mut buf).expect("snow open");
        assert_eq!(&buf[..n], &[i; 100]);
        let n = theirs.write_message(&[i + 100; 50], &mut buf).expect("snow seal");
        let mut back = Vec::new();
        recv.open_append(&[], &buf[..n], &mut back).expect("open");
        assert_eq!(back, [i + 100; 50]);
    }
}

#[test]
fn xx_interoperates_with_snow() {
    interop(&XX, true);
    interop(&XX, false);
}

#[test]
fn ik_interoperates_with_snow() {
    interop(&IK, true);
    interop(&IK, false);
}

#[test]
fn nnpsk0_interoperates_with_snow() {
    interop(&NNPSK0, true);
    interop(&NNPSK0, false);
}
