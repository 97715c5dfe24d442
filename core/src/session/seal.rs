//! Sealing: queued messages and control chunks into records, as many
//! chunks per record as fit, one AEAD call per record.

use super::*;

/// The fast loop of `write_records`: whole small messages of the only busy
/// channel, written one after another while flow control, the priority
/// rule and the record allow.
pub(super) struct WholeRun<'a> {
    pub(super) small: usize,
    pub(super) credit: &'a mut SendCredit,
    pub(super) share: u64,
    /// Where the record's plaintext must end.
    pub(super) limit: usize,
    /// The record carries a priority message (no larger ones may follow).
    pub(super) urgent: bool,
    /// Messages and payload bytes written.
    pub(super) count: usize,
    pub(super) bytes: usize,
}

impl WholeRun<'_> {
    /// Writes one message whole into `buf`; false (nothing written) if it
    /// may not go in this record this way.
    #[inline(always)]
    pub(super) fn put(&mut self, buf: &mut Vec<u8>, channel: u32, msg_type: u32, payload: &[u8]) -> bool {
        let len = payload.len();
        if (self.urgent && len > self.small) || len >= SEALED_MIN {
            return false;
        }
        let cost = flow::cost(len);
        if !self.credit.may_start(cost, self.share) {
            return false;
        }
        let (channel, msg_type) = (u64::from(channel), u64::from(msg_type));
        if buf.len() + chunk::whole_header_len(channel, msg_type, len as u64) + len > self.limit {
            return false;
        }
        self.urgent |= len <= self.small;
        self.credit.charge(cost);
        chunk::push_whole_header(buf, channel, msg_type, len as u64);
        buf.extend_from_slice(payload);
        self.count += 1;
        self.bytes += len;
        true
    }
}

