//! Several messages delivered as one: [`MessageBatch`].

use alloc::vec::Vec;
use bytes::Bytes;

use crate::connection::ConnectionId;
use crate::event::Message;
use crate::identity::NodeId;
use crate::protocol::ProtocolId;

/// Consecutive messages of one peer on one protocol, delivered together:
/// their payloads lie back to back in one buffer, with their types and
/// lengths beside it, so that reading a thousand small messages costs one
/// event and one buffer, not a thousand of each.
///
/// The core hands out small messages that arrived whole in one record as
/// [`Event::Messages`](crate::Event::Messages); runtimes deliver any message
/// this way through their per-protocol streams (a lone one as a batch of
/// one). Read it with [`iter`](Self::iter) (borrowed payloads, no reference
/// counting) or take owned payloads with [`payload`](Self::payload) or
/// [`into_messages`](Self::into_messages). A payload kept alive keeps the
/// whole buffer alive (at most 16 KiB for batches the core builds).
#[derive(Debug, Clone)]
pub struct MessageBatch {
    /// Sender.
    pub peer: NodeId,
    /// The connection they arrived on (what [`Node::consume`](crate::Node::consume) takes).
    pub connection: ConnectionId,
    /// Protocol.
    pub protocol: ProtocolId,
    /// The payloads, back to back.
    data: Bytes,
    /// Each message's type and where its payload ends in `data`.
    index: Index,
}

/// Equal if they come from the same peer, connection and protocol and hold
/// the same messages (types and payloads) in the same order.
impl PartialEq for MessageBatch {
    fn eq(&self, other: &Self) -> bool {
        (self.peer, self.connection, self.protocol) == (other.peer, other.connection, other.protocol)
            && self.iter().eq(other.iter())
    }
}

impl Eq for MessageBatch {}

/// The message types and payload ends of a batch; one message needs no
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Index {
    One(u32),
    Many(Vec<(u32, u32)>),
}

impl MessageBatch {
    /// A batch of `data`'s messages: `index` gives each one's type and the
    /// offset in `data` where its payload ends, in increasing order, the
    /// last being `data.len()`. Used by the core, which builds `index` as
    /// it appends the payloads.
    pub(crate) fn from_parts(
        (peer, connection, protocol): (NodeId, ConnectionId, ProtocolId),
        data: Bytes,
        index: Vec<(u32, u32)>,
    ) -> Self {
        debug_assert!(index.last().map_or(data.is_empty(), |&(_, end)| end as usize == data.len()));
        MessageBatch { peer, connection, protocol, data, index: Index::Many(index) }
    }

    /// A batch holding the one message `m`.
    pub fn one(m: Message) -> Self {
        MessageBatch {
            peer: m.peer,
            connection: m.connection,
            protocol: m.protocol,
            data: m.payload,
            index: Index::One(m.msg_type),
        }
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        match &self.index {
            Index::One(_) => 1,
            Index::Many(v) => v.len(),
        }
    }

    /// True if it holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload bytes of all its messages together.
    pub fn payload_bytes(&self) -> usize {
        self.data.len()
    }

    /// Message `i`'s type and the range of its payload in `data`.
    fn range(&self, i: usize) -> Option<(u32, core::ops::Range<usize>)> {
        match &self.index {
            Index::One(t) => (i == 0).then(|| (*t, 0..self.data.len())),
            Index::Many(v) => {
                let &(t, end) = v.get(i)?;
                let start = i.checked_sub(1).map_or(0, |p| v[p].1 as usize);
                Some((t, start..end as usize))
            }
        }
    }

    /// Message `i`'s type and payload, borrowed.
    pub fn get(&self, i: usize) -> Option<(u32, &[u8])> {
        self.range(i).and_then(|(t, r)| Some((t, self.data.get(r)?)))
    }

    /// Message `i`'s payload as an owned handle on the shared buffer.
    pub fn payload(&self, i: usize) -> Option<Bytes> {
        self.range(i).map(|(_, r)| self.data.slice(r))
    }

    /// Splits the batch in two at message `at`: `self` keeps the messages
    /// before it, the rest are returned (empty if `at >= len`), sharing
    /// the buffer.
    pub fn split_off(&mut self, at: usize) -> MessageBatch {
        let from = (self.peer, self.connection, self.protocol);
        let (data, index) = match &mut self.index {
            Index::One(t) if at == 0 => {
                let t = *t;
                self.index = Index::Many(Vec::new());
                (core::mem::take(&mut self.data), Index::One(t))
            }
            Index::One(_) => (Bytes::new(), Index::Many(Vec::new())),
            Index::Many(v) => {
                let at = at.min(v.len());
                let start = at.checked_sub(1).map_or(0, |p| v[p].1);
                let rest = v.split_off(at).into_iter().map(|(t, end)| (t, end - start)).collect();
                (self.data.split_off(start as usize), Index::Many(rest))
            }
        };
        let (peer, connection, protocol) = from;
        MessageBatch { peer, connection, protocol, data, index }
    }

    /// How many index entries the batch has room for (memory tests).
    #[cfg(test)]
    pub(crate) fn index_capacity(&self) -> usize {
        match &self.index {
            Index::One(_) => 1,
            Index::Many(v) => v.capacity(),
        }
    }

    /// The messages in order, as (type, payload) with borrowed payloads.
    pub fn iter(&self) -> MessageBatchIter<'_> {
        MessageBatchIter { batch: self, next: 0 }
    }

    /// Message `i` as a [`Message`] of its own.
    pub fn message(&self, i: usize) -> Option<Message> {
        self.range(i).map(|(msg_type, r)| Message {
            peer: self.peer,
            connection: self.connection,
            protocol: self.protocol,
            msg_type,
            payload: self.data.slice(r),
        })
    }

    /// The messages in order, each a [`Message`] of its own.
    pub fn into_messages(self) -> impl Iterator<Item = Message> {
        (0..self.len()).filter_map(move |i| self.message(i))
    }
}

/// The messages of a [`MessageBatch`], as (type, payload).
#[derive(Debug, Clone)]
pub struct MessageBatchIter<'a> {
    batch: &'a MessageBatch,
    /// The next message's index.
    next: usize,
}

impl<'a> Iterator for MessageBatchIter<'a> {
    type Item = (u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.batch.get(self.next)?;
        self.next += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batch.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for MessageBatchIter<'_> {}

impl<'a> IntoIterator for &'a MessageBatch {
    type Item = (u32, &'a [u8]);
    type IntoIter = MessageBatchIter<'a>;

    fn into_iter(self) -> MessageBatchIter<'a> {
        self.iter()
    }
}
