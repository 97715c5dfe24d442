//! Which connections' sockets became readable. Each connection has a waker
//! of its own that queues the connection's id and wakes the driver task, so
//! the driver reads every socket itself (no reader task and no hand-off per
//! read) and polls only the sockets that are ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use devp2p_core::ConnectionId;

/// Ids of connections whose sockets may be readable, and the driver's waker.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    inner: Mutex<(Vec<ConnectionId>, Option<Waker>)>,
}

/// The waker of one connection's socket.
#[derive(Debug)]
pub(crate) struct ConnWaker {
    id: ConnectionId,
    /// The id is in the queue (not yet taken by the driver).
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let driver = match self.queue.inner.lock() {
            Ok(mut g) => {
                g.0.push(self.id);
                g.1.take()
            }
            Err(_) => None,
        };
        if let Some(w) = driver {
            w.wake();
        }
    }
}

impl ConnWaker {
    /// The driver took the id and is about to poll the socket: a readiness
    /// change from now on queues it again.
    pub(crate) fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl ReadyQueue {
    /// A waker for connection `id`'s socket, and the same as a `Waker`.
    pub(crate) fn waker(self: &Arc<Self>, id: ConnectionId) -> (Arc<ConnWaker>, Waker) {
        let w = Arc::new(ConnWaker { id, queued: AtomicBool::new(false), queue: self.clone() });
        (w.clone(), Waker::from(w))
    }

    /// Moves the queued ids into `out`, without waiting.
    pub(crate) fn take(&self, out: &mut Vec<ConnectionId>) {
        if let Ok(mut g) = self.inner.lock() {
            out.append(&mut g.0);
        }
    }

    /// Moves the queued ids into `out`, or registers the driver's waker.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, out: &mut Vec<ConnectionId>) -> Poll<()> {
        let Ok(mut g) = self.inner.lock() else { return Poll::Pending };
        if g.0.is_empty() {
            g.1 = Some(cx.waker().clone());
            Poll::Pending
        } else {
            out.append(&mut g.0);
            Poll::Ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_queued_once_until_taken() {
        let q = Arc::new(ReadyQueue::default());
        let (cw, w) = q.waker(ConnectionId(7));
        w.wake_by_ref();
        w.wake_by_ref();
        let mut out = Vec::new();
        let noop = Waker::noop();
        assert_eq!(q.poll_take(&mut Context::from_waker(noop), &mut out), Poll::Ready(()));
        assert_eq!(out, vec![ConnectionId(7)]);
        out.clear();
        assert_eq!(q.poll_take(&mut Context::from_waker(noop), &mut out), Poll::Pending);
        cw.taken();
        w.wake();
        assert_eq!(q.poll_take(&mut Context::from_waker(noop), &mut out), Poll::Ready(()));
        assert_eq!(out, vec![ConnectionId(7)]);
    }
}
