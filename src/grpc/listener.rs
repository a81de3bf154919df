//! The accept loop: a bounded number of open connections, in total and per
//! peer address, back-off when accepting fails (out of file descriptors),
//! and a deadline for each connection's first request, so silent peers
//! cannot hold slots forever. With TLS, each connection's handshake runs as
//! it is first read or written, under the same deadline, so slow handshakes
//! block no one else. Each connection carries a [`ConnState`] through which
//! calls ask for it to be closed (after an authentication failure) and
//! which tracks its open calls (for the idle timeout).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::limits::{canonical, Limits};
use super::tls::TlsSource;
use crate::engine::Identity;

/// Longest pause after repeated accept errors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a request learns about its connection (in its extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The connection's shared state.
    pub state: Arc<ConnState>,
}

/// State of one connection shared by its calls and the task serving it.
#[derive(Debug)]
pub struct ConnState {
    served: AtomicBool,
    /// The peer is a trusted proxy: several clients share the connection,
    /// so nothing one of them does closes it.
    pub(crate) via_proxy: bool,
    open_calls: AtomicUsize,
    /// Milliseconds from `born` to when the last call ended.
    last_active_ms: AtomicU64,
    born: Instant,
    close: AtomicBool,
    pub(crate) wake: Notify,
    identity: Mutex<Option<IdentitySlot>>,
    peers: Peers,
    /// `server.max_connections_per_identity`.
    max_per_identity: usize,
    /// `server.max_calls_per_identity`.
    max_calls_per_identity: usize,
}

impl ConnState {
    fn new(via_proxy: bool, peers: Peers, limits: &Limits) -> Self {
        ConnState {
            served: AtomicBool::new(false),
            via_proxy,
            open_calls: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            born: Instant::now(),
            close: AtomicBool::new(false),
            wake: Notify::new(),
            identity: Mutex::new(None),
            peers,
            max_per_identity: limits.max_connections_per_identity,
            max_calls_per_identity: limits.max_calls_per_identity,
        }
    }

    /// Asks for the connection to be closed once its open calls end
    /// (HTTP/2 GOAWAY, then close), unless it comes from a trusted proxy.
    pub fn close_when_done(&self) {
        if !self.via_proxy && !self.close.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Whether the connection was asked to close.
    pub(crate) fn closing(&self) -> bool {
        self.close.load(Ordering::Relaxed)
    }

    /// Counts a call as open until the guard is dropped.
    pub(crate) fn call(self: &Arc<Self>) -> CallGuard {
        self.served.store(true, Ordering::Relaxed);
        self.open_calls.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// When the connection became idle, or `None` while calls are open.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.open_calls.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.born + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed)))
    }

    /// Counts this connection against `id`, the identity of its first
    /// authenticated call; errs when `id` holds the most connections
    /// allowed. Later calls of other identities on it are not counted.
    pub fn bind_identity(&self, id: &Identity) -> Result<(), tonic::Status> {
        if self.via_proxy {
            return Ok(());
        }
        let mut slot = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        *slot = Some(self.peers.take_identity(id, Kind::Conn, self.max_per_identity).ok_or_else(|| {
            tonic::Status::resource_exhausted(format!(
                "this user already has {} open connections, the limit (server.max_connections_per_identity); reuse one",
                self.max_per_identity
            ))
        })?);
        Ok(())
    }

    /// Counts a call of `id` until the slot drops; errs when `id` has the
    /// most calls allowed open. Counted through trusted proxies too: unlike
    /// a connection, a call has one identity.
    pub(crate) fn call_as(&self, id: &Identity) -> Result<IdentitySlot, tonic::Status> {
        self.peers
            .take_identity(id, Kind::Call, self.max_calls_per_identity)
            .ok_or_else(|| {
                tonic::Status::resource_exhausted(format!(
                    "this user already has {} open calls, the limit (server.max_calls_per_identity); retry when some end",
                    self.max_calls_per_identity
                ))
            })
    }
}

/// An open call on a connection; see [`ConnState::call`].
pub(crate) struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.last_active_ms
            .store(s.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        if s.open_calls.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.wake.notify_one();
        }
    }
}

type Owner = (Arc<str>, Arc<str>);

