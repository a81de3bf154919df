//! `[cluster]`.

use serde::Deserialize;

/// `[cluster]`: nodes sharing one PostgreSQL and one NATS server with
/// JetStream. One node at a time (the holder of a lease) reads the change
/// stream from PostgreSQL and publishes it; every node consumes it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name in the cluster (leases, logs, the replication
    /// connection's `application_name`); default: random.
    pub node_id: String,
    /// How long a lease lives without renewal, in milliseconds; the holder
    /// renews it every third of that. A dead leader is replaced after at
    /// most this long.
    pub lease_ttl_ms: u64,
    /// The JetStream key-value bucket holding the leases.
    pub lease_bucket: String,
    /// The JetStream stream carrying change batches.
    pub changes_stream: String,
    /// The subject change batches are published on.
    pub changes_subject: String,
    /// How long the stream remembers a batch's id to drop a republished
    /// one (a new leader replaying the WAL), in milliseconds.
    pub duplicate_window_ms: u64,
    /// How long the stream keeps batches, in seconds: a node that was cut
    /// off from NATS for longer refreshes every view when it comes back.
    pub stream_max_age_s: u64,
    /// Most bytes the stream keeps (oldest dropped first).
    pub stream_max_bytes: i64,
    /// Largest batch published as is, in bytes; a larger transaction is
    /// published as "refresh every view" (NATS refuses messages over its
    /// `max_payload`, which lowers this limit further).
    pub max_batch_bytes: usize,
    /// Evaluate each view on one node (its owner, by a lease) and send its
    /// frames to the other nodes through JetStream, so every node shows
    /// the same epochs and versions (default). Off: every node evaluates
    /// the views its own clients hold.
    pub view_owners: bool,
    /// The JetStream stream keeping each owned view's latest frames.
    pub frames_stream: String,
    /// The subject prefix of views' frames (`<prefix>.<view hash>`).
    pub frames_subject: String,
    /// The subject prefix on which a node asks a view's owner for its
    /// snapshot (`<prefix>.<owner node>.<view hash>`).
    pub snapshot_subject: String,
    /// How long the frames stream keeps a frame, in seconds.
    pub frames_max_age_s: u64,
    /// The JetStream object store bucket holding each view's checkpoint
    /// (its last state, for the next owner to go on from).
    pub checkpoint_bucket: String,
    /// The checkpoint bucket's size limit in bytes (-1: no limit).
    pub checkpoint_max_bytes: i64,
    /// Checkpoints waiting to be written, at most; past it a view goes
    /// without a newer one (a node taking it over may then start a new
    /// epoch, which sends snapshots).
    pub checkpoint_queue: usize,
    /// Frames of owned views waiting to be published or for the stream to
    /// store them, at most; past it a frame is not published (its
    /// followers resync from the owner, a node taking the view over goes
    /// on from its checkpoint in a new term), so a slow NATS holds no
    /// more than this.
    pub publish_queue: usize,
    /// The JetStream key-value bucket holding each view's last claimed
    /// term (a new owner's versions start a term no other node used).
    pub terms_bucket: String,
    /// The terms bucket's size limit in bytes: one small key per view ever
    /// taken over. When it is full claims fail: a view resumed from a
    /// checkpoint starts a new epoch, a follower retries at its next check.
    pub terms_max_bytes: i64,
    /// How long a node waits for a view's owner before failing a
    /// subscribe, in milliseconds (added to `lease_ttl_ms`, so a dead
    /// owner's lease can expire meanwhile).
    pub owner_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            node_id: format!("node-{:08x}", rand::random::<u32>()),
            lease_ttl_ms: 5000,
            lease_bucket: "arcana_leases".into(),
            changes_stream: "ARCANA_CHANGES".into(),
            changes_subject: "arcana.changes".into(),
            duplicate_window_ms: 120_000,
            stream_max_age_s: 86_400,
            stream_max_bytes: 1 << 30,
            max_batch_bytes: 1 << 20,
            view_owners: true,
            frames_stream: "ARCANA_FRAMES".into(),
            frames_subject: "arcana.frames".into(),
            snapshot_subject: "arcana.snapshots".into(),
            frames_max_age_s: 3600,
            checkpoint_bucket: "ARCANA_VIEWS".into(),
            checkpoint_max_bytes: 1 << 30,
            checkpoint_queue: 4096,
            publish_queue: 16_384,
            terms_bucket: "arcana_terms".into(),
            terms_max_bytes: 64 << 20,
            owner_wait_ms: 5000,
        }
    }
}
