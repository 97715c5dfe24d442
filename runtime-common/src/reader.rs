//! What a per-protocol message stream has in hand: the batch being read and
//! the credit of what was read, the same for every runtime (each only
//! receives the batches).

use std::collections::VecDeque;

use devp2p_core::{Event, Message, MessageBatch, MessageBatchIntoIter};

use crate::credit::Taken;

/// The reading side of a message stream: hands out the batch being read
/// one message at a time or as its unread rest, and notes what the
/// application took (see [`Taken`]).
#[derive(Debug)]
pub struct BatchReader {
    /// The batch being read, from its next message on.
    current: Option<MessageBatchIntoIter>,
    taken: Taken,
}

impl BatchReader {
    /// A reader whose notes go to `taken`.
    pub fn new(taken: Taken) -> Self {
        BatchReader { current: None, taken }
    }

    /// The next message of the batch being read, if one is left.
    pub fn message(&mut self) -> Option<Message> {
        let m = self.current.as_mut()?.next()?;
        self.taken.message(&m);
        Some(m)
    }

    /// Starts reading `b` one message at a time. Call it once the batch
    /// being read is used up ([`message`](Self::message) returned `None`):
    /// an unread rest would be discarded (counted as consumed).
    pub fn start(&mut self, b: MessageBatch) {
        let _ = self.rest();
        self.current = Some(b.into_messages());
    }

    /// The unread rest of the batch being read, if any is left.
    pub fn rest(&mut self) -> Option<MessageBatch> {
        let rest = self.current.take()?.rest();
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

/// The reading side of an event stream: the events received and not yet
/// handed out, a batch of messages handed out one message at a time (an
/// [`Event::Message`] each, made when it is handed out, not when the batch
/// arrives), and notes of what the application took (see [`Taken`]).
#[derive(Debug)]
pub struct EventReader {
    /// The batch being handed out, from its next message on; before
    /// everything in `held`.
    current: Option<MessageBatchIntoIter>,
    held: VecDeque<Event>,
    taken: Taken,
}

impl EventReader {
    /// A reader whose notes go to `taken`.
    pub fn new(taken: Taken) -> Self {
        EventReader { current: None, held: VecDeque::new(), taken }
    }

    /// The next held event, noted as taken; `None` if none is held.
    pub fn pop(&mut self) -> Option<Event> {
        loop {
            if let Some(m) = self.current.as_mut().and_then(Iterator::next) {
                self.taken.message(&m);
                return Some(Event::from(m));
            }
            self.current = None;
            match self.held.pop_front()? {
                Event::Messages(b) => self.current = Some(b.into_messages()),
                ev => {
                    self.taken.event(&ev);
                    return Some(ev);
                }
            }
        }
    }

    /// Takes a received event: handed out at once (noted as taken) if
    /// nothing is held and it is not a batch, else held behind the rest.
    pub fn receive(&mut self, ev: Event) -> Option<Event> {
        if self.current.is_none() && self.held.is_empty() && !matches!(ev, Event::Messages(_)) {
            self.taken.event(&ev);
            return Some(ev);
        }
        self.held.push_back(ev);
        self.pop()
    }

    /// Appends to `out` up to `limit` events that are ready without
    /// waiting: held ones first, then those `try_recv` returns. Returns how
    /// many.
    pub fn take_ready(
        &mut self,
        out: &mut Vec<Event>,
        limit: usize,
        mut try_recv: impl FnMut() -> Option<Event>,
    ) -> usize {
        let mut n = 0;
        while n < limit {
            let ev = match self.pop() {
                Some(ev) => ev,
                None => match try_recv() {
                    Some(ev) => match self.receive(ev) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    None => break,
                },
            };
            out.push(ev);
            n += 1;
        }
        n
    }

    /// Hands the notes to the driver (call before waiting for events).
    pub fn flush(&mut self) {
        self.taken.flush();
    }

    /// Discards what is held and `more` (the stream is dropped): their
    /// messages count as consumed.
    pub fn discard(&mut self, more: impl IntoIterator<Item = Event>) {
        if let Some(rest) = self.current.take().map(MessageBatchIntoIter::rest) {
            self.taken.batch(&rest);
        }
        for ev in self.held.drain(..).chain(more) {
            self.taken.event(&ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreditShared;
    use devp2p_core::{Bytes, ConnectionId, Consumed, NodeId, ProtocolId};

    #[test]
    fn a_batch_is_handed_out_message_by_message_in_order_and_a_dropped_rest_is_consumed() {
        let shared = CreditShared::new(|| {});
        let mut r = EventReader::new(Taken::new(shared.clone()));
        let (peer, conn, proto) = (NodeId([1; 32]), ConnectionId(3), ProtocolId(2));
        let msgs: [&[u8]; 3] = [b"a", b"bb", b"ccc"];
        let batch = MessageBatch::from_messages(
            peer,
            conn,
            proto,
            msgs.iter().enumerate().map(|(i, p)| (i as u32, *p)),
        );
        let lone = Event::Message {
            peer,
            connection: conn,
            protocol: ProtocolId(0),
            msg_type: 7,
            payload: Bytes::from_static(b"z"),
        };
        // Nothing held: a lone message goes straight through.
        assert_eq!(r.receive(lone.clone()), Some(lone.clone()));
        assert_eq!(r.receive(Event::Messages(batch.clone())), batch.message(0).map(Event::from));
        // Behind the batch, a later event waits its turn.
        assert_eq!(r.receive(lone.clone()), batch.message(1).map(Event::from));
        assert_eq!(r.pop(), batch.message(2).map(Event::from));
        assert_eq!(r.pop(), Some(lone.clone()));
        assert_eq!(r.pop(), None);
        r.flush();
        let mut expect = Consumed::default();
        expect.add(conn, ProtocolId(0), 1);
        for p in msgs {
            expect.add(conn, proto, p.len());
        }
        expect.add(conn, ProtocolId(0), 1);
        assert_eq!(shared.take(), expect);
        // Dropped after one message: the other two, and what is behind
        // them, count as consumed, once each.
        r.receive(Event::Messages(batch));
        r.discard([lone]);
        r.flush();
        let mut expect = Consumed::default();
        for p in msgs {
            expect.add(conn, proto, p.len());
        }
        expect.add(conn, ProtocolId(0), 1);
        assert_eq!(shared.take(), expect);
    }
}
