//! In-crate scenario tests, run through the deterministic two-node harness.

mod harness;
mod noise_vectors;
mod scenarios;
pub(crate) mod transcripts;