#[derive(Default)]
struct PeerCounts {
    by_peer: HashMap<IpAddr, (usize, usize)>,
    /// Open connections and calls per identity.
    by_identity: HashMap<Owner, (usize, usize)>,
}

/// Open connections and calls per peer address and per identity, shared
/// by the accept loop and every connection.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<PeerCounts>>);

/// Which count a [`PeerSlot`] or [`IdentitySlot`] holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Conn,
    Call,
}

/// A connection or call counted against its peer address until dropped.
pub struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
    kind: Kind,
}

impl Peers {
    fn take(&self, ip: IpAddr, kind: Kind, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.by_peer.entry(ip).or_default();
        let n = match kind {
            Kind::Conn => &mut e.0,
            Kind::Call => &mut e.1,
        };
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
            kind,
        })
    }

    /// Counts a call of `ip`, or `None` when it has `max` open already.
    pub fn call(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        self.take(canonical(ip), Kind::Call, max)
    }

    /// Counts a connection or call of `id`, or `None` when it has `max`
    /// open already.
    fn take_identity(&self, id: &Identity, kind: Kind, max: usize) -> Option<IdentitySlot> {
        let owner: Owner = (id.user_id.clone(), id.workspace_id.clone());
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.by_identity.entry(owner.clone()).or_default();
        let n = match kind {
            Kind::Conn => &mut e.0,
            Kind::Call => &mut e.1,
        };
        if *n >= max {
            if *e == (0, 0) {
                m.by_identity.remove(&owner);
            }
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            peers: self.clone(),
            owner,
            kind,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.by_peer.get_mut(&self.ip) {
            match self.kind {
                Kind::Conn => e.0 -= 1,
                Kind::Call => e.1 -= 1,
            }
            if *e == (0, 0) {
                m.by_peer.remove(&self.ip);
            }
        }
    }
}

/// A connection or call counted against its identity until dropped.
#[derive(Debug)]
pub(crate) struct IdentitySlot {
    peers: Peers,
    owner: Owner,
    kind: Kind,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peers")
    }
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut m = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.by_identity.get_mut(&self.owner) {
            match self.kind {
                Kind::Conn => e.0 -= 1,
                Kind::Call => e.1 -= 1,
            }
            if *e == (0, 0) {
                m.by_identity.remove(&self.owner);
            }
        }
    }
}

/// One accepted connection: closed with an error on its next read once the
/// deadline passes without a request, and counted until dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
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
            if this.info.state.served.load(Ordering::Relaxed) {
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
    limits: Arc<Limits>,
    peers: Peers,
    backoff: Duration,
    tls: Option<TlsSource>,
}

/// Connections accepted from `listener`, at most `limits.max_connections`
/// open at once (the rest wait in the kernel's backlog) and
/// `limits.max_connections_per_peer` per peer address (the rest are closed
/// at once: waiting in the backlog would hold up everyone else), each
/// closed unless it sends a request within `limits.handshake_timeout`; over
/// TLS when `tls` is given.
pub fn incoming(
    listener: TcpListener,
    limits: Arc<Limits>,
    peers: Peers,
    tls: Option<TlsSource>,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send {
    let state = Accept {
        listener,
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        limits,
        peers,
        backoff: Duration::ZERO,
        tls,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let slot = st.slots.clone().acquire_owned().await.ok()?;
            match st.listener.accept().await {
                Ok((io, remote)) => {
                    st.backoff = Duration::ZERO;
                    let ip = canonical(remote.ip());
                    let via_proxy = st.limits.trusted_proxies.iter().any(|n| n.contains(ip));
                    let peer = if via_proxy {
                        None
                    } else {
                        match st
                            .peers
                            .take(ip, Kind::Conn, st.limits.max_connections_per_peer)
                        {
                            Some(p) => Some(p),
                            None => {
                                tracing::debug!(%ip, "closing a connection past server.max_connections_per_peer");
                                continue;
                            }
                        }
                    };
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
                            state: Arc::new(ConnState::new(
                                via_proxy,
                                st.peers.clone(),
                                &st.limits,
                            )),
                        },
                        deadline: Some(Box::pin(tokio::time::sleep(st.limits.handshake_timeout))),
                        _slot: slot,
                        _peer: peer,
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
