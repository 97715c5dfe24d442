//! Returning flow-control credit from a runtime: the
//! messages the application takes are noted where it reads, on its own
//! task, and handed in batches to the driver task, which returns their
//! credit to the node with [`Consumed::apply`]. Used with
//! [`Config::manual_consume`](devp2p_core::Config::manual_consume).

use std::sync::{Arc, Mutex};

use devp2p_core::{ConnectionId, Consumed, Event, MessageBatch, ProtocolId, MESSAGE_OVERHEAD};

/// Notes are handed over at this flow-control cost, or before the reader waits.
const FLUSH_AT: u64 = 64 << 10;

/// What the readers took, waiting for the driver.
pub struct CreditShared {
    taken: Mutex<Consumed>,
    /// Wakes the driver; called when the first notes arrive after a take.
    wake: Box<dyn Fn() + Send + Sync>,
}

impl core::fmt::Debug for CreditShared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CreditShared").finish_non_exhaustive()
    }
}

impl CreditShared {
    /// A shared ledger; `wake` tells the driver to call [`take`](Self::take)
    /// (a `try_send` on a channel of capacity one, say).
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(CreditShared { taken: Mutex::default(), wake: Box::new(wake) })
    }

    /// Everything noted so far, for the driver to apply.
    pub fn take(&self) -> Consumed {
        self.taken.lock().map(|mut t| core::mem::take(&mut *t)).unwrap_or_default()
    }
}

/// Consecutive messages from one connection on one protocol, counted
/// without a map lookup each.
#[derive(Debug, Clone, Copy)]
struct Run {
    connection: ConnectionId,
    protocol: ProtocolId,
    messages: u64,
    bytes: u64,
}

/// One reader's notes, handed over in batches (and when dropped).
#[derive(Debug)]
pub struct Taken {
    local: Consumed,
    run: Option<Run>,
    shared: Arc<CreditShared>,
}

impl Taken {
    /// A reader of `shared`.
    pub fn new(shared: Arc<CreditShared>) -> Self {
        Taken { local: Consumed::default(), run: None, shared }
    }

    /// Notes an event the application took.
    pub fn event(&mut self, ev: &Event) {
        if let Some(d) = ev.delivered() {
            self.note(d.connection, d.protocol, d.messages, d.bytes);
        }
    }

    /// Notes `messages` messages of `bytes` payload bytes in all that the
    /// application took from `connection` on `protocol`.
    pub fn messages(&mut self, connection: ConnectionId, protocol: ProtocolId, messages: u64, bytes: u64) {
        self.note(connection, protocol, messages, bytes);
    }

    /// Notes a batch of messages the application took.
    pub fn batch(&mut self, b: &MessageBatch) {
        self.note(b.connection, b.protocol, b.len() as u64, b.payload_bytes() as u64);
    }

    fn note(&mut self, connection: ConnectionId, protocol: ProtocolId, messages: u64, bytes: u64) {
        match &mut self.run {
            Some(r) if r.connection == connection && r.protocol == protocol => {
                r.messages += messages;
                r.bytes += bytes;
            }
            run => {
                if let Some(r) = run.take() {
                    self.local.add_many(r.connection, r.protocol, r.messages, r.bytes);
                }
                *run = Some(Run { connection, protocol, messages, bytes });
            }
        }
        let run_cost = self.run.map_or(0, |r| r.bytes + r.messages * MESSAGE_OVERHEAD);
        if self.local.pending() + run_cost >= FLUSH_AT {
            self.flush();
        }
    }

    /// Hands the notes to the driver (call before the reader waits).
    pub fn flush(&mut self) {
        if let Some(r) = self.run.take() {
            self.local.add_many(r.connection, r.protocol, r.messages, r.bytes);
        }
        if self.local.is_empty() {
            return;
        }
        let Ok(mut t) = self.shared.taken.lock() else { return };
        let was_empty = t.is_empty();
        t.merge(&mut self.local);
        drop(t);
        if was_empty {
            (self.shared.wake)();
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn notes_are_batched_and_the_driver_is_woken_once_per_batch() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let shared = CreditShared::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let mut a = Taken::new(shared.clone());
        let mut b = Taken::new(shared.clone());
        let m = |t: &mut Taken, len| t.messages(ConnectionId(3), ProtocolId(2), 1, len);
        m(&mut a, 100);
        assert_eq!(wakes.load(Ordering::Relaxed), 0, "small notes wait");
        m(&mut a, 70_000);
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "a large batch goes at once");
        m(&mut b, 5);
        b.flush();
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "the driver has not taken the first batch yet");
        let mut expect = Consumed::default();
        for len in [100, 70_000, 5] {
            expect.add(ConnectionId(3), ProtocolId(2), len);
        }
        assert_eq!(shared.take(), expect);
        drop(a);
        m(&mut b, 1);
        drop(b);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
        assert_eq!(shared.take().pending(), 1 + MESSAGE_OVERHEAD);
    }
}
