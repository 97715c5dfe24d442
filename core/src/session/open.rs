//! Opening: a received record authenticated and decrypted in place,
//! its chunks decoded and checked in order (SPEC.md §10.6), pieces
//! reassembled into messages.

use super::*;

/// Pieces of messages at least this large are decrypted straight into
/// their reassembly buffers (see [`Session::read_record`]).
pub(super) const SEALED_MIN: usize = 8192;

/// Most reassembly buffers a session keeps for reuse.
pub(super) const MAX_SPARE: usize = 128;

/// A record being opened: its body (ciphertext and plaintext) and the
/// keystream that decrypts it.
pub(super) struct Opening<'a> {
    pub(super) ct: &'a mut [u8],
    pub(super) ks: Keystream,
    /// Everything before it is plaintext, or a sealed piece (handed out).
    pub(super) done: usize,
}

impl Opening<'_> {
    /// Decrypts in place up to at least `upto`: a window of at least
    /// `WINDOW` bytes, ending on a block boundary.
    pub(super) fn decrypt_to(&mut self, upto: usize) {
        const WINDOW: usize = 1024;
        if self.done < upto {
            let next = (upto.max(self.done + WINDOW).next_multiple_of(64)).min(self.ct.len());
            self.ks.apply(self.done, &mut self.ct[self.done..next]);
            self.done = next;
        }
    }
}

/// A piece of a message in a record: `plain` (decrypted) followed by
/// `sealed` (still ciphertext, at record offset `at`, which `ks` decrypts).
pub(super) struct Piece<'a> {
    pub(super) plain: &'a [u8],
    pub(super) sealed: &'a [u8],
    pub(super) at: usize,
    pub(super) ks: &'a mut Keystream,
    /// Bytes of the record from the piece on.
    pub(super) rest: usize,
}

impl Piece<'_> {
    pub(super) fn len(&self) -> usize {
        self.plain.len() + self.sealed.len()
    }

    /// Appends the piece to `buf`, decrypting the sealed part on the way.
    pub(super) fn append_to(self, buf: &mut BytesMut) {
        buf.extend_from_slice(self.plain);
        if !self.sealed.is_empty() {
            let at = buf.len();
            buf.resize(at + self.sealed.len(), 0);
            self.ks.apply_into(self.at, self.sealed, &mut buf[at..]);
        }
    }
}

