#![no_main]
//! Fuzz target: see `devp2p_core::fuzzing::aead`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| devp2p_core::fuzzing::aead(data));
