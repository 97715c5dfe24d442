//! Credit-based flow control per channel (SPEC.md "Flow control").
//!
//! Each side grants every channel an initial credit, its *receive window*,
//! advertised in its hello. A message costs its payload length plus
//! [`MESSAGE_OVERHEAD`], charged whole when its first chunk is written. A
//! sender starts a message only if its credit covers the cost, or if all
//! earlier messages have been returned (credit at least the window): a
//! message larger than the window then travels alone. The receiver returns
//! credit with `WINDOW_UPDATE` chunks once the application has consumed
//! messages, so a protocol whose consumer stops reading stops its own
//! sender, and no other protocol. What a receiver holds unconsumed per
//! channel is thus at most `max(window, largest message + overhead)`.

use crate::wire::varint::{self, Reader};

/// Flow-control cost of a message besides its payload bytes, so that empty
/// messages are not free.
pub const MESSAGE_OVERHEAD: u64 = 16;

/// Tag of the `WINDOW_UPDATE` extension chunk.
pub(crate) const TAG_WINDOW_UPDATE: u8 = 0x30;

/// Consumed credit is returned at the latest once this much (or a quarter
/// of the window, if less) has accumulated, so a sender using only part of
/// its window (see [`SendCredit::may_start`]) still gets a steady flow.
const UPDATE_AFTER: u64 = 256 << 10;

/// How long a receiver that has caught up may hold back consumed credit
/// below the update threshold, so that it rides in a record written anyway
/// (a reply, say) instead of a record of its own: counted from the last
/// record received.
pub(crate) const CAUGHT_UP_DELAY: core::time::Duration = core::time::Duration::from_millis(1);

/// Whether a window's consumed credit should go back to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateDue {
    /// Nothing to return yet.
    No,
    /// The application caught up: return it within [`CAUGHT_UP_DELAY`].
    Soon,
    /// The threshold is reached: return it in the next record.
    Now,
}

/// Most credit a sender may accumulate (a larger grant is a violation).
const MAX_CREDIT: i64 = 1 << 62;

/// The flow-control cost of a message with `len` payload bytes.
pub(crate) fn cost(len: usize) -> u64 {
    len as u64 + MESSAGE_OVERHEAD
}

/// The peer broke the flow-control rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowViolation;

/// The sending half: credit the peer granted one channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendCredit {
    /// Remaining credit; negative after a message larger than the window.
    credit: i64,
    /// The peer's initial grant; `None` if the peer does no flow control.
    window: Option<i64>,
}

impl SendCredit {
    /// Credit for a peer that advertised `window` (`None`: unlimited).
    pub(crate) fn new(window: Option<u64>) -> Self {
        let window = window.map(|w| w.min(MAX_CREDIT as u64) as i64);
        SendCredit { credit: window.unwrap_or(MAX_CREDIT), window }
    }

    /// True if a message of `cost` may be started now.
    pub(crate) fn can_start(&self, cost: u64) -> bool {
        match self.window {
            None => true,
            Some(w) => self.credit >= cost.min(MAX_CREDIT as u64) as i64 || self.credit >= w,
        }
    }

    /// The local policy on top of [`can_start`](Self::can_start): a message
    /// may start only if this channel's outstanding credit (charged and not
    /// yet returned) stays within `share` afterwards, unless nothing is
    /// outstanding (so any message can always start eventually).
    pub(crate) fn may_start(&self, cost: u64, share: u64) -> bool {
        self.can_start(cost)
            && match self.window {
                None => true,
                Some(w) => {
                    self.credit >= w || (w - self.credit) as u64 + cost.min(MAX_CREDIT as u64) <= share
                }
            }
    }

    /// Charges a started message.
    pub(crate) fn charge(&mut self, cost: u64) {
        if self.window.is_some() {
            self.credit -= cost.min(MAX_CREDIT as u64) as i64;
        }
    }

    /// Adds credit returned by the peer.
    pub(crate) fn grant(&mut self, increment: u64) -> Result<(), FlowViolation> {
        if self.window.is_none() {
            return Ok(());
        }
        let inc = i64::try_from(increment).map_err(|_| FlowViolation)?;
        match self.credit.checked_add(inc) {
            Some(c) if c <= MAX_CREDIT => {
                self.credit = c;
                Ok(())
            }
            _ => Err(FlowViolation),
        }
    }

    /// Remaining credit (`i64::MAX` if the peer does no flow control).
    pub(crate) fn available(&self) -> i64 {
        if self.window.is_some() {
            self.credit
        } else {
            i64::MAX
        }
    }
}