impl Session {
    /// Writes framed, sealed records into `buf` until it holds at least
    /// `budget` bytes or nothing is left. Returns the application messages
    /// (completely written) and payload bytes dequeued.
    pub(crate) fn write_records(
        &mut self,
        buf: &mut Vec<u8>,
        budget: usize,
        config: &Config,
        now: Instant,
    ) -> Result<(usize, usize), CryptoError> {
        let record_size = config.record_size();
        let (mut dequeued, mut done) = (0usize, 0usize);
        let closing = self.control.iter().any(|c| matches!(c, Control::Disconnect(_)));
        if !self.rekey.queued
            && !closing
            && (self.rekey.bytes >= config.rekey.after_bytes
                || self.rekey.records >= config.rekey.after_records
                || now >= self.rekey.due)
        {
            self.rekey.queued = true;
            self.control.push_back(Control::Rekey);
        }
        while buf.len() < budget && self.has_output() {
            // Never build a record that cannot be sealed (2^64 - 1 is
            // reserved; rekeying keeps this unreachable in practice).
            if self.send.nonce() == u64::MAX {
                return Err(CryptoError::NonceExhausted);
            }
            let len_pos = buf.len();
            buf.extend_from_slice(&[0, 0]);
            let start = buf.len();
            let limit = start + record_size;
            let mut rekey_here = false;
            // Control messages first: they are small and latency-sensitive.
            while let Some(c) = self.control.front() {
                let mut payload = [0u8; 16];
                let plen = {
                    let mut v = Vec::new();
                    c.encode_payload(&mut v);
                    payload[..v.len()].copy_from_slice(&v);
                    v.len()
                };
                let st = Some(MessageStart { msg_type: c.msg_type(), total_len: plen as u64 });
                let hl = chunk::data_header_len(0, st, true, plen as u64);
                if buf.len() + hl + plen > limit {
                    break;
                }
                let at = buf.len();
                buf.resize(at + hl, 0);
                chunk::write_data_header(&mut buf[at..], 0, st, true, plen as u64);
                buf.extend_from_slice(&payload[..plen]);
                if matches!(c, Control::Rekey) {
                    rekey_here = true;
                }
                self.control.pop_front();
            }
            // Then credit going back to the peer: due now, or due soon and
            // riding along in this record.
            if self.updates_due || self.updates_soon.is_some() {
                self.write_updates(buf, limit);
            }
            // Then application data, as many chunks as fit, in the order
            // the scheduler chooses. A record carrying a priority message
            // is not filled up with bulk data: it is sent at once, small.
            let mut urgent = false;
            let small = self.scheduler.small();
            let share = self.in_flight_share();
            let channels = &mut self.channels;
            while let Some((idx, allowance)) =
                self.scheduler.next(|i, len| channels[i].credit.may_start(flow::cost(len), share))
            {
                let priority = allowance == usize::MAX;
                if urgent && !priority {
                    break;
                }
                let Some(m) = self.scheduler.head_mut(idx) else { break };
                // The tail of a larger message takes the priority lane too
                // (to finish it), but does not close the record early: only
                // a small message (or a piece of one) does.
                urgent |= priority && m.payload.len() <= small;
                let space = limit.saturating_sub(buf.len());
                let remaining = m.payload.len() - m.offset;
                let st = (m.offset == 0).then_some(MessageStart {
                    msg_type: u64::from(m.msg_type),
                    total_len: m.payload.len() as u64,
                });
                let channel = u64::from(m.channel);
                let whole = st.is_some()
                    && remaining <= allowance
                    && chunk::data_header_len(channel, st, true, remaining as u64) + remaining <= space;
                let take = if whole {
                    remaining
                } else {
                    let worst = chunk::data_header_len(channel, st, false, remaining as u64);
                    if space < worst + remaining.min(1) {
                        // Not even a header and one byte fit: the record is full.
                        break;
                    }
                    remaining.min(space - worst).min(allowance)
                };
                let last = take == remaining;
                if st.is_some() {
                    channels[idx].credit.charge(flow::cost(m.payload.len()));
                }
                let hl = chunk::data_header_len(channel, st, last, take as u64);
                let at = buf.len();
                buf.resize(at + hl, 0);
                chunk::write_data_header(&mut buf[at..], channel, st, last, take as u64);
                if take >= SEALED_MIN && !self.send.opens_whole() {
                    // Encrypted from the payload at sealing time (no copy).
                    // (ring seals in place only: there it is copied in.)
                    self.unsealed.push((buf.len() - start, m.payload.slice(m.offset..m.offset + take)));
                    buf.resize(buf.len() + take, 0);
                } else {
                    buf.extend_from_slice(&m.payload[m.offset..m.offset + take]);
                }
                dequeued += take;
                done += usize::from(last);
                let st = &mut channels[idx].stats;
                st.bytes_out += take as u64;
                st.messages_out += u64::from(last);
                self.scheduler.advance(idx, take);
                // The next whole messages of the only busy channel, written
                // without asking the scheduler each time: it would choose
                // this channel again, with the same allowance.
                if !last || allowance < usize::MAX - 1 || self.scheduler.active_count() != 1 {
                    continue;
                }
                let mut run = WholeRun {
                    small,
                    credit: &mut channels[idx].credit,
                    share,
                    limit,
                    urgent,
                    count: 0,
                    bytes: 0,
                };
                'queue: for m in self.scheduler.queue(idx) {
                    if m.offset != 0 || !run.put(buf, m.channel, m.msg_type, &m.payload) {
                        break;
                    }
                    // The rest of a send batch, straight from its buffer.
                    if let Some(p) = &m.more {
                        for (msg_type, payload) in p.rest() {
                            if !run.put(buf, m.channel, msg_type, payload) {
                                break 'queue;
                            }
                        }
                    }
                }
                let (count, bytes) = (run.count, run.bytes);
                urgent = run.urgent;
                dequeued += bytes;
                done += count;
                let st = &mut channels[idx].stats;
                st.bytes_out += bytes as u64;
                st.messages_out += count as u64;
                self.scheduler.pop_whole(idx, count, bytes);
            }
            if buf.len() == start && self.cover_pending {
                // Cover traffic: a record of padding only.
                buf.push(chunk::TAG_PADDING);
            }
            self.cover_pending = false;
            let plain_len = buf.len() - start;
            if plain_len == 0 {
                buf.truncate(len_pos);
                break;
            }
            // Traffic shaping: pad up to the bucket (a padding chunk is a
            // zero tag byte, and the rest of the record is ignored).
            let plain_len = config.padded_len(plain_len);
            buf.resize(start + plain_len, 0);
            let tag = self.send.seal_with_parts(&[], &mut buf[start..], &self.unsealed);
            self.unsealed.clear();
            let tag = tag?;
            buf.extend_from_slice(&tag);
            let body_len = (plain_len + TAG_LEN) as u16;
            buf[len_pos..len_pos + 2].copy_from_slice(&body_len.to_be_bytes());
            self.rekey.bytes += (plain_len + TAG_LEN) as u64;
            self.rekey.records += 1;
            if rekey_here {
                self.send.rekey();
                self.rekey =
                    RekeyState { bytes: 0, records: 0, due: now + config.rekey.after_time, queued: false };
            }
            if urgent {
                // Hand the priority record to the transport on its own,
                // instead of behind more bulk records in the same buffer.
                break;
            }
        }
        self.queued_bytes -= dequeued;
        self.queued_messages -= done;
        Ok((done, dequeued))
    }

    /// Writes the due `WINDOW_UPDATE` chunks that fit before `limit`.
    pub(super) fn write_updates(&mut self, buf: &mut Vec<u8>, limit: usize) {
        /// Longest update chunk: tag, body length, two 8-byte varints.
        const MAX_UPDATE: usize = 18;
        for (i, w) in self.channels.iter_mut().map(|c| &mut c.window).enumerate() {
            if buf.len() + MAX_UPDATE > limit {
                return; // the rest goes in the next record
            }
            if let Some(inc) = w.take_update() {
                flow::write_update(buf, i as u64 + 1, inc);
            }
        }
        self.updates_due = false;
        self.updates_soon = None;
    }
}
