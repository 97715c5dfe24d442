//! What a per-protocol message stream has in hand: the batch being read and
//! the credit of what was read, the same for every runtime (each only
//! receives the batches).

use std::collections::VecDeque;
use std::task::{ready, Context, Poll};

use devp2p_core::{ConnectionId, Event, Message, MessageBatch, MessageBatchIntoIter, ProtocolId};

use crate::credit::Taken;

/// A batch being read one message at a time, and how much of it has been
/// noted as taken. The messages of a batch of several, small ones that
/// arrived in one record, are noted together (when the batch is used up,
/// or the reader flushes, stops or is dropped), not one by one: the driver
/// only hears of them when the reader flushes anyway, and together they
/// cost less than a flush's worth. A lone message, which may be large, is
/// noted as it is handed out, so that a large one's credit goes back at
/// once (see [`Taken`]).
#[derive(Debug)]
struct Reading {
    messages: MessageBatchIntoIter,
    connection: ConnectionId,
    protocol: ProtocolId,
    /// The batch holds one message.
    lone: bool,
    /// Messages and payload bytes handed out and noted already.
    noted: (usize, usize),
}

impl Reading {
    fn new(b: MessageBatch) -> Self {
        let lone = b.len() == 1;
        Reading {
            connection: b.connection,
            protocol: b.protocol,
            lone,
            messages: b.into_messages(),
            noted: (0, 0),
        }
    }

    /// The next message, if one is left (noted at once if it is lone).
    #[inline(always)]
    fn next(&mut self, taken: &mut Taken) -> Option<Message> {
        let m = self.messages.next()?;
        if self.lone {
            self.note(taken);
        }
        Some(m)
    }

    /// Notes what was handed out since the last note.
    fn note(&mut self, taken: &mut Taken) {
        let (messages, bytes) = self.messages.taken();
        let (m, b) = core::mem::replace(&mut self.noted, (messages, bytes));
        if messages > m {
            taken.messages(self.connection, self.protocol, (messages - m) as u64, (bytes - b) as u64);
        }
    }

    /// Notes what was handed out, and returns the unread rest noted as taken
    /// (`None` if nothing is left).
    fn rest(mut self, taken: &mut Taken) -> Option<MessageBatch> {
        self.note(taken);
        let rest = self.messages.rest();
        (!rest.is_empty()).then(|| {
            taken.batch(&rest);
            rest
        })
    }
}

/// The reading side of a message stream: hands out the batch being read
/// one message at a time or as its unread rest, and notes what the
/// application took (see [`Taken`]).
#[derive(Debug)]
pub struct BatchReader {
    /// The batch being read, from its next message on.
    current: Option<Reading>,
    taken: Taken,
}

impl BatchReader {
    /// A reader whose notes go to `taken`.
    pub fn new(taken: Taken) -> Self {
        BatchReader { current: None, taken }
    }

    /// The next message of the batch being read, if one is left.
    #[inline(always)]
    pub fn message(&mut self) -> Option<Message> {
        self.current.as_mut()?.next(&mut self.taken)
    }

    /// Starts reading `b` one message at a time. Call it once the batch
    /// being read is used up ([`message`](Self::message) returned `None`):
    /// an unread rest would be discarded (counted as consumed).
    pub fn start(&mut self, b: MessageBatch) {
        let _ = self.rest();
        self.current = Some(Reading::new(b));
    }

    /// The unread rest of the batch being read, if any is left.
    pub fn rest(&mut self) -> Option<MessageBatch> {
        self.current.take()?.rest(&mut self.taken)
    }

    /// Notes `b` as taken whole, and returns it.
    pub fn take(&mut self, b: MessageBatch) -> MessageBatch {
        self.taken.batch(&b);
        b
    }

    /// Hands the notes to the driver (call before waiting for a batch).
    pub fn flush(&mut self) {
        if let Some(r) = &mut self.current {
            r.note(&mut self.taken);
        }
        self.taken.flush();
    }

    /// Discards the unread rest and `more` (the stream is dropped): they
    /// count as consumed.
    pub fn discard(&mut self, more: impl IntoIterator<Item = MessageBatch>) {
        let _ = self.rest();
        more.into_iter().for_each(|b| self.taken.batch(&b));
    }
}

impl Drop for BatchReader {
    /// Notes what was handed out (the unread rest counts as consumed only
    /// through [`discard`](Self::discard)); `Taken` then flushes.
    fn drop(&mut self) {
        if let Some(r) = &mut self.current {
            r.note(&mut self.taken);
        }
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
    current: Option<Reading>,
    held: VecDeque<Event>,
    taken: Taken,
}

impl EventReader {
    /// A reader whose notes go to `taken`.
    pub fn new(taken: Taken) -> Self {
        EventReader { current: None, held: VecDeque::new(), taken }
    }

