//! Pure codecs of the record phase: varints, the chunks of a record and
//! the control messages of channel 0 (SPEC.md §9–§11). No state.

pub(crate) mod chunk;
pub(crate) mod control;
pub(crate) mod varint;
