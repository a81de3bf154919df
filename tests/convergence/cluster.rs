//! The servers of a schedule: one `arcana serve`, or a cluster of several
//! nodes on the same database sharing the replication slot through the
//! change source lease, and one real nats-server with JetStream. Every
//! process is killed when this is dropped, a failed or panicking schedule
//! included.

use std::path::Path;
use std::time::Duration;

use super::model::{self, Axes};
use super::nats::Nats;
use super::server::Server;

/// How long a lease lives unrenewed: short, so a dead leader or view owner
/// is replaced within a couple of seconds.
pub const LEASE_TTL_MS: u64 = 1500;

/// The KV bucket holding the leases (the server's default).
const LEASE_BUCKET: &str = "arcana_leases";

/// The nodes of one schedule.
pub struct Nodes {
    pub servers: Vec<Server>,
    /// Each node's `cluster.node_id` now.
    ids: Vec<String>,
    /// Each node's config as it was first written, and how many times it
    /// was started.
    configs: Vec<(std::path::PathBuf, String)>,
    starts: Vec<u32>,
    /// A node started again takes a new `cluster.node_id`.
    fresh_ids: bool,
    nats: Option<Nats>,
    db_url: String,
    slot: String,
}

impl Nodes {
    /// Writes each node's config into `dir` and starts `n` nodes (one
    /// plain server when `n` is 1). With `fresh_ids`, a node started
    /// again comes back under a new `cluster.node_id` (as with the
    /// default, random one); otherwise under the same.
    pub async fn start(
        dir: &Path,
        n: usize,
        fresh_ids: bool,
        axes: &Axes,
        tag: &str,
        db_url: &str,
    ) -> Result<Nodes, String> {
        let base = model::config_toml(axes, tag);
        // Blocking, but short (the port answers within milliseconds).
        let nats = (n > 1).then(|| tokio::task::block_in_place(Nats::start));
        let mut nodes = Nodes {
            servers: Vec::new(),
            ids: Vec::new(),
            configs: Vec::new(),
            starts: vec![1; n],
            fresh_ids,
            nats,
            db_url: db_url.to_owned(),
            slot: tag.to_owned(),
        };
        for i in 1..=n {
            let (name, config) = match &nodes.nats {
                None => ("server".to_owned(), base.clone()),
                Some(nats) => {
                    let id = format!("n{i}");
                    let cluster = format!(
                        "\n[cluster]\nnats_url = \"{}\"\nnode_id = \"{id}\"\nlease_ttl_ms = {LEASE_TTL_MS}\n\
                         lease_bucket = \"{LEASE_BUCKET}\"\nview_owners = true\n",
                        nats.url()
                    );
                    (id, format!("{base}{cluster}"))
                }
            };
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, &config).map_err(|e| e.to_string())?;
            nodes.configs.push((path.clone(), config));
            nodes
                .servers
                .push(Server::new(dir, &name, path, db_url.to_owned()));
            nodes.ids.push(name);
        }
        for s in &mut nodes.servers {
            s.start().await?;
        }
        Ok(nodes)
    }

    /// Starts node `i` again (after a kill or a stop), under a new node id
    /// when the nodes take fresh ids.
    pub async fn start_node(&mut self, i: usize) -> Result<(), String> {
        if self.fresh_ids && self.nats.is_some() {
            self.starts[i] += 1;
            let id = format!("n{}-{}", i + 1, self.starts[i]);
            let (path, config) = &self.configs[i];
            // The config as first written names the node `n<i+1>`.
            let config = config.replace(
                &format!("node_id = \"n{}\"", i + 1),
                &format!("node_id = \"{id}\""),
            );
            std::fs::write(path, config).map_err(|e| e.to_string())?;
            self.ids[i] = id;
        }
        self.servers[i].start().await
    }

    /// Node `i`'s current node id.
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// Every node's gRPC address (a restarted node keeps its own).
    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.servers.len()
    }

    /// Where a node's log is.
    pub fn logs(&self) -> String {
        let logs: Vec<String> = self
            .servers
            .iter()
            .map(|s| s.log.display().to_string())
            .collect();
        logs.join(", ")
    }

    /// The node holding the change source lease, from the lease bucket, or
    /// else from the connection streaming from the replication slot
    /// (`application_name` is `arcana-<node_id>`). `None` when no node
    /// holds it right now (a failover in progress, notify mode between
    /// leaders).
    pub async fn leader(&self) -> Option<usize> {
        let nats = self.nats.as_ref()?;
        let by_name = |holder: &str| {
            self.ids.iter().position(|id| holder == id).or_else(|| {
                // Tolerates a richer value that quotes the node id.
                self.ids
                    .iter()
                    .position(|id| holder.contains(&format!("\"{id}\"")))
            })
        };
        if let Ok(Some(holder)) = lease_holder(&nats.url()).await {
            if let Some(i) = by_name(&holder) {
                return Some(i);
            }
        }
        let holder = slot_holder(&self.db_url, &self.slot).await?;
        by_name(holder.strip_prefix("arcana-")?)
    }

    /// Kills nats-server (SIGKILL), waits `pause`, and starts it again on
    /// the same port and store.
    pub async fn restart_nats(&mut self, pause: Duration) {
        let Some(nats) = self.nats.as_mut() else {
            return;
        };
        tokio::task::block_in_place(|| nats.stop());
        tokio::time::sleep(pause).await;
        tokio::task::block_in_place(|| nats.start_again());
    }

    /// Kills nats-server (SIGKILL) for longer than a lease lives, restarting
    /// PostgreSQL meanwhile when `pg` is given; starts it again on the same
    /// port and store.
    pub async fn nats_outage(
        &mut self,
        away: Duration,
        pg: Option<&std::sync::Arc<std::sync::Mutex<arcana::postgres::embedded::EmbeddedPostgres>>>,
    ) -> Result<(), String> {
        let Some(nats) = self.nats.as_mut() else {
            return Ok(());
        };
        tokio::task::block_in_place(|| nats.stop());
        let started = tokio::time::Instant::now();
        if let Some(pg) = pg {
            tokio::time::sleep(away / 3).await;
            let pg = pg.clone();
            tokio::task::spawn_blocking(move || pg.lock().unwrap().restart())
                .await
                .map_err(|e| e.to_string())??;
        }
        tokio::time::sleep(away.saturating_sub(started.elapsed())).await;
        let nats = self.nats.as_mut().expect("checked above");
        tokio::task::block_in_place(|| nats.start_again());
        Ok(())
    }

    /// Stops every node gracefully, all at once.
    pub async fn stop(&mut self) {
        futures_util::future::join_all(self.servers.iter_mut().map(|s| s.stop())).await;
    }
}

/// The value of the change source lease; `None` when nobody holds it.
async fn lease_holder(nats_url: &str) -> Result<Option<String>, String> {
    let limit = Duration::from_secs(2);
    let read = async {
        let client = async_nats::connect(nats_url)
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let kv = js
            .get_key_value(LEASE_BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        let v = kv.get("changes").await.map_err(|e| e.to_string())?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| "the lease bucket did not answer".to_owned())?
}

/// The `application_name` of the connection streaming from `slot`.
async fn slot_holder(db_url: &str, slot: &str) -> Option<String> {
    let (c, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let rows = c
        .query(
            "SELECT a.application_name FROM pg_replication_slots s \
             JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1 AND s.active",
            &[&slot],
        )
        .await
        .ok()?;
    rows.first().map(|r| r.get(0))
}
