//! The send scheduler: one FIFO per channel, served by deficit round robin
//! with per-protocol weights, and a priority lane for channels whose next
//! message is small. Messages of one channel keep their order; messages of
//! different channels interleave chunk by chunk, so a bulk transfer on one
//! protocol delays another protocol's small message by about one record.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use bytes::Bytes;

use crate::protocol::ProtocolId;

/// A message waiting to be written into records.
pub(crate) struct Outgoing {
    pub(crate) channel: u32,
    pub(crate) protocol: ProtocolId,
    pub(crate) msg_type: u32,
    pub(crate) payload: Bytes,
    /// Bytes of `payload` already written.
    pub(crate) offset: usize,
    /// Order of acceptance, to hand unsent messages back in send order.
    seq: u64,
    /// The messages queued after this one in the same
    /// [`SendBatch`](crate::SendBatch), none of them started: the entry
    /// stands for all of them, and the next moves to the head once this
    /// one is written.
    pub(crate) more: Option<Box<Packed>>,
}

impl Outgoing {
    fn remaining(&self) -> usize {
        self.payload.len() - self.offset
    }

    /// Messages this entry stands for: the head and those packed after it.
    fn messages(&self) -> usize {
        1 + self.more.as_ref().map_or(0, |p| p.ends.len() - p.next)
    }

    /// Moves the next packed message to the head. False if none is left.
    fn load_next(&mut self) -> bool {
        let Some(p) = self.more.as_deref_mut() else { return false };
        let Some((msg_type, range)) = crate::message::entry_range(&p.ends, p.next) else { return false };
        self.payload = p.data.slice(range);
        self.msg_type = msg_type;
        self.offset = 0;
        self.seq = p.seq + p.next as u64;
        p.next += 1;
        if p.next == p.ends.len() {
            self.more = None;
        }
        true
    }
}

/// The messages of a [`SendBatch`](crate::SendBatch) after its first,
/// queued in one [`Outgoing`] entry.
pub(crate) struct Packed {
    /// The payloads, back to back.
    data: Bytes,
    /// Each message's type and where its payload ends in `data`.
    ends: Vec<(u32, u32)>,
    /// The first message not yet moved to the entry's head.
    next: usize,
    /// The acceptance order of message 0.
    seq: u64,
}

impl Packed {
    /// The messages not yet moved to the entry's head, as (type, payload).
    pub(crate) fn rest(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        let mut start = self.next.checked_sub(1).map_or(0, |p| self.ends[p].1 as usize);
        self.ends[self.next..].iter().map(move |&(t, end)| {
            let payload = &self.data[start..end as usize];
            start = end as usize;
            (t, payload)
        })
    }
}

struct ChannelQueue {
    queue: VecDeque<Outgoing>,
    /// Messages of `queue` not yet written (packed ones included).
    messages: usize,
    /// Payload bytes of `queue` not yet written.
    bytes: usize,
    /// Bytes this channel may still send in its current round.
    deficit: usize,
    weight: usize,
}

/// Per-channel queues and the choice of which one writes next.
pub(crate) struct Scheduler {
    channels: Vec<ChannelQueue>,
    /// Channels with queued messages, in round-robin order (each once).
    active: VecDeque<usize>,
    next_seq: u64,
    /// Bytes a channel of weight 1 sends per round.
    quantum: usize,
    /// Messages with at most this many bytes left take the priority lane.
    small: usize,
}

