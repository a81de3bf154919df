//! Pull: committed changes after per-scope sequences, in sequence order,
//! bounded by rows and bytes; with `follow`, more as they commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::{Code, Status};

use super::follow::ANY;
use super::quota::{Held, Over};
use super::scopes::{check_own, scopes_of};
use super::state::{db_status, read_rows, Offline};
use crate::engine::Identity;
use crate::ops::offline_metrics::{self, FollowOpen};
use crate::proto::{self as pb, pull_response::Kind, IntentOp};
use crate::wire::status::status;

/// One read of the log: a batch, or the news that a scope must snapshot.
/// What one pull asks for besides positions: its limits per batch, and the
/// tables it wants (empty: all).
#[derive(Clone, Debug)]
pub struct Shape {
    /// Most changes per batch.
    pub max_rows: usize,
    /// Most bytes of changes per batch (one change always goes).
    pub max_bytes: usize,
    /// Only these tables' changes; empty: every table.
    pub tables: Vec<String>,
}

pub async fn pull_once(
    o: &Offline,
    who: &Identity,
    after: &BTreeMap<String, u64>,
    shape: &Shape,
) -> Result<pb::PullResponse, Status> {
    let (max_rows, max_bytes) = (shape.max_rows, shape.max_bytes);
    let mut c = o.conn().await?;
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| db_status("starting the pull", e))?;
    // As the caller: row-level security, statement_timeout, eval_role.
    super::scopes::enter(o, &tx, who).await?;
    let failed = |e| db_status("reading the change log", e);
    let scopes: Vec<&String> = after.keys().collect();
    let positions: Vec<i64> = after.values().map(|&s| s as i64).collect();
    // Each scope's last sequence in this snapshot: where a pull that saw
    // every change it wanted stands, other tables' changes included.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in tx
        .query(
            "SELECT scope, floor, floor_reason, seq FROM arcana_offline.scopes WHERE scope = ANY($1)",
            &[&scopes],
        )
        .await
        .map_err(failed)?
    {
        let scope: String = r.get(0);
        let floor = r.get::<_, i64>(1) as u64;
        last.insert(scope.clone(), r.get::<_, i64>(3) as u64);
        if after.get(&scope).is_some_and(|&a| a < floor) {
            offline_metrics::snapshot_required();
            return Ok(pb::PullResponse {
                kind: Some(Kind::SnapshotRequired(pb::SnapshotRequired {
                    scope,
                    retained_floor: floor,
                    reason: r.get(2),
                })),
            });
        }
    }
    let entries = tx
        .query(
            "SELECT c.scope, c.seq, c.tbl, c.id, c.op, c.client_id, c.bundle_id, c.xid \
             FROM unnest($1::text[], $2::int8[]) AS a(scope, after) \
             CROSS JOIN LATERAL (SELECT * FROM arcana_offline.changes c \
                 WHERE c.scope = a.scope AND c.seq > a.after \
                 AND (cardinality($4::text[]) = 0 OR c.tbl = ANY($4)) ORDER BY c.seq LIMIT $3) c \
             ORDER BY c.scope, c.seq",
            &[&scopes, &positions, &(max_rows as i64 + 1), &shape.tables],
        )
        .await
        .map_err(failed)?;
    // A batch ends between transactions: one cut by the row limit ends
    // the batch before it, unless it began the batch, when the rest of it
    // comes along (up to WHOLE_MAX changes).
    let mut n = entries.len().min(max_rows);
    let mut rest = Vec::new();
    if n < entries.len() && tx_of(&entries[n - 1]) == tx_of(&entries[n]) {
        let split = tx_of(&entries[n]);
        let start = (0..n)
            .rev()
            .take_while(|&i| tx_of(&entries[i]) == split)
            .last()
            .unwrap_or(n);
        if start > 0 {
            n = start;
        } else {
            rest = tx
                .query(
                    "SELECT c.scope, c.seq, c.tbl, c.id, c.op, c.client_id, c.bundle_id, c.xid \
                     FROM arcana_offline.changes c WHERE c.scope = $1 AND c.xid = $2 AND c.seq > $3 \
                     AND (cardinality($4::text[]) = 0 OR c.tbl = ANY($4)) ORDER BY c.seq LIMIT $5",
                    &[
                        &split.0,
                        &split.1,
                        &entries[n - 1].get::<_, i64>(1),
                        &shape.tables,
                        &(WHOLE_MAX.saturating_sub(n) as i64),
                    ],
                )
                .await
                .map_err(failed)?;
        }
    }
    let taken: Vec<&tokio_postgres::Row> = entries[..n].iter().chain(&rest).collect();
    // The rows as they stand now, in this same snapshot.
    let mut tbls = Vec::new();
    let mut ids = Vec::new();
    for e in &taken {
        tbls.push(e.get::<_, String>(2));
        ids.push(e.get::<_, String>(3));
    }
    let meta = tx
        .query(
            "SELECT tbl, id, key, version, deleted, scope FROM arcana_offline.rows \
             WHERE (tbl, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&tbls, &ids],
        )
        .await
        .map_err(failed)?;
    let mut state: HashMap<(String, String), (u64, bool, String)> = HashMap::new();
    let mut wanted: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for m in &meta {
        let (tbl, id): (String, String) = (m.get(0), m.get(1));
        let deleted: bool = m.get(4);
        if !deleted {
            wanted.entry(tbl.clone()).or_default().push(m.get(2));
        }
        state.insert((tbl, id), (m.get::<_, i64>(3) as u64, deleted, m.get(5)));
    }
    let mut values = HashMap::new();
    for (tbl, keys) in &wanted {
        if let Some(t) = o.table(tbl) {
            let rows = read_rows(&tx, t, keys).await.map_err(failed)?;
            for (id, r) in rows {
                values.insert((tbl.clone(), id), r.values);
            }
        }
    }
    let mut changes = Vec::with_capacity(taken.len());
    // The transaction of each change, to end a batch cut by size between
    // transactions too.
    let mut txs: Vec<(String, i64)> = Vec::with_capacity(taken.len());
    let mut bytes = 0usize;
    let mut cut = false;
    for e in &taken {
        let scope: String = e.get(0);
        let seq = e.get::<_, i64>(1) as u64;
        let (tbl, id): (String, String) = (e.get(2), e.get(3));
        let op: i16 = e.get(4);
        let (version, deleted, now_scope) = state
            .get(&(tbl.clone(), id.clone()))
            .cloned()
            .unwrap_or((0, true, String::new()));
        let current = values.get(&(tbl.clone(), id.clone()));
        // A change carries the row as it stands: a row since deleted or
        // moved out of the scope reads as a delete here. A moved row is
        // marked, so a device holding it through its new scope keeps it.
        let moved_out = !deleted && now_scope != scope;
        let (op, vals) = match current {
            Some(v) if !deleted && now_scope == scope => (
                if op == 3 {
                    IntentOp::Insert
                } else {
                    IntentOp::try_from(i32::from(op)).unwrap_or(IntentOp::Update)
                },
                v.clone(),
            ),
            _ => (IntentOp::Delete, HashMap::new()),
        };
        let change = pb::RowChange {
            scope: scope.clone(),
            sequence: seq,
            table: tbl,
            id,
            op: op as i32,
            values: vals,
            version,
            source_client_id: e.get::<_, Option<String>>(5).unwrap_or_default(),
            source_bundle_id: e.get::<_, Option<i64>>(6).unwrap_or(0) as u64,
            moved_out,
        };
        let len = change.encoded_len();
        let this = tx_of(e);
        if !changes.is_empty() && bytes + len > max_bytes {
            let start = txs.iter().rposition(|t| *t != this).map_or(0, |i| i + 1);
            if txs.last() != Some(&this) {
                // Cut between two transactions.
                cut = true;
                break;
            }
            if start > 0 {
                // Cut before the transaction this change continues.
                changes.truncate(start);
                cut = true;
                break;
            }
            // One transaction alone is past the size limit: it comes whole.
        }
        bytes += len;
        txs.push(this);
        changes.push(change);
    }
    let mut through: BTreeMap<String, u64> = after.clone();
    for c in &changes {
        through.insert(c.scope.clone(), c.sequence);
    }
    let has_more = cut || !rest.is_empty() || entries.len() > n;
    if !has_more {
        // Everything wanted is in: skip the other tables' changes too.
        for (scope, seq) in last {
            let at = through.entry(scope).or_default();
            *at = (*at).max(seq);
        }
    }
    offline_metrics::pulled(changes.len());
    Ok(pb::PullResponse {
        kind: Some(Kind::Changes(pb::ChangeBatch {
            changes,
            through: through
                .into_iter()
                .map(|(scope, sequence)| pb::ScopeSequence { scope, sequence })
                .collect(),
            has_more,
        })),
    })
}