/// The receiving half: what one channel's sender may still send, and what
/// the application has not consumed yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveWindow {
    window: i64,
    /// Credit the sender has left, as this side counts it.
    credit: i64,
    /// Cost of messages received (or being received) and not yet consumed.
    unconsumed: u64,
    /// Cost consumed and not yet returned in a `WINDOW_UPDATE`.
    pending: u64,
}

impl ReceiveWindow {
    /// A window granting `window` bytes of credit.
    pub(crate) fn new(window: u64) -> Self {
        let window = window.min(MAX_CREDIT as u64) as i64;
        ReceiveWindow { window, credit: window, unconsumed: 0, pending: 0 }
    }

    /// Admits a message of `cost` whose first chunk arrived, or reports
    /// that the sender had no credit for it.
    pub(crate) fn admit(&mut self, cost: u64) -> Result<(), FlowViolation> {
        let c = i64::try_from(cost).map_err(|_| FlowViolation)?;
        if self.credit >= c || self.credit >= self.window {
            self.credit -= c;
            self.unconsumed += cost;
            Ok(())
        } else {
            Err(FlowViolation)
        }
    }

    /// The application consumed messages worth `cost` (clamped to what is
    /// unconsumed). Returns whether credit should now go back.
    pub(crate) fn consume(&mut self, cost: u64) -> UpdateDue {
        let c = cost.min(self.unconsumed);
        self.unconsumed -= c;
        self.pending += c;
        self.update_due()
    }

    /// Whether consumed credit should be returned: at once when a quarter of
    /// the window (at most 256 KiB) has accumulated; soon when the
    /// application has caught up (a sender waiting to start a large message
    /// needs everything back).
    pub(crate) fn update_due(&self) -> UpdateDue {
        if self.pending == 0 {
            UpdateDue::No
        } else if self.pending >= UPDATE_AFTER.min(self.window as u64 / 4) {
            UpdateDue::Now
        } else if self.unconsumed == 0 {
            UpdateDue::Soon
        } else {
            UpdateDue::No
        }
    }

    /// Takes the credit to return in a `WINDOW_UPDATE`, if one is due now or soon.
    pub(crate) fn take_update(&mut self) -> Option<u64> {
        if self.update_due() == UpdateDue::No {
            return None;
        }
        let inc = core::mem::take(&mut self.pending);
        self.credit += inc as i64;
        Some(inc)
    }

    /// Cost of messages received and not yet consumed.
    pub(crate) fn unconsumed(&self) -> u64 {
        self.unconsumed
    }
}

/// Length of an encoded `WINDOW_UPDATE` chunk.
#[cfg(test)]
pub(crate) fn update_len(channel: u64, increment: u64) -> usize {
    let body = varint::len(channel) + varint::len(increment);
    1 + varint::len(body as u64) + body
}

/// Appends a `WINDOW_UPDATE` chunk.
pub(crate) fn write_update(out: &mut alloc::vec::Vec<u8>, channel: u64, increment: u64) {
    out.push(TAG_WINDOW_UPDATE);
    varint::write(out, (varint::len(channel) + varint::len(increment)) as u64);
    varint::write(out, channel);
    varint::write(out, increment);
}

