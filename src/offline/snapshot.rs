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

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{db_status, read_rows, Offline};
use crate::grpc::status::status;
use crate::proto as pb;

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
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a cursor a client passed back.
    pub fn decode(s: &str) -> Result<Cursor, Status> {
        URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                status(
                    Code::InvalidArgument,
                    "cursor is not one this server issued: pass the cursor of the last chunk received, or none to start over",
                )
            })
    }
}

/// Streams the snapshot of `scopes` into `tx`.
pub async fn run(
    o: Offline,
    scopes: Vec<String>,
    cursor: Option<Cursor>,
    tx: mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
) {
    if let Err(e) = stream(&o, scopes, cursor, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn stream(
    o: &Offline,
    scopes: Vec<String>,
    cursor: Option<Cursor>,
    out: &mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
) -> Result<(), Status> {
    let mut c = o.conn().await?;
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| db_status("starting the snapshot", e))?;
    let failed = |e| db_status("reading the snapshot", e);
    let (at, mut tbl, mut id) = match cursor {
        Some(c) => (c.at, c.tbl, c.id),
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
            (at, String::new(), String::new())
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
    loop {
        let rows = tx
            .query(&stmt, &[&scopes, &tbl, &id, &n])
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
                for (rid, r) in read_rows(&tx, spec, keys).await.map_err(failed)? {
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
            tbl = t;
            id = rid;
        }
        let cursor = Cursor {
            at: at.clone(),
            tbl: tbl.clone(),
            id: id.clone(),
        };
        let msg = pb::SnapshotChunk {
            rows: chunk,
            at: at
                .iter()
                .map(|(s, q)| pb::ScopeSequence {
                    scope: s.clone(),
                    sequence: *q,
                })
                .collect(),
            cursor: cursor.encode(),
            last,
        };
        if out.send(Ok(msg)).await.is_err() || last {
            return Ok(());
        }
    }
}
