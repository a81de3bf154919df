//! Snapshot: every live row of the caller's scopes, in chunks by keyset on
//! (table, id), from one REPEATABLE READ transaction frozen at the scopes'
//! sequences. The chunks go through a small bounded channel, so the server
//! holds one chunk at a time however large the scope.
//!
//! The cursor carries the frozen sequences and the position. A resumed
//! snapshot reads the rows as they stand at resume time (the first
//! transaction is gone), from the position on; the device then pulls from
//! the frozen sequences, and the changes it pulls carry rows as they stand,
//! so it ends with the same rows as an uninterrupted snapshot would give.
//!
//! The server resumes that way by itself when a reader stalls: after
//! `offline.snapshot_stall_ms` without room in the channel it gives its
//! transaction and connection back, and opens a new transaction at the
//! position once the reader takes a chunk. Every transaction runs under the
//! caller's identity, like pushes, graphs and mutations.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::quota::{Held, Over};
use super::state::{db_status, read_rows, Offline};
use crate::engine::Identity;
use crate::proto as pb;
use crate::wire::status::status;

/// Where a snapshot stands.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Cursor {
    /// The sequences the snapshot is frozen at.
    pub at: BTreeMap<String, u64>,
    /// The last (table, id) sent.
    pub tbl: String,
    /// See `tbl`.
    pub id: String,
}

impl Cursor {
    /// The cursor as sent: base64 of its JSON, a dot, and base64 of an
    /// HMAC-SHA256 of that JSON under the server's key.
    fn encode(&self, key: &[u8]) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(mac(key, &json).finalize().into_bytes())
        )
    }

    /// Reads a cursor a client passed back; one whose signature does not
    /// match (forged, altered, or from another server key) is refused.
    pub fn decode(s: &str, key: &[u8]) -> Result<Cursor, Status> {
        let refused = || {
            status(
                Code::InvalidArgument,
                "cursor is not one this server issued: pass the cursor of the last chunk received, or none to start over",
            )
        };
        let (body, sig) = s.split_once('.').ok_or_else(refused)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| refused())?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| refused())?;
        mac(key, &json).verify_slice(&sig).map_err(|_| refused())?;
        serde_json::from_slice(&json).map_err(|_| refused())
    }
}

fn mac(key: &[u8], json: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(b"arcana offline snapshot cursor\0");
    m.update(json);
    m
}

/// Takes a snapshot place of `client_id` for `id`, or says which limit is
/// reached.
pub fn take_slot(o: &Offline, id: &Identity, client_id: &str) -> Result<Held, Status> {
    let cfg = &o.inner.cfg;
    o.inner
        .snapshots
        .take(
            id,
            client_id,
            cfg.max_snapshots_per_client,
            cfg.max_snapshots_per_identity,
        )
        .map_err(|over| {
            let text = match over {
                Over::Client(_) => format!(
                    "client `{client_id}` already has {} snapshots open (offline.max_snapshots_per_client): finish or close one first",
                    cfg.max_snapshots_per_client
                ),
                Over::Identity(_) => format!(
                    "this user already has {} snapshots open (offline.max_snapshots_per_identity): finish or close one first",
                    cfg.max_snapshots_per_identity
                ),
            };
            status(Code::ResourceExhausted, text)
        })
}

/// Streams the snapshot of `scopes` into `tx` as `who`, holding `slot`
/// until it ends or its reader goes away. A reader that leaves (a broken
/// stream, soon resumed from its cursor) frees the slot at once, not once
/// a query in flight returns: the resume would otherwise be refused.
pub async fn run(
    o: Offline,
    who: Identity,
    scopes: Vec<String>,
    cursor: Option<Cursor>,
    slot: Held,
    tx: mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
) {
    tokio::select! {
        r = stream(&o, &who, scopes, cursor, &tx) => {
            if let Err(e) = r {
                let _ = tx.send(Err(e)).await;
            }
        }
        // Dropping the snapshot's future drops its transaction, which
        // rolls back on its connection.
        _ = tx.closed() => {}
    }
    drop(slot);
}

/// How one transaction of a snapshot ended.
enum Ended {
    /// The last chunk went out, or the reader is gone.
    Done,
    /// The reader stalled; go on in a new transaction when it reads.
    Stalled,
}

