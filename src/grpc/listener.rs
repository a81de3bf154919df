//! The accept loop: a bounded number of open connections, back-off when
//! accepting fails (out of file descriptors), and a deadline for each
//! connection's first request, so silent peers cannot hold slots forever.
//! With TLS, each connection's handshake runs as it is first read or
//! written, under the same deadline, so slow handshakes block no one else.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::tls::TlsSource;

/// Longest pause after repeated accept errors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a request learns about its connection (in its extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    served: Arc<AtomicBool>,
}

/// One accepted connection: closed with an error on its next read once the
/// deadline passes without a request, and counted until dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl Conn {
    /// Drives the TLS handshake, if one is pending.
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Io::Handshake(accept) = &mut self.io else {
            return match self.io {
                Io::Failed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                _ => Poll::Ready(Ok(())),
            };
        };
        match Pin::new(&mut **accept).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(s)) => {
                self.io = Io::Tls(Box::new(s));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(remote = ?self.info.remote, "TLS handshake failed: {e}");
                self.io = Io::Failed;
                Poll::Ready(Err(e))
            }
        }
    }

    fn stream(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Unpin)> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s),
            Io::Tls(s) => Pin::new(&mut **s),
            Io::Handshake(_) | Io::Failed => unreachable!("ready() is polled first"),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            if this.info.served.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within server.handshake_timeout_ms",
                )));
            }
        }
        std::task::ready!(this.ready(cx))?;
        this.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.ready(cx))?;
        self.stream().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.ready(cx))?;
        self.stream().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io {
            // Nothing was said yet; just close.
            Io::Handshake(_) | Io::Failed => Poll::Ready(Ok(())),
            _ => self.stream().poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.ready(cx))?;
        self.stream().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Handshake(_) | Io::Failed => false,
        }
    }
}

struct Accept {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    first_request: Duration,
    backoff: Duration,
    tls: Option<TlsSource>,
}

/// Connections accepted from `listener`, at most `max` open at once (the
/// rest wait in the kernel's backlog), each closed unless it sends a request
/// within `first_request`; over TLS when `tls` is given.
pub fn incoming(
    listener: TcpListener,
    max: usize,
    first_request: Duration,
    tls: Option<TlsSource>,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send {
    let state = Accept {
        listener,
        slots: Arc::new(Semaphore::new(max.max(1))),
        first_request,
        backoff: Duration::ZERO,
        tls,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let slot = st.slots.clone().acquire_owned().await.ok()?;
            match st.listener.accept().await {
                Ok((io, remote)) => {
                    st.backoff = Duration::ZERO;
                    // Nagle's algorithm would hold small frames back for up to 40 ms.
                    let _ = io.set_nodelay(true);
                    let io = match &st.tls {
                        Some(tls) => Io::Handshake(Box::new(tls.acceptor().accept(io))),
                        None => Io::Plain(io),
                    };
                    let conn = Conn {
                        io,
                        info: ConnInfo {
                            remote: Some(remote),
                            served: Arc::new(AtomicBool::new(false)),
                        },
                        deadline: Some(Box::pin(tokio::time::sleep(st.first_request))),
                        _slot: slot,
                    };
                    return Some((Ok(conn), st));
                }
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: retrying at
                    // once would spin; wait for connections to close.
                    drop(slot);
                    st.backoff = (st.backoff * 2).clamp(Duration::from_millis(5), MAX_BACKOFF);
                    tracing::warn!(
                        "accepting a connection failed: {e}; retrying in {:?}",
                        st.backoff
                    );
                    tokio::time::sleep(st.backoff).await;
                }
            }
        }
    })
}

/// Marks a connection as served when a request arrives on it, which lifts
/// its first-request deadline.
#[derive(Clone)]
pub struct MarkServedLayer;

impl<S> tower::Layer<S> for MarkServedLayer {
    type Service = MarkServed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MarkServed(inner)
    }
}

/// See [`MarkServedLayer`].
#[derive(Clone)]
pub struct MarkServed<S>(S);

impl<S, B> tower::Service<http::Request<B>> for MarkServed<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(info) = req.extensions().get::<ConnInfo>() {
            info.served.store(true, Ordering::Relaxed);
        }
        self.0.call(req)
    }
}
