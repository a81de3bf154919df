//! Connection, stream and session limits of the server, and the count of
//! open sessions they are checked against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Status};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_streams_per_connection: 128,
            max_sessions_per_identity: 64,
            max_sessions: 65_536,
            max_sync_views: 200,
        }
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