/// A follow stream's places (per client and identity) and its count in
/// the open-follows gauge, all given back when the stream ends.
pub type Following = (Held, FollowOpen);

/// Most changes of one transaction in one scope sent in one batch past the
/// batch's limits; a larger transaction comes in batches of this many.
const WHOLE_MAX: usize = 10_000;

/// The scope and transaction of a change-log row.
fn tx_of(r: &tokio_postgres::Row) -> (String, i64) {
    (r.get(0), r.get(7))
}

/// Takes a follow place of `client_id` and of `id`, if both have one free;
/// it is given back when the stream ends.
pub fn take_follow(o: &Offline, id: &Identity, client_id: &str) -> Result<Following, Status> {
    let cfg = &o.inner.cfg;
    o.inner
        .follows
        .take(
            id,
            client_id,
            cfg.max_follows_per_client,
            cfg.max_follows_per_identity,
        )
        .map(|held| (held, FollowOpen::new()))
        .map_err(|over| {
            let text = match over {
                Over::Client(n) => format!(
                    "client `{client_id}` already has {n} follow streams open (offline.max_follows_per_client): close one first"
                ),
                Over::Identity(m) => format!(
                    "this user already has {m} follow streams open (offline.max_follows_per_identity): close one first"
                ),
            };
            status(Code::ResourceExhausted, text)
        })
}