/// Decodes a `WINDOW_UPDATE` chunk body: `(channel, increment)`.
pub(crate) fn decode_update(body: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader::new(body);
    let channel = r.varint().ok()?;
    let increment = r.varint().ok()?;
    r.is_empty().then_some((channel, increment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn the_in_flight_share_limits_what_is_outstanding_but_never_blocks_for_good() {
        let mut s = SendCredit::new(Some(1000));
        assert!(s.may_start(200, 300));
        s.charge(200);
        assert!(s.can_start(200) && !s.may_start(200, 300), "400 would be outstanding");
        assert!(s.may_start(100, 300));
        s.grant(200).unwrap();
        // Nothing outstanding: even a message above the share may start.
        assert!(s.may_start(500, 300));
        s.charge(500);
        assert!(!s.may_start(1, 300));
        // Toward a peer without flow control the share does not apply.
        assert!(SendCredit::new(None).may_start(u64::MAX, 0));
    }

    #[test]
    fn sender_and_receiver_agree_on_the_rules() {
        let mut s = SendCredit::new(Some(1000));
        let mut r = ReceiveWindow::new(1000);
        for _ in 0..4 {
            assert!(s.can_start(200));
            s.charge(200);
            r.admit(200).unwrap();
        }
        assert!(!s.can_start(300), "200 left");
        assert_eq!(r.admit(300), Err(FlowViolation));
        // Consuming a little returns nothing yet (below a quarter, not caught up).
        assert_eq!(r.consume(100), UpdateDue::No);
        assert_eq!(r.consume(700), UpdateDue::Now, "a quarter of the window");
        s.grant(r.take_update().unwrap()).unwrap();
        assert!(s.can_start(300));
    }

    #[test]
    fn a_caught_up_receiver_returns_small_credit_soon_and_large_credit_now() {
        let mut r = ReceiveWindow::new(1 << 20);
        r.admit(100).unwrap();
        r.admit(100).unwrap();
        assert_eq!(r.consume(100), UpdateDue::No, "still behind, below the threshold");
        assert_eq!(r.consume(100), UpdateDue::Soon, "caught up");
        assert_eq!(r.take_update(), Some(200));
        assert_eq!(r.update_due(), UpdateDue::No);
        // A quarter of a large window is capped at 256 KiB.
        let mut r = ReceiveWindow::new(64 << 20);
        r.admit(300 << 10).unwrap();
        r.admit(1).unwrap();
        assert_eq!(r.consume(300 << 10), UpdateDue::Now);
    }

    #[test]
    fn a_message_larger_than_the_window_goes_alone() {
        let mut s = SendCredit::new(Some(100));
        let mut r = ReceiveWindow::new(100);
        assert!(s.can_start(5000));
        s.charge(5000);
        r.admit(5000).unwrap();
        assert!(!s.can_start(20));
        assert_eq!(r.admit(20), Err(FlowViolation));
        assert_eq!(r.consume(5000), UpdateDue::Now, "a quarter of the window and more");
        s.grant(r.take_update().unwrap()).unwrap();
        assert!(s.can_start(20) && s.can_start(5000));
        assert_eq!(r.unconsumed(), 0);
    }

    #[test]
    fn over_returning_is_clamped_and_over_granting_is_a_violation() {
        let mut r = ReceiveWindow::new(100);
        r.admit(50).unwrap();
        r.consume(1_000_000);
        assert_eq!(r.take_update(), Some(50));
        let mut s = SendCredit::new(Some(100));
        assert_eq!(s.grant(u64::MAX), Err(FlowViolation));
        assert_eq!(s.grant(MAX_CREDIT as u64), Err(FlowViolation));
        let mut off = SendCredit::new(None);
        assert!(off.can_start(u64::MAX));
        off.charge(u64::MAX);
        assert_eq!(off.available(), i64::MAX);
    }

    proptest! {
        #[test]
        fn update_roundtrip(channel in 0u64..(1 << 40), inc in 0u64..(1 << 62)) {
            let mut out = Vec::new();
            write_update(&mut out, channel, inc);
            prop_assert_eq!(out.len(), update_len(channel, inc));
            let mut r = Reader::new(&out);
            match crate::wire::chunk::decode(&mut r) {
                Ok(Some(crate::wire::chunk::Chunk::Extension { tag, body })) => {
                    prop_assert_eq!(tag, TAG_WINDOW_UPDATE);
                    prop_assert_eq!(decode_update(body), Some((channel, inc)));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        /// Whatever the message sizes and consumption order, a sender that
        /// follows its rules never violates the receiver's, and what the
        /// receiver holds stays within max(window, largest message).
        #[test]
        fn the_rules_bound_what_is_held(window in 0u64..10_000,
                                        ops in proptest::collection::vec((0usize..20_000, any::<bool>()), 1..200)) {
            let mut s = SendCredit::new(Some(window));
            let mut r = ReceiveWindow::new(window);
            let mut held: alloc::collections::VecDeque<u64> = Default::default();
            let mut largest = 0;
            for (len, consume) in ops {
                let c = cost(len);
                if s.can_start(c) {
                    s.charge(c);
                    prop_assert!(r.admit(c).is_ok());
                    held.push_back(c);
                    largest = largest.max(c);
                }
                prop_assert!(r.unconsumed() <= window.max(largest));
                if consume {
                    if let Some(c) = held.pop_front() {
                        r.consume(c);
                    }
                }
                if let Some(inc) = r.take_update() {
                    s.grant(inc).unwrap();
                }
            }
            // Once everything is consumed, all credit comes back.
            while let Some(c) = held.pop_front() {
                r.consume(c);
            }
            if let Some(inc) = r.take_update() {
                s.grant(inc).unwrap();
            }
            prop_assert!(s.can_start(u64::from(u32::MAX)));
        }
    }
}
