//! What a per-protocol message stream has in hand: the batch being read and
//! the credit of what was read, the same for every runtime (each only
//! receives the batches).

use devp2p_core::{Message, MessageBatch};

use crate::credit::Taken;

/// The reading side of a message stream: hands out the batch being read
/// one message at a time or as its unread rest, and notes what the
/// application took (see [`Taken`]).
#[derive(Debug)]
pub struct BatchReader {
    /// The batch being read, and how many of its messages were read.
    current: Option<(MessageBatch, usize)>,
    taken: Taken,
}

impl BatchReader {
    /// A reader whose notes go to `taken`.
    pub fn new(taken: Taken) -> Self {
        BatchReader { current: None, taken }
    }

    /// The next message of the batch being read, if one is left.
    pub fn message(&mut self) -> Option<Message> {
        let (b, read) = self.current.as_mut()?;
        let m = b.message(*read)?;
        *read += 1;
        self.taken.message(&m);
        Some(m)
    }

    /// Starts reading `b` one message at a time. Call it once the batch
    /// being read is used up ([`message`](Self::message) returned `None`):
    /// an unread rest would be discarded (counted as consumed).
    pub fn start(&mut self, b: MessageBatch) {
        let _ = self.rest();
        self.current = Some((b, 0));
    }

    /// The unread rest of the batch being read, if any is left.
    pub fn rest(&mut self) -> Option<MessageBatch> {
        let (mut b, read) = self.current.take()?;
        let rest = b.split_off(read);
        (!rest.is_empty()).then(|| self.take(rest))
    }

    /// Notes `b` as taken whole, and returns it.
    pub fn take(&mut self, b: MessageBatch) -> MessageBatch {
        self.taken.batch(&b);
        b
    }

    /// Hands the notes to the driver (call before waiting for a batch).
    pub fn flush(&mut self) {
        self.taken.flush();
    }

    /// Discards the unread rest and `more` (the stream is dropped): they
    /// count as consumed.
    pub fn discard(&mut self, more: impl IntoIterator<Item = MessageBatch>) {
        let _ = self.rest();
        more.into_iter().for_each(|b| self.taken.batch(&b));
    }
}
