//! Writes made on a node that follows a view, forwarded to the view's
//! owner so its next version includes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::state::*;
use crate::engine::{Change, View};

/// The last token of a request subject naming a write rather than a view.
pub(super) const WRITE: &str = "write";

impl ViewOwners {
    /// Sends a mutation's changes to the owners of the `followed` views and
    /// waits (at most `owner_wait_ms`) until each copy reaches the version
    /// its owner reports once it applied them.
    pub(super) async fn forward(&self, changes: Vec<Change>, followed: Vec<Arc<View>>) {
        let bus = &self.shared.bus;
        let mut by_owner: HashMap<String, Vec<(String, Arc<View>)>> = HashMap::new();
        for v in followed {
            let hash = view_hash(&v);
            let holder = bus.leases.get(lease_key(&hash)).await.ok().flatten();
            if let Some(owner) = holder.map(|b| String::from_utf8_lossy(&b).into_owned()) {
                by_owner.entry(owner).or_default().push((hash, v));
            }
        }
        let batch = Bytes::from(crate::cluster::wire::encode(
            &crate::engine::ChangeBatch::new(changes, None),
        ));
        let wait = Duration::from_millis(bus.config.owner_wait_ms);
        let deadline = Instant::now() + wait;
        for (owner, views) in by_owner {
            let subject = format!("{}.{owner}.{WRITE}", bus.config.snapshot_subject);
            let reply =
                tokio::time::timeout(wait, bus.client.request(subject, batch.clone())).await;
            let Ok(Ok(reply)) = reply else { continue };
            let versions: HashMap<String, (u64, u64)> = String::from_utf8_lossy(&reply.payload)
                .lines()
                .filter_map(|l| {
                    let mut p = l.split(' ');
                    Some((
                        p.next()?.to_owned(),
                        (p.next()?.parse().ok()?, p.next()?.parse().ok()?),
                    ))
                })
                .collect();
            for (hash, v) in views {
                let Some(&(epoch, version)) = versions.get(&hash) else {
                    continue;
                };
                while v.epoch() == epoch
                    && v.version() < version
                    && v.is_follower()
                    && !v.is_closed()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
}

/// Applies a write another node forwarded, then answers with the epoch and
/// version of each view this node owns (`<hash> <epoch> <version>` lines).
pub(super) async fn apply_write(owners: ViewOwners, payload: Bytes) -> Bytes {
    let Some(engine) = owners.shared.engine.upgrade() else {
        return Bytes::new();
    };
    if let Ok(batch) = crate::cluster::wire::decode(&payload) {
        if let Err(e) = engine.notify(batch.changes).await {
            tracing::debug!(error = %e, "a forwarded write was not applied");
        }
    }
    let owned: Vec<(String, Arc<View>)> = owners
        .owned()
        .iter()
        .filter_map(|(h, o)| Some((h.clone(), o.view.upgrade()?)))
        .collect();
    let mut out = String::new();
    for (h, v) in owned {
        out.push_str(&format!("{h} {} {}\n", v.epoch(), v.version()));
    }
    out.into()
}
