//! Messages as the application sees them: one delivered ([`Message`]),
//! handed back unsent ([`UnsentMessage`]), several delivered as one
//! ([`MessageBatch`]) or sent as one ([`SendBatch`]).

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use crate::identity::NodeId;
use crate::ids::ConnectionId;
use crate::protocol::ProtocolId;

/// A message that was queued but not completely handed to the transport
/// when its connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsentMessage {
    /// The protocol it was sent on.
    pub protocol: ProtocolId,
    /// Its message type.
    pub msg_type: u32,
    /// Its payload.
    pub payload: Bytes,
}

/// A complete message, as a runtime hands it to a per-protocol stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub peer: NodeId,
    /// The connection it arrived on (what [`Node::consume`](crate::Node::consume) takes).
    pub connection: ConnectionId,
    /// Protocol.
    pub protocol: ProtocolId,
    /// Message type within the protocol.
    pub msg_type: u32,
    /// Payload. Small messages (up to 4 KiB) that arrived whole in one record
    /// share an allocation of up to 16 KiB with other small messages of the
    /// peer, so one kept alive keeps up to 16 KiB alive: copy a payload you
    /// keep for long (`Bytes::copy_from_slice`).
    pub payload: Bytes,
}

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

    /// A batch of the messages `msgs` (type, payload) from `peer` on
    /// `connection` and `protocol`, their payloads copied into one buffer
    /// (for tests and simulations of code that reads batches).
    ///
    /// # Panics
    /// If the payloads add up to 4 GiB or more.
    pub fn from_messages<'a>(
        peer: NodeId,
        connection: ConnectionId,
        protocol: ProtocolId,
        msgs: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> Self {
        let b: SendBatch = msgs.into_iter().collect();
        let (data, index) = b.into_parts();
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
            Index::Many(v) => entry_range(v, i),
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
                let (start, rest) = split_entries(v, at);
                (self.data.split_off(start), Index::Many(rest))
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
    pub fn into_messages(self) -> MessageBatchIntoIter {
        MessageBatchIntoIter { batch: self, next: 0, start: 0 }
    }
}

impl IntoIterator for MessageBatch {
    type Item = Message;
    type IntoIter = MessageBatchIntoIter;

    fn into_iter(self) -> MessageBatchIntoIter {
        self.into_messages()
    }
}

/// The messages of a [`MessageBatch`] taken one at a time, each a
/// [`Message`] of its own (its payload a handle on the batch's buffer).
#[derive(Debug, Clone)]
pub struct MessageBatchIntoIter {
    batch: MessageBatch,
    /// The next message's index.
    next: usize,
    /// Where its payload starts.
    start: usize,
}

impl MessageBatchIntoIter {
    /// The messages not taken yet, as a batch sharing the buffer.
    pub fn rest(self) -> MessageBatch {
        let mut b = self.batch;
        b.split_off(self.next)
    }

    /// How many messages it has handed out, and their payload bytes.
    pub fn taken(&self) -> (usize, usize) {
        (self.next, self.start)
    }
}

impl Iterator for MessageBatchIntoIter {
    type Item = Message;

    // Always inlined: a `Message` returned through memory costs more than
    // making it (the reader's next step moves it again).
    #[inline(always)]
    fn next(&mut self) -> Option<Message> {
        let b = &self.batch;
        let (msg_type, end) = match &b.index {
            Index::One(t) if self.next == 0 => (*t, b.data.len()),
            Index::One(_) => return None,
            Index::Many(v) => {
                let &(t, end) = v.get(self.next)?;
                (t, end as usize)
            }
        };
        let payload = b.data.slice(self.start..end);
        self.start = end;
        self.next += 1;
        Some(Message { peer: b.peer, connection: b.connection, protocol: b.protocol, msg_type, payload })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batch.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for MessageBatchIntoIter {}

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

/// Message `i`'s type and payload range in an index of (type, end) entries,
/// as batches keep them (payloads back to back, each ending where the next
/// starts).
pub(crate) fn entry_range(entries: &[(u32, u32)], i: usize) -> Option<(u32, core::ops::Range<usize>)> {
    let &(t, end) = entries.get(i)?;
    let start = i.checked_sub(1).map_or(0, |p| entries[p].1);
    Some((t, start as usize..end as usize))
}

/// Splits an index of (type, end) entries at message `at`: `entries` keeps
/// those before it; returns where the rest's payloads start and the rest,
/// its ends counted from there.
fn split_entries(entries: &mut Vec<(u32, u32)>, at: usize) -> (usize, Vec<(u32, u32)>) {
    let at = at.min(entries.len());
    let start = at.checked_sub(1).map_or(0, |p| entries[p].1);
    let rest = entries.split_off(at).into_iter().map(|(t, end)| (t, end - start)).collect();
    (start as usize, rest)
}

/// Small messages for one peer and protocol, written back to back into one
/// buffer to be sent together: the sending counterpart of
/// [`MessageBatch`]. The node queues the batch as one entry and seals its
/// messages straight from the buffer, so sending a thousand small messages
/// costs one queue entry and one buffer, not a thousand payload handles.
/// On the wire each message is still a message of its own.
///
/// ```
/// # use devp2p_core::SendBatch;
/// let mut batch = SendBatch::with_capacity(2, 10);
/// batch.push(0, b"hello");
/// batch.push(1, b"world");
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.get(1), Some((1, &b"world"[..])));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendBatch {
    /// The payloads, back to back.
    data: BytesMut,
    /// Each message's type and where its payload ends in `data`.
    ends: Vec<(u32, u32)>,
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `messages` messages of `bytes` payload
    /// bytes in all.
    pub fn with_capacity(messages: usize, bytes: usize) -> Self {
        SendBatch { data: BytesMut::with_capacity(bytes), ends: Vec::with_capacity(messages) }
    }

    /// Appends a message (its payload is copied into the batch's buffer).
    ///
    /// # Panics
    /// If the batch would hold 4 GiB of payload or more.
    pub fn push(&mut self, msg_type: u32, payload: &[u8]) {
        let end = u32::try_from(self.data.len() + payload.len()).expect("a send batch holds less than 4 GiB");
        self.data.extend_from_slice(payload);
        self.ends.push((msg_type, end));
    }

    /// Splits the batch in two at message `at`: `self` keeps the messages
    /// before it, the rest are returned (empty if `at >= len`).
    pub fn split_off(&mut self, at: usize) -> SendBatch {
        let (start, ends) = split_entries(&mut self.ends, at);
        SendBatch { data: self.data.split_off(start), ends }
    }

    /// How many of the first messages cost at most `bytes` together, each
    /// costing its payload plus `per_message`.
    pub(crate) fn messages_within(&self, bytes: usize, per_message: usize) -> usize {
        // The cost of the first k messages grows with k: a binary search.
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let cost = (self.ends[mid].1 as usize).saturating_add((mid + 1).saturating_mul(per_message));
            if cost <= bytes {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True if it holds no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payload bytes of all its messages together.
    pub fn payload_bytes(&self) -> usize {
        self.data.len()
    }

    /// Message `i`'s type and payload.
    pub fn get(&self, i: usize) -> Option<(u32, &[u8])> {
        let (t, r) = entry_range(&self.ends, i)?;
        Some((t, &self.data[r]))
    }

    /// The messages in order, as (type, payload).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, &[u8])> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(t, end)| {
            let payload = &self.data[start..end as usize];
            start = end as usize;
            (t, payload)
        })
    }

