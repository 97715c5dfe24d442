//! The application's streams: every event ([`Events`]), or one protocol's
//! messages ([`Messages`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::{Receiver, TryRecvError};
use devp2p_core::{Event, Message, MessageBatch};
use futures_lite::Stream;

use crate::credit::Taken;
use crate::reader::{BatchReader, EventReader};

/// The application's events: the main way to receive. Consume them
/// promptly: when `event_capacity` events are waiting, the node stops
/// reading from the network. A message counts as consumed, and its
/// flow-control credit goes back to the sender, when `next` returns it.
/// Messages come one per [`Event::Message`]: an [`Event::Messages`] from
/// the core is handed out as its messages. For many small messages,
/// [`next_batch`](Self::next_batch) or a protocol's own stream
/// ([`Messages`]) cost less per message.
#[derive(Debug)]
pub struct Events {
    /// Pinned: `poll_next` needs it so (the receiver is not `Unpin`).
    rx: Pin<Box<Receiver<Event>>>,
    /// What was received and not yet handed out.
    reader: EventReader,
}

impl Events {
    pub(crate) fn new(rx: Receiver<Event>, taken: Taken) -> Self {
        Events { rx: Box::pin(rx), reader: EventReader::new(taken) }
    }

    /// The next event, or `None` once the node has stopped (`.await` it).
    /// Cancel-safe: the future holds nothing, so dropping it (a losing
    /// branch of a `select!`) loses no event.
    // A future, not an `Iterator`'s `next`: the name reads as the
    // `async fn next` of a stream.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> NextEvent<'_> {
        NextEvent { events: self }
    }

    /// The next event if one is ready (`Ready(None)` once the node has
    /// stopped); else registers `cx` to be woken when one arrives. What
    /// [`next`](Self::next)'s future does, for a hand-written `Stream` or
    /// `Future`.
    #[inline(always)]
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let rx = &mut self.rx;
        self.reader.poll_next(cx, |cx| rx.as_mut().poll_next(cx))
    }

    /// Waits for events and appends up to `limit` of them to `out`; returns
    /// how many (0 once the node has stopped). Cheaper per event than
    /// [`next`](Self::next) when many arrive.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>, limit: usize) -> usize {
        let Some(first) = self.next().await else { return 0 };
        out.push(first);
        let rx = &self.rx;
        1 + self.reader.take_ready(out, limit.saturating_sub(1), || rx.try_recv().ok())
    }
}

/// The future of [`Events::next`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct NextEvent<'a> {
    events: &'a mut Events,
}

impl Future for NextEvent<'_> {
    type Output = Option<Event>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_next(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Nobody will read what is left: it is discarded, which consumes
        // it (its flow-control credit goes back).
        self.rx.close();
        let rest: Vec<Event> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        self.reader.discard(rest);
    }
}

/// The messages of one protocol, from every peer, in a stream of their own
/// (see [`Node::messages`](crate::Node::messages)). Reading is what returns
/// flow-control credit: while the application does not read, the peers
/// stop sending this protocol, once each has used the window it was
/// granted, and nothing else is held up. Dropping the stream discards what
/// it holds; later messages go to [`Events`].
#[derive(Debug)]
pub struct Messages {
    /// The driver hands over each turn's batches together.
    rx: Receiver<Vec<MessageBatch>>,
    /// The batches received and not yet read.
    buf: std::vec::IntoIter<MessageBatch>,
    reader: BatchReader,
}

impl Messages {
    pub(crate) fn new(rx: Receiver<Vec<MessageBatch>>, taken: Taken) -> Self {
        Messages { rx, buf: Vec::new().into_iter(), reader: BatchReader::new(taken) }
    }

    /// The next batch received, waiting if need be; `None` once the node
    /// has stopped.
    async fn recv(&mut self) -> Option<MessageBatch> {
        while self.buf.len() == 0 {
            let batches = match self.rx.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) => {
                    // About to wait: hand back the credit of what was read.
                    self.reader.flush();
                    self.rx.recv().await.ok()?
                }
                Err(TryRecvError::Closed) => return None,
            };
            self.buf = batches.into_iter();
        }
        self.buf.next()
    }

    /// The next message, or `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.reader.message() {
                return Some(m);
            }
            let b = self.recv().await?;
            self.reader.start(b);
        }
    }

    /// The next messages, as many as arrived together from one peer (at
    /// least one), in one [`MessageBatch`]: the cheapest way to read many
    /// small messages. `None` once the node has stopped.
    pub async fn next_batch(&mut self) -> Option<MessageBatch> {
        match self.reader.rest() {
            Some(rest) => Some(rest),
            None => {
                let b = self.recv().await?;
                Some(self.reader.take(b))
            }
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        // What is left is discarded, which consumes it.
        self.rx.close();
        self.reader.discard(self.buf.by_ref());
        while let Ok(batches) = self.rx.try_recv() {
            self.reader.discard(batches);
        }
    }
}
