//! A connection's writer task, and how many transmit buffers it holds
//! for the [`Outputs::write`](devp2p_core::Outputs::write) contract: while
//! the writer writes one buffer, the core may seal the next.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use devp2p_core::ConnectionId;
use futures_lite::future::{self, poll_fn};

use crate::driver::Input;
use crate::runtime::Runtime;

/// How long a closed connection's writer may take to flush its last bytes
/// and linger, so that a peer that never reads cannot pin the socket.
const WRITE_GRACE: Duration = Duration::from_secs(2);

/// Buffers a connection's writer may hold: while it writes one, the core
/// seals the next.
pub(crate) const WRITE_DEPTH: usize = 2;

/// The buffers handed to one connection's writer and not written yet, and
/// whether the core waits for `handle_written`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterBacklog {
    held: usize,
    /// The writer was full when it took its last buffer: the core has not
    /// been told it may transmit again.
    owed: bool,
}

impl WriterBacklog {
    /// The writer took a buffer. True if it has room for another, so the
    /// core may be told at once (what `Outputs::write` returns); false if
    /// [`written`](Self::written) will say when.
    pub(crate) fn handed(&mut self) -> bool {
        self.held += 1;
        self.owed = self.held >= WRITE_DEPTH;
        !self.owed
    }

    /// The writer holds no buffer.
    pub(crate) fn is_idle(&self) -> bool {
        self.held == 0
    }

    /// The writer wrote a buffer. True if the core waits for
    /// `handle_written` now.
    pub(crate) fn written(&mut self) -> bool {
        self.held = self.held.saturating_sub(1);
        core::mem::take(&mut self.owed)
    }
}

/// The writer task of connection `id`: writes the buffers it is given, in
/// order, and hands each back to the driver. When the driver drops
/// `closed` (the connection closed), it has [`WRITE_GRACE`] to write what
/// it still holds and linger.
pub(crate) async fn run<R: Runtime>(
    rt: R,
    id: ConnectionId,
    stream: Arc<R::TcpStream>,
    buffers: Receiver<Vec<u8>>,
    closed: Receiver<()>,
    driver: Sender<Input<R::TcpStream>>,
) {
    let work = async move {
        while let Ok(buf) = buffers.recv().await {
            if let Err(e) = write_all::<R>(&stream, &buf).await {
                tracing::debug!(conn = %id, error = %e, "write failed");
                let _ = driver.send(Input::WriteFailed(id)).await;
                return;
            }
            if driver.send(Input::Written(id, buf)).await.is_err() {
                return;
            }
        }
        // Closed and written: the driver has dropped its reference.
        if let Ok(stream) = Arc::try_unwrap(stream) {
            linger::<R>(stream).await;
        }
    };
    let grace = async move {
        let _ = closed.recv().await;
        let mut timer = rt.timer(Instant::now() + WRITE_GRACE);
        poll_fn(|cx| R::poll_timer(&mut timer, cx)).await;
    };
    future::or(work, grace).await;
}

/// Writes all of `buf`, waiting for the socket to have room.
async fn write_all<R: Runtime>(stream: &R::TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match poll_fn(|cx| R::poll_write(stream, cx, buf)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Ends a closed connection's socket: tells the peer we are done (FIN),
/// then reads and drops what it still sends until it closes too. Closing
/// with unread bytes would reset the connection, and a reset can destroy
/// our last records (the `DISCONNECT`) in the peer's receive buffer.
async fn linger<R: Runtime>(mut stream: R::TcpStream) {
    if R::shutdown_write(&mut stream).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while matches!(poll_fn(|cx| R::poll_read(&stream, cx, &mut buf)).await, Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_waits_only_while_the_writer_is_full() {
        let mut w = WriterBacklog::default();
        assert!(w.handed(), "room for a second buffer");
        assert!(!w.handed(), "full: the core waits");
        assert!(w.written(), "one written: the core is told now");
        assert!(!w.handed(), "full again");
        assert!(w.written());
        assert!(!w.written(), "nothing owed for a buffer acknowledged when handed over");
        assert!(w.handed());
    }
}
