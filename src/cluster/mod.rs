//! Running as one node of a cluster: several Arcana servers share one
//! PostgreSQL and one NATS server with JetStream.
//!
//! One node at a time holds the change source lease (`lease.rs`) and reads
//! changes from PostgreSQL; it publishes each transaction to the change
//! stream (`publish.rs`), and confirms the WAL position only once the stream
//! has stored it. Every node, the leader included, consumes the stream into
//! its own engine (`consume.rs`), so a write reaches subscribers on every
//! node. Mutations still invalidate locally at once; their changes arriving
//! again from the stream only re-evaluate. With `view_owners`, each view is
//! evaluated on one node and followed on the others (`views.rs`).

pub mod bus;
pub mod consume;
pub mod kept;
pub mod lease;
pub mod link;
pub mod publish;
pub mod startup;
pub mod terms;
pub mod views;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::engine::Engine;
pub use bus::Bus;
pub use lease::{Lease, Renewal, SourceStarter};

/// This server's membership in the cluster.
pub struct Node {
    /// The node's name.
    pub node_id: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    leader: Arc<AtomicBool>,
    consuming: Arc<AtomicBool>,
}

impl Node {
    /// Connects to NATS, starts consuming the change stream from its end,
    /// and starts competing for the change source lease. Fails when NATS
    /// cannot be reached or JetStream refuses the stream or bucket.
    pub async fn start(
        config: &ClusterConfig,
        engine: Engine,
        source: SourceStarter,
    ) -> Result<Node, String> {
        let bus = Bus::connect(config).await?;
        // Views evaluated from now on already see everything committed
        // before: only batches published after this point matter.
        let next = bus.last_sequence().await? + 1;
        let (stop, stopped) = watch::channel(false);
        let leader = Arc::new(AtomicBool::new(false));
        let consuming = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        // Every node consumes the stream, so a Notify call reaches them all.
        engine.set_broadcast(Arc::new(publish::StreamSink::new(bus.clone())));
        if config.view_owners {
            let history = engine.config().history_len;
            let (owners, t) =
                views::ViewOwners::start(bus.clone(), engine.downgrade(), history, stopped.clone())
                    .await?;
            engine.set_owners(Arc::new(owners));
            tasks.extend(t);
        }
        tasks.extend([
            tokio::spawn(link::run(
                bus.clone(),
                engine.downgrade(),
                consuming.clone(),
                stopped.clone(),
            )),
            tokio::spawn(consume::run(
                bus.clone(),
                engine,
                next,
                consuming.clone(),
                stopped.clone(),
            )),
            tokio::spawn(lease::run(bus, source, leader.clone(), stopped)),
        ]);
        tracing::info!(node = %config.node_id, nats = %config.nats_url, "joined the cluster");
        Ok(Node {
            node_id: config.node_id.clone(),
            stop,
            tasks,
            leader,
            consuming,
        })
    }

    /// Whether this node holds the change source lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// True while this node consumes the change stream.
    pub fn consuming(&self) -> Arc<AtomicBool> {
        self.consuming.clone()
    }

    /// Stops the change source (handing the lease back) and the consumer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
