//! The offline service's metrics, recorded where things happen (pushes,
//! pulls, snapshots, retention) into process-wide counters that every
//! [`super::metrics::Exporter`] registers under `arcana_offline_*`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The bundle committed.
    Applied,
    /// The bundle had committed before: its stored result was sent again.
    Replayed,
    /// A conflict under the `reject` policy refused the whole bundle.
    Refused,
    /// The push failed with an error status; nothing applied.
    Failed,
}

/// How a conflict (a write whose base version is not the row's) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The bundle was refused (`reject`).
    Refused,
    /// The server's row stands (`server_wins`, or an older client time
    /// under `last_writer_wins`).
    ServerKept,
    /// The write applied over the newer row (`last_writer_wins`).
    ClientApplied,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConflictLabel {
    policy: &'static str,
    resolution: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Default)]
struct Offline {
    pushes: Family<OutcomeLabel, Counter>,
    pushed_rows: Counter,
    conflicts: Family<ConflictLabel, Counter>,
    pulls: Family<OutcomeLabel, Counter>,
    pulled_changes: Counter,
    follows_open: Gauge,
    snapshot_rows: Counter,
    floor_raises: Family<ReasonLabel, Counter>,
    pruned_changes: Counter,
}

static OFFLINE: LazyLock<Offline> = LazyLock::new(Offline::default);

/// A push ended as `outcome`, with `rows` intents applied.
pub fn push(outcome: PushOutcome, rows: usize) {
    let outcome = match outcome {
        PushOutcome::Applied => "applied",
        PushOutcome::Replayed => "replayed",
        PushOutcome::Refused => "refused",
        PushOutcome::Failed => "failed",
    };
    OFFLINE
        .pushes
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    OFFLINE.pushed_rows.inc_by(rows as u64);
}

/// A conflict under `policy` (its config name) ended as `resolution`.
pub fn conflict(policy: &'static str, resolution: Resolution) {
    let resolution = match resolution {
        Resolution::Refused => "refused",
        Resolution::ServerKept => "server_kept",
        Resolution::ClientApplied => "client_applied",
    };
    OFFLINE
        .conflicts
        .get_or_create(&ConflictLabel { policy, resolution })
        .inc();
}

/// A pull batch (a `Pull` call or one batch of a follow stream) carried
/// `changes` changes.
pub fn pulled(changes: usize) {
    OFFLINE
        .pulls
        .get_or_create(&OutcomeLabel { outcome: "changes" })
        .inc();
    OFFLINE.pulled_changes.inc_by(changes as u64);
}

/// A pull from below a scope's retained floor: the device must snapshot.
pub fn snapshot_required() {
    OFFLINE
        .pulls
        .get_or_create(&OutcomeLabel {
            outcome: "snapshot_required",
        })
        .inc();
}

/// A snapshot chunk of `rows` rows was read.
pub fn snapshot_rows(rows: usize) {
    OFFLINE.snapshot_rows.inc_by(rows as u64);
}

/// Retention raised a scope's floor (`reason`: `age`, `count` or
/// `compacted`), pruning up to `pruned` changes.
pub fn floor_raised(reason: &'static str, pruned: u64) {
    OFFLINE
        .floor_raises
        .get_or_create(&ReasonLabel { reason })
        .inc();
    OFFLINE.pruned_changes.inc_by(pruned);
}

/// Counts an open follow stream until dropped.
pub struct FollowOpen(());

impl FollowOpen {
    /// A follow stream opened.
    pub fn new() -> FollowOpen {
        OFFLINE.follows_open.inc();
        FollowOpen(())
    }
}

impl Default for FollowOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FollowOpen {
    fn drop(&mut self) {
        OFFLINE.follows_open.dec();
    }
}

/// Registers the offline metrics in `r` (prefixed `arcana_`).
pub(crate) fn register(r: &mut Registry) {
    let o = &*OFFLINE;
    r.register(
        "offline_pushes",
        "Offline pushes by outcome (applied, replayed, refused, failed)",
        o.pushes.clone(),
    );
    r.register(
        "offline_pushed_rows",
        "Row intents of applied offline bundles",
        o.pushed_rows.clone(),
    );
    r.register(
        "offline_conflicts",
        "Offline writes against a newer row, by table policy and resolution",
        o.conflicts.clone(),
    );
    r.register(
        "offline_pulls",
        "Offline pull batches (Pull calls and follow batches), by outcome",
        o.pulls.clone(),
    );
    r.register(
        "offline_pulled_changes",
        "Changes sent by offline pulls and follows",
        o.pulled_changes.clone(),
    );
    r.register(
        "offline_follows_open",
        "Open offline follow streams",
        o.follows_open.clone(),
    );
    r.register(
        "offline_snapshot_rows",
        "Rows read for offline snapshots",
        o.snapshot_rows.clone(),
    );
    r.register(
        "offline_floor_raises",
        "Times retention raised a scope's floor (devices below it must snapshot), by reason",
        o.floor_raises.clone(),
    );
    r.register(
        "offline_pruned_changes",
        "Change log entries pruned by retention",
        o.pruned_changes.clone(),
    );
}