/// Streams batches into `tx` until caught up; then, when following, waits
/// for commits of the stream's scopes and streams again.
pub async fn run(
    o: Offline,
    who: Identity,
    mut after: BTreeMap<String, u64>,
    shape: Shape,
    follow: Option<Following>,
    tx: mpsc::Sender<Result<pb::PullResponse, Status>>,
) {
    // Subscribed before the first read, so no commit falls in between.
    let mut commits = o.inner.commits.subscribe();
    let mut first = true;
    let sql_buckets = o.inner.tables.iter().any(|t| t.scopes_sql.is_some());
    loop {
        // A caller may have lost a SQL bucket since the last read: the
        // stream ends rather than deliver it further.
        let r = if !first && sql_buckets {
            match scopes_of(&o, &who).await {
                Ok(mine) => match check_own(&mine, after.keys()) {
                    Ok(()) => pull_once(&o, &who, &after, &shape).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        } else {
            pull_once(&o, &who, &after, &shape).await
        };
        let (more, stop) = match &r {
            Err(_) => (false, true),
            Ok(pb::PullResponse {
                kind: Some(Kind::Changes(b)),
            }) => {
                for s in &b.through {
                    after.insert(s.scope.clone(), s.sequence);
                }
                (b.has_more, false)
            }
            Ok(_) => (false, true),
        };
        let empty = matches!(&r, Ok(pb::PullResponse { kind: Some(Kind::Changes(b)) }) if b.changes.is_empty());
        // A follow stream says nothing when a wake-up found nothing new.
        if (first || !empty || stop) && tx.send(r).await.is_err() {
            return;
        }
        first = false;
        if stop {
            return;
        }
        if more {
            continue;
        }
        if follow.is_none() {
            return;
        }
        if !wait(&mut commits, &after, &tx).await {
            return;
        }
    }
}

/// Waits for a commit of one of `after`'s scopes; false when the stream or
/// the listener is gone.
async fn wait(
    commits: &mut broadcast::Receiver<Arc<str>>,
    after: &BTreeMap<String, u64>,
    tx: &mpsc::Sender<Result<pb::PullResponse, Status>>,
) -> bool {
    loop {
        tokio::select! {
            r = commits.recv() => match r {
                Ok(s) if &*s == ANY || after.contains_key(&*s) => return true,
                Ok(_) => {}
                // Missed some: look anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            _ = tx.closed() => return false,
        }
    }
}