    /// The next event, noted as taken: held, else received through
    /// `poll_recv` (the channel's); `Ready(None)` once the channel is
    /// closed. When nothing is ready, hands the notes to the driver before
    /// the reader waits (what the runtimes' `Events::poll_next` does).
    ///
    /// The common case, a batch's next message, inlines into the caller,
    /// and every message becomes an event in one place, after that case
    /// and the out-of-line rest ([`poll_receive`](Self::poll_receive))
    /// join: an event made in each and joined would make the compiler move
    /// it through memory (about 1 in 6 of the 64 B benchmark's time).
    #[inline(always)]
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        poll_recv: impl FnMut(&mut Context<'_>) -> Poll<Option<Event>>,
    ) -> Poll<Option<Event>> {
        let next = match self.message() {
            Some(m) => Ok(m),
            None => ready!(self.poll_receive(cx, poll_recv)),
        };
        Poll::Ready(next.map_or_else(|ev| ev, |m| Some(Event::from(m))))
    }

    /// The next message of the batch being handed out, if one is left, not
    /// yet made into an event.
    #[inline(always)]
    fn message(&mut self) -> Option<Message> {
        self.current.as_mut()?.next(&mut self.taken)
    }

    /// The next held event, noted as taken (a batch's messages as
    /// [`Reading`] says); `None` if none is held.
    pub fn pop(&mut self) -> Option<Event> {
        self.next_held().map(|next| next.map_or_else(|ev| ev, Event::from))
    }

    /// What is held next, noted as [`pop`](Self::pop) says: a message (of
    /// the batch being handed out, or a lone one) or another event.
    fn next_held(&mut self) -> Option<Result<Message, Event>> {
        loop {
            if let Some(m) = self.message() {
                return Some(Ok(m));
            }
            // The batch being handed out is used up.
            if let Some(r) = self.current.take() {
                let _ = r.rest(&mut self.taken);
            }
            match self.held.pop_front()? {
                Event::Messages(b) => self.current = Some(Reading::new(b)),
                ev => {
                    self.taken.event(&ev);
                    return Some(Message::try_from(ev));
                }
            }
        }
    }