async fn stream(
    o: &Offline,
    who: &Identity,
    scopes: Vec<String>,
    cursor: Option<Cursor>,
    out: &mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
) -> Result<(), Status> {
    let stall = Duration::from_millis(o.inner.cfg.snapshot_stall_ms.max(1));
    let (mut at, mut tbl, mut id) = match cursor {
        Some(c) => (Some(c.at), c.tbl, c.id),
        None => (None, String::new(), String::new()),
    };
    loop {
        // No connection is taken before the reader has room for a chunk.
        let Ok(permit) = out.reserve().await else {
            return Ok(());
        };
        let mut c = o.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| db_status("starting the snapshot", e))?;
        super::scopes::enter(o, &tx, who).await?;
        let ended = chunks(
            o, &tx, &scopes, &mut at, &mut tbl, &mut id, permit, out, stall,
        )
        .await?;
        let _ = tx.rollback().await;
        if let Ended::Done = ended {
            return Ok(());
        }
        tracing::debug!(
            "an offline snapshot's reader stalled for offline.snapshot_stall_ms; its transaction is released"
        );
    }
}

/// Sends chunks from `tx` until the last one, the reader leaving, or the
/// reader stalling; `at`, `tbl` and `id` follow the position.
#[allow(clippy::too_many_arguments)]
async fn chunks(
    o: &Offline,
    tx: &deadpool_postgres::Transaction<'_>,
    scopes: &[String],
    frozen: &mut Option<BTreeMap<String, u64>>,
    tbl: &mut String,
    id: &mut String,
    first: mpsc::Permit<'_, Result<pb::SnapshotChunk, Status>>,
    out: &mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
    stall: Duration,
) -> Result<Ended, Status> {
    let failed = |e| db_status("reading the snapshot", e);
    let at = match frozen {
        Some(at) => at.clone(),
        None => {
            let mut at: BTreeMap<String, u64> = scopes.iter().map(|s| (s.clone(), 0)).collect();
            for r in tx
                .query(
                    "SELECT scope, seq FROM arcana_offline.scopes WHERE scope = ANY($1)",
                    &[&scopes],
                )
                .await
                .map_err(failed)?
            {
                at.insert(r.get(0), r.get::<_, i64>(1) as u64);
            }
            *frozen = Some(at.clone());
            at
        }
    };
    let n = o.inner.cfg.snapshot_chunk_rows.max(1) as i64;
    let stmt = tx
        .prepare(
            "SELECT tbl, id, key, version, scope FROM arcana_offline.rows \
             WHERE scope = ANY($1) AND NOT deleted AND (tbl, id) > ($2, $3) \
             ORDER BY tbl, id LIMIT $4",
        )
        .await
        .map_err(failed)?;
    let mut permit = Some(first);
    loop {
        let permit = match permit.take() {
            Some(p) => p,
            None => match tokio::time::timeout(stall, out.reserve()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Ok(Ended::Done),
                Err(_) => return Ok(Ended::Stalled),
            },
        };
        let rows = tx
            .query(&stmt, &[&scopes, &*tbl, &*id, &n])
            .await
            .map_err(failed)?;
        let last = (rows.len() as i64) < n;
        let mut wanted: HashMap<String, Vec<Vec<String>>> = HashMap::new();
        for r in &rows {
            wanted.entry(r.get(0)).or_default().push(r.get(2));
        }
        let mut values = HashMap::new();
        for (t, keys) in &wanted {
            if let Some(spec) = o.table(t) {
                for (rid, r) in read_rows(tx, spec, keys).await.map_err(failed)? {
                    values.insert((t.clone(), rid), r.values);
                }
            }
        }
        let mut chunk = Vec::with_capacity(rows.len());
        for r in &rows {
            let (t, rid): (String, String) = (r.get(0), r.get(1));
            if let Some(v) = values.remove(&(t.clone(), rid.clone())) {
                chunk.push(pb::ServerRow {
                    table: t.clone(),
                    id: rid.clone(),
                    values: v,
                    version: r.get::<_, i64>(3) as u64,
                    deleted: false,
                    scope: r.get(4),
                });
            }
            *tbl = t;
            *id = rid;
        }
        let cursor = Cursor {
            at: at.clone(),
            tbl: tbl.clone(),
            id: id.clone(),
        };
        crate::ops::offline_metrics::snapshot_rows(chunk.len());
        permit.send(Ok(pb::SnapshotChunk {
            rows: chunk,
            at: at
                .iter()
                .map(|(s, q)| pb::ScopeSequence {
                    scope: s.clone(),
                    sequence: *q,
                })
                .collect(),
            cursor: cursor.encode(&o.inner.cursor_key),
            last,
        }));
        if last {
            return Ok(Ended::Done);
        }
    }
}
