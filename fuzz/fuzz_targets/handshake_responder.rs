#![no_main]
//! Fuzz target: see `devp2p_core::fuzzing::handshake_responder`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| devp2p_core::fuzzing::handshake_responder(data));
