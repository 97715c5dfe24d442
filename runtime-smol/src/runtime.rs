//! [`Runtime`] for smol.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use devp2p_runtime::Runtime;
use smol::{Async, Timer};

/// The smol runtime: tasks on smol's global executor, sockets registered
/// with async-io's reactor, async-io timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Smol;

/// Runs `op` until it does not block, waiting for readiness with `poll`.
fn retry<T>(
    cx: &mut Context<'_>,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(poll(cx))?,
            r => return Poll::Ready(r),
        }
    }
}

impl Runtime for Smol {
    type TcpStream = Async<TcpStream>;
    type TcpListener = Async<TcpListener>;
    type UdpSocket = Async<UdpSocket>;
    type Timer = Timer;

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(future).detach();
    }

    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Async<TcpStream>>> + Send {
        Async::<TcpStream>::connect(addr)
    }

    fn tcp_listener(&self, listener: TcpListener) -> io::Result<Async<TcpListener>> {
        Async::new(listener)
    }

    fn poll_accept(
        listener: &Async<TcpListener>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Async<TcpStream>, SocketAddr)>> {
        let (stream, from) =
            ready!(retry(cx, |cx| listener.poll_readable(cx), || listener.get_ref().accept()))?;
        Poll::Ready(Async::new(stream).map(|s| (s, from)))
    }

    fn udp_socket(&self, socket: UdpSocket) -> io::Result<Async<UdpSocket>> {
        Async::new(socket)
    }

    fn poll_recv_from(
        socket: &Async<UdpSocket>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        retry(cx, |cx| socket.poll_readable(cx), || socket.get_ref().recv_from(buf))
    }

    fn try_send_to(socket: &Async<UdpSocket>, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        socket.get_ref().send_to(buf, to)
    }

    fn poll_read(stream: &Async<TcpStream>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        retry(cx, |cx| stream.poll_readable(cx), || (&mut stream.get_ref()).read(buf))
    }

    fn poll_write(stream: &Async<TcpStream>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        retry(cx, |cx| stream.poll_writable(cx), || (&mut stream.get_ref()).write(buf))
    }

    fn shutdown_write(stream: &mut Async<TcpStream>) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(stream.get_ref().shutdown(Shutdown::Write))
    }

    fn set_nodelay(stream: &Async<TcpStream>) -> io::Result<()> {
        stream.get_ref().set_nodelay(true)
    }

    fn timer(&self, deadline: Instant) -> Timer {
        Timer::at(deadline)
    }

    fn reset_timer(timer: &mut Timer, deadline: Instant) {
        timer.set_at(deadline);
    }

    fn poll_timer(timer: &mut Timer, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(timer).poll(cx).map(|_| ())
    }
}
