//! Connection, stream and session limits of the server, and the count of
//! open sessions they are checked against.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Status};

use crate::config::ServerConfig;
use crate::engine::Identity;

/// Limits that bound what one peer can make the server hold. The config's
/// `[server]` section sets them; see `docs/SECURITY.md`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection that sends no complete request within this is closed.
    pub handshake_timeout: Duration,
    /// Most open client connections.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Most open sessions per identity (user and workspace).
    pub max_sessions_per_identity: usize,
    /// Most open sessions in total.
    pub max_sessions: usize,
    /// Most views in one Sync.
    pub max_sync_views: usize,
    /// HTTP/2 flow-control window of each call: the most request bytes a
    /// client may send ahead of the server reading them.
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window of each connection, over all its calls.
    /// HTTP/2's flood protection closes a connection once the small DATA
    /// frames waiting to be read cost more than half of it, so it is kept
    /// well above what one stalled call can buffer.
    pub connection_window_bytes: u32,
    /// A connection with no open call for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// Most open connections from one peer address; further ones are
    /// closed as soon as they are accepted.
    pub max_connections_per_peer: usize,
    /// Most open calls (streams) of one peer address over all its
    /// connections.
    pub max_calls_per_peer: usize,
    /// Most open connections whose first authenticated call was made by
    /// one identity (user and workspace).
    pub max_connections_per_identity: usize,
    /// Most open calls of one identity over all its connections.
    pub max_calls_per_identity: usize,
    /// Peers whose `x-forwarded-for` names the client (reverse proxies):
    /// their connections are not capped or closed as one peer's, and each
    /// call counts against the forwarded address instead.
    pub trusted_proxies: Vec<IpNet>,
}

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this block (IPv4-mapped IPv6 addresses count as
    /// IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address or address block (`10.0.0.0/8`)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(a.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

/// The IPv4 address of an IPv4-mapped IPv6 address, else `ip`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Limits {
    /// The limits `[server]` sets; fails on a `trusted_proxies` entry that
    /// is not an address or block.
    pub fn from_config(server: &ServerConfig) -> Result<Limits, String> {
        let trusted_proxies = server
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| format!("server.trusted_proxies: {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(Limits {
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
            max_connections: server.max_connections,
            max_streams_per_connection: server.max_streams_per_connection,
            max_sessions_per_identity: server.max_sessions_per_identity,
            max_sessions: server.max_sessions,
            max_sync_views: server.max_sync_views,
            stream_window_bytes: server.stream_window_bytes,
            connection_window_bytes: server.connection_window_bytes,
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            max_connections_per_peer: server.max_connections_per_peer,
            max_calls_per_peer: server.max_calls_per_peer,
            max_connections_per_identity: server.max_connections_per_identity,
            max_calls_per_identity: server.max_calls_per_identity,
            trusted_proxies,
        })
    }
}

/// The defaults of `[server]`, which names no proxies.
impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&ServerConfig::default())
            .unwrap_or_else(|e| unreachable!("the default server config has no proxies: {e}"))
    }
}

type Owner = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Counts {
    total: usize,
    by_identity: HashMap<Owner, usize>,
}

/// Open sessions, counted in total and per identity.
#[derive(Clone, Default)]
pub(crate) struct SessionCounts(Arc<Mutex<Counts>>);

/// One counted session; dropping it gives the slot back.
pub(crate) struct SessionSlot {
    counts: SessionCounts,
    owner: Owner,
}

impl SessionCounts {
    /// Takes a slot for a session of `id`, or says which limit is reached.
    pub fn take(&self, id: &Identity, limits: &Limits) -> Result<SessionSlot, Status> {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= limits.max_sessions {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "the server holds {} sessions, its limit (server.max_sessions); retry later",
                    limits.max_sessions
                ),
            ));
        }
        let owner: Owner = (id.user_id.clone(), id.workspace_id.clone());
        let n = c.by_identity.entry(owner.clone()).or_default();
        if *n >= limits.max_sessions_per_identity {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "this user already has {} open sessions, the limit (server.max_sessions_per_identity); close one first",
                    limits.max_sessions_per_identity
                ),
            ));
        }
        *n += 1;
        c.total += 1;
        Ok(SessionSlot {
            counts: self.clone(),
            owner,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.by_identity.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                c.by_identity.remove(&self.owner);
            }
        }
    }
}