impl Session {
    /// Opens one record body and handles its chunks, pushing completed
    /// messages to `events`. The tag is checked first; then the body is
    /// decrypted in place as its chunks are read, in windows of at least
    /// 1 KiB ending on block boundaries (a record of many small chunks takes
    /// a few long keystream calls, not one per chunk), except large pieces
    /// of messages being reassembled: those are decrypted straight from the
    /// record into their reassembly buffers, which saves copying them.
    pub(crate) fn read_record(
        &mut self,
        body: &mut [u8],
        config: &Config,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) -> Result<RecordOutcome, DisconnectReason> {
        if body.len() < TAG_LEN {
            return Err(DisconnectReason::ProtocolViolation);
        }
        let len = body.len() - TAG_LEN;
        let (ct, tag) = body.split_at_mut(len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let mut text = if self.recv.opens_whole() {
            // ring checks and decrypts the record in one call.
            self.recv.open_in_place(&[], ct, &t).map_err(|_| DisconnectReason::DecryptFailed)?;
            let done = ct.len();
            Opening { ct, ks: Keystream::spent(), done }
        } else {
            let ks = self.recv.verify(&[], ct, &t).map_err(|_| DisconnectReason::DecryptFailed)?;
            Opening { ct, ks, done: 0 }
        };
        self.last_recv = now;
        let mut out =
            Delivery::new(core::mem::take(&mut self.run_arena), events, (self.peer, self.connection));
        let result = self.read_chunks(&mut text, config, now, &mut out);
        out.close();
        self.run_arena = out.arena;
        let (outcome, rekeys) = result?;
        // Each REKEY in a record advances the receive key once, after the record.
        for _ in 0..rekeys {
            self.recv.rekey();
        }
        Ok(outcome)
    }

    /// The chunk loop of [`read_record`](Self::read_record); returns the
    /// outcome and the number of `REKEY`s read.
    pub(super) fn read_chunks(
        &mut self,
        text: &mut Opening<'_>,
        config: &Config,
        now: Instant,
        out: &mut Delivery<'_>,
    ) -> Result<(RecordOutcome, u32), DisconnectReason> {
        let len = text.ct.len();
        let mut outcome = RecordOutcome::Continue;
        let mut rekeys = 0u32;
        let mut pos = 0;
        while pos < len {
            text.decrypt_to((pos + chunk::MAX_HEADER).min(len));
            // The usual small whole message, read without the general decoder.
            if let Some((channel, msg_type, total, header)) = chunk::small_whole_header(&text.ct[pos..]) {
                let from = pos + header;
                let end = from + total;
                if channel != 0 && end <= len {
                    text.decrypt_to(end);
                    self.read_whole(channel, msg_type, &text.ct[from..end], len - from, config, out)?;
                    pos = end;
                    continue;
                }
            }
            let mut r = Reader::new(&text.ct[pos..]);
            let c = chunk::decode(&mut r).map_err(|_| DisconnectReason::ProtocolViolation)?;
            let end = len - r.remaining().len();
            // What the chunk is, with its data as a range of the record (the
            // borrow of the record ends here: the data may still be sealed).
            let (channel, start, last, from) = match c {
                None | Some(Chunk::Padding) => break,
                Some(Chunk::Data { channel, start, last, data }) => (channel, start, last, end - data.len()),
                Some(Chunk::Extension { tag, body }) => {
                    if tag == flow::TAG_WINDOW_UPDATE {
                        let from = end - body.len();
                        text.decrypt_to(end);
                        let (channel, inc) = flow::decode_update(&text.ct[from..end])
                            .ok_or(DisconnectReason::ProtocolViolation)?;
                        let credit = usize::try_from(channel)
                            .ok()
                            .and_then(|c| c.checked_sub(1))
                            .and_then(|i| self.channels.get_mut(i))
                            .map(|c| &mut c.credit)
                            .ok_or(DisconnectReason::UnknownMessageType)?;
                        credit.grant(inc).map_err(|_| DisconnectReason::FlowControlViolation)?;
                    }
                    // Unknown extensions are skipped.
                    pos = end;
                    continue;
                }
            };
            pos = end;
            if channel == 0 {
                text.decrypt_to(end);
                let data = &text.ct[from..end];
                let st = start.ok_or(DisconnectReason::ProtocolViolation)?;
                if !last || data.len() > MAX_CONTROL_PAYLOAD {
                    return Err(DisconnectReason::ProtocolViolation);
                }
                let ctl =
                    Control::decode(st.msg_type, data).map_err(|_| DisconnectReason::ProtocolViolation)?;
                match ctl {
                    Control::Ping(token) => {
                        // At most one PONG is pending: a flood of PINGs
                        // refreshes its token instead of growing the queue.
                        match self.control.iter_mut().find(|c| matches!(c, Control::Pong(_))) {
                            Some(pending) => *pending = Control::Pong(token),
                            None => self.control.push_back(Control::Pong(token)),
                        }
                    }
                    Control::Pong(token) => {
                        if let Some((t, sent)) = self.ping_outstanding {
                            if t == token {
                                self.rtt = Some(now - sent);
                                self.ping_outstanding = None;
                            }
                        }
                    }
                    Control::Disconnect(reason) => outcome = RecordOutcome::RemoteDisconnect(reason),
                    Control::Rekey => rekeys += 1,
                    Control::Unknown => {}
                }
                continue;
            }
            // A large piece of a message being reassembled stays sealed in
            // the record: it is decrypted into its reassembly buffer.
            let piece = if !(start.is_some() && last) && end - from >= SEALED_MIN {
                let plain = text.done.clamp(from, end);
                Piece {
                    plain: &text.ct[from..plain],
                    sealed: &text.ct[plain..end],
                    at: plain,
                    ks: &mut text.ks,
                    rest: len - from,
                }
            } else {
                text.decrypt_to(end);
                Piece { plain: &text.ct[from..end], sealed: &[], at: end, ks: &mut text.ks, rest: len - from }
            };
            let sealed = !piece.sealed.is_empty();
            self.read_data(channel, start, last, piece, config, out)?;
            if sealed {
                // Left as ciphertext: the next window starts after it.
                text.done = text.done.max(end);
            }
        }
        Ok((outcome, rekeys))
    }

    /// A message that arrived whole, in one chunk on `channel` (not 0):
    /// `data` is its payload (`total_len` bytes, see `chunk::decode`), and
    /// `rest` the bytes of the record from it on.
    #[inline(always)]
    pub(super) fn read_whole(
        &mut self,
        channel: u64,
        msg_type: u64,
        data: &[u8],
        rest: usize,
        config: &Config,
        out: &mut Delivery<'_>,
    ) -> Result<(), DisconnectReason> {
        let idx = usize::try_from(channel - 1).map_err(|_| DisconnectReason::UnknownMessageType)?;
        let ch = self.channels.get_mut(idx).ok_or(DisconnectReason::UnknownMessageType)?;
        if ch.partial.is_some() {
            return Err(DisconnectReason::ProtocolViolation);
        }
        if msg_type >= u64::from(ch.shared.message_count) {
            return Err(DisconnectReason::UnknownMessageType);
        }
        if data.len() as u64 > config.limits.max_message_size {
            return Err(DisconnectReason::MessageTooLarge);
        }
        ch.window.admit(flow::cost(data.len())).map_err(|_| DisconnectReason::FlowControlViolation)?;
        ch.stats.messages_in += 1;
        ch.stats.bytes_in += data.len() as u64;
        out.whole(ch.shared.id, msg_type as u32, data, rest);
        Ok(())
    }

    pub(super) fn read_data(
        &mut self,
        channel: u64,
        start: Option<MessageStart>,
        last: bool,
        data: Piece<'_>,
        config: &Config,
        out: &mut Delivery<'_>,
    ) -> Result<(), DisconnectReason> {
        if let (Some(st), true) = (start, last) {
            return self.read_whole(channel, st.msg_type, data.plain, data.rest, config, out);
        }
        let idx = usize::try_from(channel - 1).map_err(|_| DisconnectReason::UnknownMessageType)?;
        let ch = self.channels.get_mut(idx).ok_or(DisconnectReason::UnknownMessageType)?;
        let shared = ch.shared;
        let slot = &mut ch.partial;
        let partial = match (start, slot.take()) {
            (Some(_), Some(_)) | (None, None) => return Err(DisconnectReason::ProtocolViolation),
            (None, Some(p)) => p,
            (Some(st), None) => {
                if st.msg_type >= u64::from(shared.message_count) {
                    return Err(DisconnectReason::UnknownMessageType);
                }
                if st.total_len > config.limits.max_message_size {
                    return Err(DisconnectReason::MessageTooLarge);
                }
                let total = st.total_len as usize;
                self.channels[idx]
                    .window
                    .admit(flow::cost(total))
                    .map_err(|_| DisconnectReason::FlowControlViolation)?;
                let msg_type = st.msg_type as u32;
                if self.reassembly_bytes + total > config.limits.max_reassembly_per_peer {
                    return Err(DisconnectReason::ResourceLimit);
                }
                if self.reassembly_bytes + self.spare_bytes + total > config.limits.max_reassembly_per_peer {
                    // Buffers in use come first: the kept ones go.
                    self.spare.clear();
                    self.spare_bytes = 0;
                }
                self.reassembly_bytes += total;
                // A kept buffer the application is done with, large enough
                // and not much larger (it is not pinned by a small message).
                let reusable = self.spare.iter_mut().position(|(buf, size)| {
                    *size >= total && *size <= 2 * total + (64 << 10) && buf.try_reclaim(total)
                });
                let mut buf = match reusable {
                    Some(i) => {
                        let (buf, size) = self.spare.swap_remove(i);
                        self.spare_bytes -= size;
                        buf
                    }
                    None => BytesMut::new(),
                };
                buf.clear();
                buf.reserve(total);
                let alloc = buf.capacity().max(total);
                Partial { msg_type, total, buf, alloc }
            }
        };
        let mut p = partial;
        if p.buf.len() + data.len() > p.total {
            return Err(DisconnectReason::ProtocolViolation);
        }
        data.append_to(&mut p.buf);
        if last {
            if p.buf.len() != p.total {
                return Err(DisconnectReason::ProtocolViolation);
            }
            self.reassembly_bytes -= p.total;
            let st = &mut self.channels[idx].stats;
            st.messages_in += 1;
            st.bytes_in += p.total as u64;
            let payload = p.buf.split().freeze();
            // Kept for reuse only within the reassembly budget.
            if self.spare.len() < MAX_SPARE
                && self.reassembly_bytes + self.spare_bytes + p.alloc <= config.limits.max_reassembly_per_peer
            {
                self.spare_bytes += p.alloc;
                // An empty handle on the allocation, without the unused
                // tail a larger reused buffer leaves: `try_reclaim` on it
                // succeeds only once the application has dropped the message.
                self.spare.push((p.buf.split_to(0), p.alloc));
            }
            out.push(out.message(shared.id, p.msg_type, payload));
        } else {
            self.channels[idx].partial = Some(p);
        }
        Ok(())
    }
}
