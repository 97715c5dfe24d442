//! How many transmit buffers a connection's writer task holds, for the
//! [`Outputs::write`](devp2p_core::Outputs::write) contract: while the
//! writer writes one buffer, the core may seal the next.

/// Buffers a connection's writer may hold: while it writes one, the core
/// seals the next (a depth of four was measured no faster than two).
pub const WRITE_DEPTH: usize = 2;

/// The buffers handed to one connection's writer and not written yet, and
/// whether the core waits for `handle_written`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterBacklog {
    held: usize,
    /// The writer was full when it took its last buffer: the core has not
    /// been told it may transmit again.
    owed: bool,
}

impl WriterBacklog {
    /// The writer took a buffer. True if it has room for another, so the
    /// core may be told at once (what `Outputs::write` returns); false if
    /// [`written`](Self::written) will say when.
    pub fn handed(&mut self) -> bool {
        self.held += 1;
        self.owed = self.held >= WRITE_DEPTH;
        !self.owed
    }

    /// The writer wrote a buffer. True if the core waits for
    /// `handle_written` now.
    pub fn written(&mut self) -> bool {
        self.held = self.held.saturating_sub(1);
        core::mem::take(&mut self.owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_waits_only_while_the_writer_is_full() {
        let mut w = WriterBacklog::default();
        assert!(w.handed(), "room for a second buffer");
        assert!(!w.handed(), "full: the core waits");
        assert!(w.written(), "one written: the core is told now");
        assert!(!w.handed(), "full again");
        assert!(w.written());
        assert!(!w.written(), "nothing owed for a buffer acknowledged when handed over");
        assert!(w.handed());
    }
}
