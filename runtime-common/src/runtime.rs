//! What the shell needs from an async runtime: spawning, TCP, UDP and a
//! timer. `devp2p-tokio` and `devp2p-smol` implement [`Runtime`] for their
//! runtimes; everything else (the driver, the handles, the streams) is
//! written once, in this crate, over this trait.
//!
//! Sockets are created and bound by the shell with the standard library
//! (so binding and options behave the same everywhere) and handed to the
//! runtime to register with its reactor, as quinn's `Runtime` does.
//! Reading and writing are readiness-based `poll_*` methods on shared
//! references, so the driver can read a socket while a writer task
//! writes it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

/// An async runtime the node can run on.
pub trait Runtime: Default + Clone + Send + Sync + 'static {
    /// A connected TCP stream registered with the runtime's reactor, read
    /// by the driver and written by a writer task at the same time (each
    /// registers its own waker).
    type TcpStream: Send + Sync + 'static;
    /// A listening TCP socket.
    type TcpListener: Send + Sync + 'static;
    /// A bound UDP socket.
    type UdpSocket: Send + Sync + 'static;
    /// A timer that can be moved to another deadline.
    type Timer: Send + Unpin + 'static;

    /// Runs `future` in the background until it completes (detached: the
    /// shell never cancels a task; tasks end by themselves).
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static);

    /// Opens a TCP connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Registers a bound, non-blocking listener.
    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::TcpListener>;

    /// Accepts the next inbound connection, or registers `cx` to be woken
    /// when one is ready.
    fn poll_accept(
        listener: &Self::TcpListener,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::TcpStream, SocketAddr)>>;

    /// Registers a bound, non-blocking UDP socket.
    fn udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::UdpSocket>;

    /// Receives a datagram into `buf`: its length and source; or registers
    /// `cx` to be woken when one is ready.
    fn poll_recv_from(
        socket: &Self::UdpSocket,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;

    /// Sends a datagram without waiting; `WouldBlock` if the socket's
    /// buffer is full (datagrams may be lost, so the shell drops it).
    fn try_send_to(socket: &Self::UdpSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize>;

    /// Reads into `buf`; `Ok(0)` at the end of the stream. Registers `cx`
    /// to be woken when the socket becomes readable if nothing is ready.
    fn poll_read(stream: &Self::TcpStream, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Writes from `buf`, returning how many bytes the socket took.
    /// Registers `cx` to be woken when it has room if it has none.
    fn poll_write(stream: &Self::TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends FIN: no more bytes will be written.
    fn shutdown_write(stream: &mut Self::TcpStream) -> impl Future<Output = io::Result<()>> + Send;

    /// Disables Nagle's algorithm (the core coalesces into records itself).
    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()>;

    /// A timer that fires at `deadline`.
    fn timer(&self, deadline: Instant) -> Self::Timer;

    /// Moves `timer` to fire at `deadline` instead.
    fn reset_timer(timer: &mut Self::Timer, deadline: Instant);

    /// `Ready` once the timer's deadline has passed (it stays fired until
    /// reset).
    fn poll_timer(timer: &mut Self::Timer, cx: &mut Context<'_>) -> Poll<()>;
}