    /// Empties the batch, keeping its allocations when nothing else shares
    /// them.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The messages as (type, payload) pairs, each payload a handle on the
    /// shared buffer (how a refused batch is handed back).
    pub fn into_messages(self) -> Vec<(u32, Bytes)> {
        let (data, ends) = self.into_parts();
        (0..ends.len()).filter_map(|i| entry_range(&ends, i)).map(|(t, r)| (t, data.slice(r))).collect()
    }

    /// The frozen buffer and the (type, end) index.
    pub(crate) fn into_parts(self) -> (Bytes, Vec<(u32, u32)>) {
        (self.data.freeze(), self.ends)
    }

    /// The largest type and the longest payload of its messages.
    pub(crate) fn top_type_and_longest(&self) -> (u32, usize) {
        let (mut top, mut longest, mut start) = (0u32, 0u32, 0u32);
        for &(t, end) in &self.ends {
            top = top.max(t);
            longest = longest.max(end - start);
            start = end;
        }
        (top, longest as usize)
    }
}

impl<'a> FromIterator<(u32, &'a [u8])> for SendBatch {
    fn from_iter<I: IntoIterator<Item = (u32, &'a [u8])>>(iter: I) -> Self {
        let mut b = SendBatch::new();
        for (t, p) in iter {
            b.push(t, p);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn messages_within_counts_the_first_messages_that_fit_with_their_overhead() {
        let b: SendBatch = [(0u32, &[1u8; 10][..]), (0, &[]), (0, &[2; 5]), (0, &[])].into_iter().collect();
        // Cost of the first k messages, with 16 each: 26, 42, 63, 79.
        let fits = |bytes| b.messages_within(bytes, 16);
        assert_eq!(
            [fits(0), fits(25), fits(26), fits(41), fits(42), fits(78), fits(79), fits(1000)],
            [0, 0, 1, 1, 2, 3, 4, 4]
        );
        assert_eq!(fits(63), 3);
        // Without overhead, empty messages fit anywhere after what precedes them.
        assert_eq!([b.messages_within(0, 0), b.messages_within(10, 0), b.messages_within(15, 0)], [0, 2, 4]);
        assert_eq!(SendBatch::new().messages_within(100, 16), 0);
    }

    #[test]
    fn messages_taken_one_by_one_leave_the_rest_as_a_batch() {
        let (peer, connection, protocol) = (NodeId([1; 32]), ConnectionId(2), ProtocolId(3));
        let payloads: [&[u8]; 4] = [b"a", b"", b"ccc", b"dd"];
        let b = MessageBatch::from_messages(
            peer,
            connection,
            protocol,
            payloads.iter().enumerate().map(|(i, p)| (i as u32, *p)),
        );
        let mut it = b.clone().into_messages();
        assert_eq!(it.len(), 4);
        let first: Vec<Message> = it.by_ref().take(2).collect();
        assert_eq!(first, vec![b.message(0).unwrap(), b.message(1).unwrap()]);
        let rest = it.clone().rest();
        assert_eq!(rest.iter().collect::<Vec<_>>(), vec![(2, &b"ccc"[..]), (3, &b"dd"[..])]);
        assert_eq!(
            it.map(|m| (m.msg_type, m.payload)).collect::<Vec<_>>(),
            vec![(2, Bytes::from_static(b"ccc")), (3, Bytes::from_static(b"dd"))]
        );
        // A batch of one.
        let m = b.message(2).unwrap();
        let mut one = MessageBatch::one(m.clone()).into_iter();
        assert_eq!(one.next(), Some(m));
        assert_eq!(one.next(), None);
        assert!(one.rest().is_empty());
    }
}