impl Scheduler {
    /// A scheduler for channels with the given weights (index = channel - 1).
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>, quantum: usize, small: usize) -> Self {
        let channels = weights
            .into_iter()
            .map(|w| ChannelQueue {
                queue: VecDeque::new(),
                messages: 0,
                bytes: 0,
                deficit: 0,
                weight: w.max(1) as usize,
            })
            .collect();
        Scheduler { channels, active: VecDeque::new(), next_seq: 0, quantum: quantum.max(1), small }
    }

    /// Queues a message on channel index `idx` (channel - 1).
    pub(crate) fn push(
        &mut self,
        idx: usize,
        channel: u32,
        protocol: ProtocolId,
        msg_type: u32,
        payload: Bytes,
    ) {
        self.push_many(idx, channel, protocol, core::iter::once((msg_type, payload)));
    }

    /// Queues `msgs` (type, payload) on channel index `idx`, in order.
    pub(crate) fn push_many(
        &mut self,
        idx: usize,
        channel: u32,
        protocol: ProtocolId,
        msgs: impl ExactSizeIterator<Item = (u32, Bytes)>,
    ) {
        if msgs.len() == 0 {
            return;
        }
        let c = &mut self.channels[idx];
        if c.queue.is_empty() {
            self.active.push_back(idx);
        }
        c.messages += msgs.len();
        let seq = &mut self.next_seq;
        c.queue.extend(msgs.map(|(msg_type, payload)| {
            c.bytes += payload.len();
            *seq += 1;
            Outgoing { channel, protocol, msg_type, payload, offset: 0, seq: *seq - 1, more: None }
        }));
    }

    /// Queues the messages of a [`SendBatch`](crate::SendBatch) (its
    /// buffer and (type, end) index) on channel index `idx` as one entry.
    pub(crate) fn push_packed(
        &mut self,
        idx: usize,
        channel: u32,
        protocol: ProtocolId,
        data: Bytes,
        ends: Vec<(u32, u32)>,
    ) {
        let Some(&(msg_type, first_end)) = ends.first() else { return };
        let c = &mut self.channels[idx];
        if c.queue.is_empty() {
            self.active.push_back(idx);
        }
        let seq = self.next_seq;
        self.next_seq += ends.len() as u64;
        c.messages += ends.len();
        c.bytes += data.len();
        let payload = data.slice(..first_end as usize);
        let more = (ends.len() > 1).then(|| Box::new(Packed { data, ends, next: 1, seq }));
        c.queue.push_back(Outgoing { channel, protocol, msg_type, payload, offset: 0, seq, more });
    }

    /// Messages with at most this many bytes left take the priority lane.
    pub(crate) fn small(&self) -> usize {
        self.small
    }

    /// How many channels have messages queued.
    pub(crate) fn active_count(&self) -> usize {
        self.active.len()
    }

    /// True if no message is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// True if channel index `idx` has a message that may be written now:
    /// one already started, or one `startable(idx, payload_len)` allows
    /// (flow control decides).
    fn is_ready(&self, idx: usize, startable: &mut impl FnMut(usize, usize) -> bool) -> bool {
        self.channels[idx].queue.front().is_some_and(|m| m.offset > 0 || startable(idx, m.payload.len()))
    }

    /// True if some channel may write now.
    pub(crate) fn has_ready(&self, mut startable: impl FnMut(usize, usize) -> bool) -> bool {
        self.active.iter().any(|&i| self.is_ready(i, &mut startable))
    }

    /// Chooses the channel to write from next and how many of its bytes may
    /// be written now, among the channels that may write
    /// (`startable(idx, payload_len)` says whether a message may begin).
    /// Channels whose next message is small go first (with an unlimited
    /// allowance, `usize::MAX`, which marks the priority lane); the others
    /// share the link by deficit round robin.
    pub(crate) fn next(&mut self, mut startable: impl FnMut(usize, usize) -> bool) -> Option<(usize, usize)> {
        let mut first_ready = None;
        let mut ready = 0usize;
        for (pos, &i) in self.active.iter().enumerate() {
            if !self.is_ready(i, &mut startable) {
                continue;
            }
            if self.channels[i].queue.front().is_some_and(|m| m.remaining() <= self.small) {
                return Some((i, usize::MAX));
            }
            ready += 1;
            first_ready.get_or_insert(pos);
        }
        let pos = first_ready?;
        if pos != 0 {
            // Channels waiting for credit keep their place behind it.
            let idx = self.active.remove(pos)?;
            self.active.push_front(idx);
        }
        let idx = self.active[0];
        if ready == 1 {
            // Alone on the link: no turns to take (and no needless chunk
            // boundaries). `MAX - 1` is not the priority lane's mark.
            return Some((idx, usize::MAX - 1));
        }
        let c = &mut self.channels[idx];
        if c.deficit == 0 {
            c.deficit = self.quantum * c.weight;
        }
        Some((idx, c.deficit))
    }

    /// The message at the head of channel index `idx`.
    pub(crate) fn head_mut(&mut self, idx: usize) -> Option<&mut Outgoing> {
        self.channels[idx].queue.front_mut()
    }

    /// Records that `written` bytes of `idx`'s head message were written.
    pub(crate) fn advance(&mut self, idx: usize, written: usize) {
        let c = &mut self.channels[idx];
        c.deficit = c.deficit.saturating_sub(written);
        c.bytes -= written;
        let Some(head) = c.queue.front_mut() else { return };
        head.offset += written;
        if head.offset >= head.payload.len() {
            c.messages -= 1;
            if !head.load_next() {
                c.queue.pop_front();
            }
        }
        self.end_turn_if_done(idx);
    }

    /// After channel index `idx` wrote: it leaves the round robin if its
    /// queue is empty, or goes to the back if its turn is used up.
    fn end_turn_if_done(&mut self, idx: usize) {
        let c = &mut self.channels[idx];
        if c.queue.is_empty() {
            c.deficit = 0;
            self.active.retain(|&i| i != idx);
        } else if c.deficit == 0 && self.active.len() > 1 && self.active.front() == Some(&idx) {
            self.active.rotate_left(1);
        }
    }

    /// Removes the first `count` messages of channel index `idx` (packed
    /// ones counted one by one, in order), written whole, with `bytes`
    /// payload bytes in all (as [`advance`](Self::advance) by each one's
    /// length would). They have not been started: the head had `offset` 0.
    pub(crate) fn pop_whole(&mut self, idx: usize, count: usize, bytes: usize) {
        if count == 0 {
            return;
        }
        let c = &mut self.channels[idx];
        let (mut entries, mut left) = (0, count);
        for m in &c.queue {
            let n = m.messages();
            if left < n {
                break;
            }
            left -= n;
            entries += 1;
        }
        c.queue.drain(..entries);
        if left > 0 {
            // Part of a packed entry: its next unwritten message becomes the head.
            if let Some(head) = c.queue.front_mut() {
                if let Some(p) = head.more.as_deref_mut() {
                    p.next += left - 1;
                }
                head.load_next();
            }
        }
        c.messages -= count;
        c.bytes -= bytes;
        c.deficit = c.deficit.saturating_sub(bytes);
        self.end_turn_if_done(idx);
    }

    /// The messages queued on channel index `idx`, in order.
    pub(crate) fn queue(&self, idx: usize) -> &VecDeque<Outgoing> {
        &self.channels[idx].queue
    }

    /// Messages and payload bytes still queued on channel index `idx`.
    pub(crate) fn depth(&self, idx: usize) -> (usize, usize) {
        let c = &self.channels[idx];
        (c.messages, c.bytes)
    }

    /// Removes every queued message, in the order they were accepted
    /// (packed ones each an entry of its own, without `more`).
    pub(crate) fn take_all(&mut self) -> Vec<Outgoing> {
        let mut all: Vec<Outgoing> = Vec::new();
        for mut m in self.channels.iter_mut().flat_map(|c| c.queue.drain(..)) {
            // A packed entry gives its head, then moves the next one up.
            while m.more.is_some() {
                let head = Outgoing {
                    channel: m.channel,
                    protocol: m.protocol,
                    msg_type: m.msg_type,
                    payload: m.payload.clone(),
                    offset: m.offset,
                    seq: m.seq,
                    more: None,
                };
                m.load_next();
                all.push(head);
            }
            all.push(m);
        }
        all.sort_by_key(|m| m.seq);
        for c in &mut self.channels {
            c.deficit = 0;
            c.bytes = 0;
            c.messages = 0;
        }
        self.active.clear();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn drain(s: &mut Scheduler, chunk: usize) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        while let Some((idx, allowance)) = s.next(|_, _| true) {
            let head = s.head_mut(idx).expect("active channels have a head");
            let take = head.remaining().min(chunk).min(allowance);
            out.push((head.channel, take));
            s.advance(idx, take);
        }
        out
    }

    #[test]
    fn weights_share_bytes_and_order_is_kept_per_channel() {
        let mut s = Scheduler::new([1, 3], 1000, 0);
        for i in 0..10u8 {
            s.push(0, 1, ProtocolId(0), u32::from(i), Bytes::from(vec![i; 4000]));
            s.push(1, 2, ProtocolId(1), u32::from(i), Bytes::from(vec![i; 4000]));
        }
        let order = drain(&mut s, 500);
        // In the first 8000 bytes written, channel 2 got three times channel 1's share.
        let mut sent = [0usize; 2];
        let mut total = 0;
        for (ch, n) in &order {
            if total >= 8000 {
                break;
            }
            sent[*ch as usize - 1] += n;
            total += n;
        }
        assert_eq!(sent, [2000, 6000]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_small_message_overtakes_bulk_on_another_channel() {
        let mut s = Scheduler::new([1, 1], 16_384, 256);
        s.push(0, 1, ProtocolId(0), 0, Bytes::from(vec![0; 1 << 20]));
        let first = drain_one(&mut s, 1000);
        assert_eq!(first, (1, 1000));
        s.push(1, 2, ProtocolId(1), 0, Bytes::from(vec![1; 64]));
        assert_eq!(drain_one(&mut s, 1000), (2, 64), "the small message goes next");
    }

    fn drain_one(s: &mut Scheduler, chunk: usize) -> (u32, usize) {
        let (idx, allowance) = s.next(|_, _| true).expect("queued");
        let head = s.head_mut(idx).expect("head");
        let take = head.remaining().min(chunk).min(allowance);
        let ch = head.channel;
        s.advance(idx, take);
        (ch, take)
    }

    #[test]
    fn a_channel_without_credit_is_passed_over_and_keeps_its_queue() {
        let mut s = Scheduler::new([1, 1], 1000, 0);
        s.push(0, 1, ProtocolId(0), 0, Bytes::from(vec![0; 3000]));
        s.push(1, 2, ProtocolId(1), 0, Bytes::from(vec![1; 3000]));
        let blocked = |idx: usize, _len: usize| idx != 0;
        assert!(s.has_ready(blocked));
        let (idx, allowance) = s.next(blocked).expect("channel 2 may write");
        assert_eq!((idx, allowance), (1, usize::MAX - 1), "alone among the ready channels");
        s.advance(1, 3000);
        assert!(!s.has_ready(blocked), "only the blocked channel is left");
        assert_eq!(s.next(blocked), None);
        assert_eq!(s.depth(0), (1, 3000));
        // A started message continues whatever the credit.
        assert_eq!(s.next(|_, _| true), Some((0, usize::MAX - 1)));
        s.advance(0, 1000);
        assert!(s.has_ready(|_, _| false));
        assert_eq!(s.depth(0), (1, 2000));
    }

    #[test]
    fn take_all_returns_send_order() {
        let mut s = Scheduler::new([1, 1], 10, 0);
        s.push(1, 2, ProtocolId(1), 0, Bytes::from_static(b"a"));
        s.push(0, 1, ProtocolId(0), 1, Bytes::from_static(b"b"));
        s.push(1, 2, ProtocolId(1), 2, Bytes::from_static(b"c"));
        let types: Vec<u32> = s.take_all().iter().map(|m| m.msg_type).collect();
        assert_eq!(types, vec![0, 1, 2]);
        assert!(s.is_empty());
    }
}
