//! Replays every committed fuzz corpus file (and crash reproducer) through
//! the same code the cargo-fuzz targets run, on the stable toolchain.

use std::path::Path;

use devp2p_core::fuzzing;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).expect("read");
        let result = std::panic::catch_unwind(|| f(&data));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
}

#[test]
fn aead_corpus() {
    replay("aead", fuzzing::aead);
}

#[test]
fn chunk_corpus() {
    replay("chunk", fuzzing::chunks);
}

#[test]
fn hello_corpus() {
    replay("hello", fuzzing::hello);
}

#[test]
fn control_corpus() {
    replay("control", fuzzing::control);
}

#[test]
fn record_corpus() {
    replay("record", fuzzing::record);
}

#[test]
fn handshake_responder_corpus() {
    replay("handshake_responder", fuzzing::handshake_responder);
}

#[test]
fn handshake_initiator_corpus() {
    replay("handshake_initiator", fuzzing::handshake_initiator);
}

#[test]
fn node_corpus() {
    replay("node", fuzzing::node_ops);
}
