//! Watches this node's link to the cluster. A node cut off from NATS for
//! longer than a lease gets no changes and has lost its leases, so its views
//! fall behind while other nodes take them over: it ends its sessions with
//! UNAVAILABLE (clients reconnect to another node and Sync there) and refuses
//! new ones until the link is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use tokio::sync::watch;
use tokio::time::Instant;

use super::bus::Bus;
use crate::engine::WeakEngine;

/// What clients are told while the node is cut off.
pub const CUT_OFF: &str =
    "this node lost its connection to the cluster: reconnect to another node and Sync your views";

/// Runs until `stopped`.
pub async fn run(
    bus: Bus,
    engine: WeakEngine,
    consuming: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let grace = Duration::from_millis(bus.config.lease_ttl_ms);
    let mut lost: Option<Instant> = None;
    let mut away = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let linked = bus.client.connection_state() == State::Connected;
        if linked {
            lost = None;
            // Back once changes flow again.
            if away && consuming.load(Ordering::Relaxed) {
                away = false;
                tracing::info!("the cluster link is back; serving sessions again");
                engine.set_away(None);
            }
            continue;
        }
        let since = *lost.get_or_insert_with(Instant::now);
        if !away && since.elapsed() >= grace {
            away = true;
            tracing::warn!(after = ?grace, "cut off from the cluster; ending sessions so clients move");
            engine.set_away(Some(CUT_OFF.into()));
        }
    }
}