    /// [`poll_next`](Self::poll_next) once the batch being handed out is
    /// used up: a message as `Ok`, another event as `Err(Some(_))`, and
    /// `Err(None)` once the channel is closed.
    #[inline(never)]
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        mut poll_recv: impl FnMut(&mut Context<'_>) -> Poll<Option<Event>>,
    ) -> Poll<Result<Message, Option<Event>>> {
        loop {
            if let Some(next) = self.next_held() {
                return Poll::Ready(next.map_err(Some));
            }
            match poll_recv(cx) {
                Poll::Ready(Some(ev)) => self.held.push_back(ev),
                Poll::Ready(None) => return Poll::Ready(Err(None)),
                Poll::Pending => {
                    // About to wait: return the credit of what was taken.
                    self.flush();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Takes a received event: held behind the rest, and the next held
    /// event handed out.
    #[cfg(test)]
    fn receive(&mut self, ev: Event) -> Option<Event> {
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
            match self.pop() {
                Some(ev) => {
                    out.push(ev);
                    n += 1;
                }
                None => match try_recv() {
                    Some(ev) => self.held.push_back(ev),
                    None => break,
                },
            }
        }
        n
    }

    /// Hands the notes to the driver (call before waiting for events).
    pub fn flush(&mut self) {
        if let Some(r) = &mut self.current {
            r.note(&mut self.taken);
        }
        self.taken.flush();
    }

    /// Discards what is held and `more` (the stream is dropped): their
    /// messages count as consumed.
    pub fn discard(&mut self, more: impl IntoIterator<Item = Event>) {
        if let Some(r) = self.current.take() {
            let _ = r.rest(&mut self.taken);
        }
        for ev in self.held.drain(..).chain(more) {
            self.taken.event(&ev);
        }
    }
}

impl Drop for EventReader {
    /// Notes what was handed out, as [`BatchReader`]'s drop does.
    fn drop(&mut self) {
        if let Some(r) = &mut self.current {
            r.note(&mut self.taken);
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

    #[test]
    fn messages_taken_from_a_batch_are_noted_once_each_wherever_the_reader_stops() {
        let shared = CreditShared::new(|| {});
        let (peer, conn, proto) = (NodeId([1; 32]), ConnectionId(3), ProtocolId(2));
        let msgs: [&[u8]; 4] = [b"a", b"bb", b"ccc", b"dddd"];
        let batch = MessageBatch::from_messages(
            peer,
            conn,
            proto,
            msgs.iter().enumerate().map(|(i, p)| (i as u32, *p)),
        );
        let noted = |n: &[usize]| {
            let mut c = Consumed::default();
            n.iter().for_each(|&len| c.add(conn, proto, len));
            c
        };
        let mut r = BatchReader::new(Taken::new(shared.clone()));
        r.start(batch.clone());
        assert_eq!(r.message(), batch.message(0));
        // A flush in the middle of a batch hands over what was taken so far.
        r.flush();
        assert_eq!(shared.take(), noted(&[1]));
        assert_eq!(r.message(), batch.message(1));
        // The rest, taken whole, after a message taken one at a time.
        assert_eq!(r.rest().map(|b| b.len()), Some(2));
        assert_eq!(r.message(), None);
        r.flush();
        assert_eq!(shared.take(), noted(&[2, 3, 4]));
        // Read to the end, then a new batch started: nothing noted twice.
        r.start(batch.clone());
        while r.message().is_some() {}
        r.start(batch.clone());
        assert_eq!(r.message(), batch.message(0));
        r.flush();
        assert_eq!(shared.take(), noted(&[1, 2, 3, 4, 1]));
        // The same for events: a flush mid-batch, then the batch's end.
        let mut e = EventReader::new(Taken::new(shared.clone()));
        assert_eq!(e.receive(Event::Messages(batch.clone())), batch.message(0).map(Event::from));
        assert_eq!(e.pop(), batch.message(1).map(Event::from));
        e.flush();
        assert_eq!(shared.take(), noted(&[1, 2]));
        assert_eq!(e.pop(), batch.message(2).map(Event::from));
        assert_eq!(e.pop(), batch.message(3).map(Event::from));
        assert_eq!(e.pop(), None);
        e.flush();
        assert_eq!(shared.take(), noted(&[3, 4]));
    }

    #[test]
    fn poll_receive_hands_out_messages_as_messages_and_other_events_in_order() {
        use devp2p_core::DisconnectReason;
        let shared = CreditShared::new(|| {});
        let mut r = EventReader::new(Taken::new(shared.clone()));
        let (peer, conn, proto) = (NodeId([1; 32]), ConnectionId(3), ProtocolId(2));
        let batch = MessageBatch::from_messages(peer, conn, proto, [(0, &b"a"[..]), (1, b"bb")]);
        let lone = Message {
            peer,
            connection: conn,
            protocol: proto,
            msg_type: 3,
            payload: Bytes::from_static(b"ccc"),
        };
        let gone = Event::PeerDisconnected {
            peer,
            reason: DisconnectReason::Requested,
            remote: true,
            unsent: Vec::new(),
        };
        let mut channel: VecDeque<Event> =
            [Event::from(lone.clone()), Event::Messages(batch.clone()), gone.clone()].into();
        let closed = std::cell::Cell::new(false);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = |r: &mut EventReader| {
            r.poll_receive(&mut cx, |_| match channel.pop_front() {
                Some(ev) => Poll::Ready(Some(ev)),
                None if closed.get() => Poll::Ready(None),
                None => Poll::Pending,
            })
        };
        // A lone message and a batch's first come as messages; the rest of
        // the batch from `message`; then the other event, in order.
        assert_eq!(poll(&mut r), Poll::Ready(Ok(lone)));
        assert_eq!(poll(&mut r), Poll::Ready(Ok(batch.message(0).unwrap())));
        assert_eq!(r.message(), batch.message(1));
        assert_eq!(r.message(), None);
        assert_eq!(poll(&mut r), Poll::Ready(Err(Some(gone))));
        // Nothing ready: the notes go to the driver before the reader waits.
        assert_eq!(shared.take(), Consumed::default(), "not flushed yet");
        assert_eq!(poll(&mut r), Poll::Pending);
        let mut expect = Consumed::default();
        for len in [3, 1, 2] {
            expect.add(conn, proto, len);
        }
        assert_eq!(shared.take(), expect);
        closed.set(true);
        assert_eq!(poll(&mut r), Poll::Ready(Err(None)));
    }

    #[test]
    fn a_lone_message_is_noted_as_it_is_handed_out_and_a_dropped_reader_notes_what_it_handed_out() {
        let shared = CreditShared::new(|| {});
        let (peer, conn, proto) = (NodeId([1; 32]), ConnectionId(3), ProtocolId(2));
        let large = Message {
            peer,
            connection: conn,
            protocol: proto,
            msg_type: 0,
            payload: Bytes::from(vec![7u8; 70_000]),
        };
        let mut r = BatchReader::new(Taken::new(shared.clone()));
        r.start(MessageBatch::one(large.clone()));
        assert_eq!(r.message(), Some(large));
        // Costing more than a flush's worth, it went to the driver at once,
        // while the application still holds it.
        let mut expect = Consumed::default();
        expect.add(conn, proto, 70_000);
        assert_eq!(shared.take(), expect);
        assert_eq!(r.message(), None);
        r.start(MessageBatch::from_messages(peer, conn, proto, [(0, &b"a"[..]), (1, b"bb"), (2, b"ccc")]));
        assert!(r.message().is_some());
        r.flush();
        let mut expect = Consumed::default();
        expect.add(conn, proto, 1);
        assert_eq!(shared.take(), expect, "the large message is not noted twice");
        // Dropped after one more: that one is noted, the unread rest not
        // (only `discard` counts it).
        assert!(r.message().is_some());
        drop(r);
        let mut expect = Consumed::default();
        expect.add(conn, proto, 2);
        assert_eq!(shared.take(), expect);
        let mut e = EventReader::new(Taken::new(shared.clone()));
        let batch = MessageBatch::from_messages(peer, conn, proto, [(0, &b"dddd"[..]), (1, b"e")]);
        assert!(e.receive(Event::Messages(batch)).is_some());
        drop(e);
        let mut expect = Consumed::default();
        expect.add(conn, proto, 4);
        assert_eq!(shared.take(), expect);
    }
}
