//! Push: a bundle of row intents in numbered chunks, applied all or nothing
//! in one transaction under the caller's identity, exactly once per
//! (client id, bundle id).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Status, Streaming};

use super::scopes::token_scope_id;
use super::spec::{ident, TableSpec};
use super::state::{check_client, db_status, Offline};
use crate::config::offline::{ConflictPolicy, PushPolicy};
use crate::engine::{Identity, Value};
use crate::ops::offline_metrics::{self, PushOutcome, Resolution};
use crate::postgres::values::SqlParam;
use crate::proto::{self as pb, intent_result::Status as Outcome, IntentOp};
use crate::wire::convert::checked_value_from_pb;
use crate::wire::status::status;

/// A bundle as received: its name, intents and a digest of them.
struct Bundle {
    client_id: String,
    bundle_id: u64,
    intents: Vec<pb::RowIntent>,
    digest: Vec<u8>,
}

/// Reads the chunks of one bundle, checking order, identity and limits.
async fn collect(
    o: &Offline,
    id: &Identity,
    stream: &mut Streaming<pb::PushChunk>,
) -> Result<Bundle, Status> {
    let cfg = &o.inner.cfg;
    let mut bundle: Option<(String, u64)> = None;
    let mut intents = Vec::new();
    let mut bytes = 0usize;
    let mut next = 0u32;
    let mut ended = false;
    while let Some(chunk) = stream.message().await? {
        if ended {
            return Err(status(
                Code::InvalidArgument,
                "a chunk arrived after the chunk with last = true: one bundle per stream",
            ));
        }
        match &bundle {
            None => {
                check_client(o, id, &chunk.client_id).await?;
                bundle = Some((chunk.client_id.clone(), chunk.bundle_id));
            }
            Some((c, b)) if *c != chunk.client_id || *b != chunk.bundle_id => {
                return Err(status(
                    Code::InvalidArgument,
                    format!(
                        "chunk {} names bundle {} of client `{}`, but the stream began bundle {b} of client `{c}`: one bundle per stream",
                        chunk.chunk_index, chunk.bundle_id, chunk.client_id
                    ),
                ));
            }
            Some(_) => {}
        }
        if chunk.chunk_index != next {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "chunk_index {} arrived where {next} was expected: send chunks 0, 1, 2, ... in order",
                    chunk.chunk_index
                ),
            ));
        }
        if chunk.intents.len() > cfg.max_chunk_rows as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "chunk {next} holds {} row intents, more than offline.max_chunk_rows = {}: send smaller chunks",
                    chunk.intents.len(),
                    cfg.max_chunk_rows
                ),
            ));
        }
        if intents.len() + chunk.intents.len() > cfg.max_push_rows as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "the bundle holds more than offline.max_push_rows = {} row intents: split it into several bundles",
                    cfg.max_push_rows
                ),
            ));
        }
        bytes += chunk
            .intents
            .iter()
            .map(Message::encoded_len)
            .sum::<usize>();
        if bytes > cfg.max_push_bytes as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "the bundle's row intents exceed offline.max_push_bytes = {} bytes: split it into several bundles",
                    cfg.max_push_bytes
                ),
            ));
        }
        next += 1;
        ended = chunk.last;
        intents.extend(chunk.intents);
    }
    let Some((client_id, bundle_id)) = bundle else {
        return Err(status(
            Code::InvalidArgument,
            "the push stream held no chunk",
        ));
    };
    if !ended {
        return Err(status(
            Code::InvalidArgument,
            format!("the push stream ended after {next} chunks without one with last = true; nothing was applied"),
        ));
    }
    let mut h = Sha256::new();
    for i in &intents {
        // Map order is not canonical: hash the values sorted by column.
        h.update(i.table.as_bytes());
        h.update(i.op.to_be_bytes());
        h.update(i.base_version.to_be_bytes());
        h.update(i.client_time_unix_ms.to_be_bytes());
        let mut cols: Vec<_> = i.values.iter().collect();
        cols.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in cols {
            h.update(k.as_bytes());
            h.update(v.encode_to_vec());
        }
        h.update([0xff]);
    }
    Ok(Bundle {
        client_id,
        bundle_id,
        intents,
        digest: h.finalize().to_vec(),
    })
}

/// Handles one Push call. A bundle whose transaction loses to a concurrent
/// one (deadlock, serialization failure) is run again from the start, as a
/// mutation is, `database.mutation_retries` times before it answers
/// ABORTED. A retry cannot apply a bundle twice: the lost transaction
/// rolled back whole, and each attempt first looks for the bundle's stored
/// result under the bundle's lock.
pub async fn push(
    o: &Offline,
    id: &Identity,
    mut stream: Streaming<pb::PushChunk>,
) -> Result<pb::PushResponse, Status> {
    let bundle = collect(o, id, &mut stream).await?;
    let r = with_retries(o, id, &bundle).await;
    match &r {
        Ok((resp, met)) => {
            let outcome = if resp.replayed {
                PushOutcome::Replayed
            } else if resp.applied {
                PushOutcome::Applied
            } else {
                PushOutcome::Refused
            };
            let rows = if outcome == PushOutcome::Applied {
                bundle.intents.len()
            } else {
                0
            };
            offline_metrics::push(outcome, rows);
            // A refused bundle's writes did not happen: its conflicts count
            // as refusals, whatever else its intents met.
            for &(policy, resolution) in met {
                offline_metrics::conflict(policy, resolution);
            }
        }
        Err(_) => offline_metrics::push(PushOutcome::Failed, 0),
    }
    r.map(|(resp, _)| resp)
}

/// The policy (its config name) and resolution of each conflict a bundle met.
type Met = Vec<(&'static str, Resolution)>;

/// Applies `bundle`, again after a lost transaction (see [`push`]).
async fn with_retries(
    o: &Offline,
    id: &Identity,
    bundle: &Bundle,
) -> Result<(pb::PushResponse, Met), Status> {
    let mut c = o.conn().await?;
    let retries = o.inner.ctx.mutation_retries;
    let mut tries = 0u32;
    loop {
        match attempt(o, id, &mut c, bundle).await {
            Err(s) if s.code() == Code::Aborted && tries < retries => {
                tries += 1;
                tracing::debug!(
                    client_id = %bundle.client_id,
                    bundle_id = bundle.bundle_id,
                    tries,
                    "push lost to a concurrent transaction, retrying: {}",
                    s.message()
                );
                // A short random pause, growing with each try, so the
                // transactions that collided do not collide again in step.
                let pause = rand::random_range(1..=10u64 << tries.min(6));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(s) if s.code() == Code::Aborted => {
                return Err(status(
                    Code::Aborted,
                    format!(
                        "{} (tried {} times, database.mutation_retries = {retries}); nothing of the bundle applied, push it again",
                        s.message(),
                        tries + 1
                    ),
                ))
            }
            r => return r,
        }
    }
}

/// One try at applying `bundle` in its own transaction on `c`; with the
/// conflicts it met.
async fn attempt(
    o: &Offline,
    id: &Identity,
    c: &mut deadpool_postgres::Object,
    bundle: &Bundle,
) -> Result<(pb::PushResponse, Met), Status> {
    let Bundle {
        client_id,
        bundle_id,
        intents,
        digest,
    } = bundle;
    let (client_id, bundle_id, digest) = (client_id.as_str(), *bundle_id, digest.as_slice());
    if let Some(r) = stored(&*c, client_id, bundle_id, digest).await? {
        return Ok((r, Met::new()));
    }
    let tx = c
        .transaction()
        .await
        .map_err(|e| db_status("starting the push", e))?;
    // Copies of one bundle on several streams take turns here: a later copy
    // waits for the first to commit (or roll back) and then finds its stored
    // result, instead of applying against the rows the first one wrote.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&client_id, &(bundle_id as i64)],
    )
    .await
    .map_err(|e| db_status("starting the push", e))?;
    if let Some(r) = stored(&tx, client_id, bundle_id, digest).await? {
        return Ok((r, Met::new()));
    }
    super::scopes::enter(o, &tx, id).await?;
    // The caller's scopes as this transaction sees them.
    let mine = super::scopes::scopes_on(o, &tx, id).await?;
    tx.query(
        "SELECT set_config('arcana_offline.client_id', $1, true), \
         set_config('arcana_offline.bundle_id', $2, true)",
        &[&client_id, &(bundle_id as i64).to_string()],
    )
    .await
    .map_err(|e| db_status("starting the push", e))?;
    // Foreign keys that are deferrable are checked at commit, so their
    // rows may come in any order; the others are met by the order below.
    tx.batch_execute("SET CONSTRAINTS ALL DEFERRED")
        .await
        .map_err(|e| db_status("starting the push", e))?;
    let mut results = vec![pb::IntentResult::default(); intents.len()];
    let mut refused = false;
    let mut met = Met::new();
    for i in super::order::order(
        intents,
        |t| o.table(t).map_or(0, |s| s.rank),
        |i| row_of(o, i),
    ) {
        let r = apply(o, id, &mine, &tx, i, intents[i].clone(), &mut met).await?;
        refused |= r.status == Outcome::Conflict as i32;
        results[i] = r;
    }
    if refused {
        // Nothing of a refused bundle applies; it is not stored, so the
        // device may rebase it and send it again under the same id.
        drop(tx);
        met.retain(|(_, r)| *r == Resolution::Refused);
        return Ok((
            pb::PushResponse {
                replayed: false,
                applied: false,
                committed: Vec::new(),
                results,
            },
            met,
        ));
    }
    // Sequence now rather than at commit, to answer with the sequences.
    tx.batch_execute(&format!(
        "SET CONSTRAINTS arcana_offline.{} IMMEDIATE",
        super::schema::SEQUENCE_TRIGGER
    ))
    .await
    .map_err(|e| db_status("sequencing the bundle", e))?;
    let committed = tx
        .query(
            "SELECT scope, max(seq) FROM arcana_offline.changes WHERE xid = txid_current() \
             GROUP BY scope ORDER BY scope",
            &[],
        )
        .await
        .map_err(|e| db_status("sequencing the bundle", e))?
        .iter()
        .map(|r| pb::ScopeSequence {
            scope: r.get(0),
            sequence: r.get::<_, i64>(1) as u64,
        })
        .collect();
    let response = pb::PushResponse {
        replayed: false,
        applied: true,
        committed,
        results,
    };
    let inserted = tx
        .query_opt(
            "INSERT INTO arcana_offline.bundles (client_id, bundle_id, result, digest) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            &[
                &client_id,
                &(bundle_id as i64),
                &response.encode_to_vec(),
                &digest,
            ],
        )
        .await
        .map_err(|e| db_status("recording the bundle", e))?;
    if inserted.is_none() {
        // The same bundle committed meanwhile on another stream.
        drop(tx);
        return stored(&*c, client_id, bundle_id, digest)
            .await?
            .map(|r| (r, Met::new()))
            .ok_or_else(|| {
                status(
                    Code::Aborted,
                    "the bundle is being applied concurrently: retry",
                )
            });
    }
    tx.commit()
        .await
        .map_err(|e| db_status("committing the bundle", e))?;
    Ok((response, met))
}

/// An intent's row: its table and the encoded values of the table's key
/// columns (the whole intent when the table is not synced; applying it
/// fails anyway).
fn row_of(o: &Offline, i: &pb::RowIntent) -> Vec<u8> {
    let mut out = i.table.as_bytes().to_vec();
    out.push(0);
    match o.table(&i.table) {
        Some(t) => {
            for (k, _) in &t.key {
                if let Some(v) = i.values.get(k) {
                    out.extend(v.encode_to_vec());
                }
                out.push(0xff);
            }
        }
        None => out.extend(i.encode_to_vec()),
    }
    out
}

/// The stored result of a bundle that already committed, marked replayed;
/// refused when the replay's intents differ from what committed.
async fn stored<C: deadpool_postgres::GenericClient>(
    c: &C,
    client_id: &str,
    bundle_id: u64,
    digest: &[u8],
) -> Result<Option<pb::PushResponse>, Status> {
    let row = c
        .query_opt(
            "SELECT result, digest FROM arcana_offline.bundles WHERE client_id = $1 AND bundle_id = $2",
            &[&client_id, &(bundle_id as i64)],
        )
        .await
        .map_err(|e| db_status("reading the bundle log", e))?;
    row.map(|r| {
        if r.get::<_, &[u8]>(1) != digest {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "bundle {bundle_id} of client `{client_id}` already committed with other row intents: a replay must resend it unchanged, new writes need a new bundle id"
                ),
            ));
        }
        let bytes: Vec<u8> = r.get(0);
        let mut resp = pb::PushResponse::decode(bytes.as_slice()).map_err(|e| {
            status(
                Code::Internal,
                format!("a stored bundle result is unreadable: {e}"),
            )
        })?;
        resp.replayed = true;
        Ok(resp)
    })
    .transpose()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What becomes of one intent.
enum Decision {
    Apply,
    Conflict,
    Superseded,
}

/// Checks and applies one intent inside the bundle's transaction.
async fn apply(
    o: &Offline,
    who: &Identity,
    mine: &[String],
    tx: &deadpool_postgres::Transaction<'_>,
    i: usize,
    intent: pb::RowIntent,
    met: &mut Met,
) -> Result<pb::IntentResult, Status> {
    let invalid = |m: String| status(Code::InvalidArgument, format!("intent {i}: {m}"));
    let denied = |m: String| status(Code::PermissionDenied, format!("intent {i}: {m}"));
    let t: &TableSpec = o
        .table(&intent.table)
        .ok_or_else(|| invalid(format!("table `{}` is not synced", intent.table)))?;
    let op = match IntentOp::try_from(intent.op) {
        Ok(IntentOp::Insert) => IntentOp::Insert,
        Ok(IntentOp::Update) => IntentOp::Update,
        Ok(IntentOp::Delete) => IntentOp::Delete,
        _ => return Err(invalid("op must be INSERT, UPDATE or DELETE".into())),
    };
    if t.push == PushPolicy::ReadOnly {
        return Err(denied(format!(
            "table `{}` is read-only for devices",
            t.name
        )));
    }
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in intent.values {
        match t.column(&k) {
            None => {
                return Err(invalid(format!(
                    "column `{k}` of table `{}` is not synced",
                    t.name
                )))
            }
            // The server's to write: a device may send back what it got.
            Some(c) if c.protected => continue,
            Some(_) => {}
        }
        let v = checked_value_from_pb(v)
            .map_err(|e| invalid(format!("column `{k}` of table `{}`: {e}", t.name)))?;
        values.insert(k, v);
    }
    // Whether a scope column value names one of the caller's scopes.
    let ours = |v: &str| mine.contains(&t.scope_of(v));
    let outside = || {
        denied(format!(
            "the row of table `{}` is outside your scope: devices write only rows of their own {}",
            t.name,
            match t.scope {
                crate::config::offline::ScopeKind::Workspace => "workspace",
                crate::config::offline::ScopeKind::User => "user",
                crate::config::offline::ScopeKind::Sql => "scopes",
            }
        ))
    };
    match values.get(&t.scope_column) {
        Some(v) if !ours(&v.key_text()) => return Err(outside()),
        Some(_) => {}
        None => {
            // Rows of the token's scope are always the caller's: fill in
            // what the device left out. A SQL bucket has no default.
            if let Some(own) = token_scope_id(t, who) {
                values.insert(t.scope_column.clone(), Value::String(own.to_owned()));
            }
        }
    }
    let owner_only = t.push == PushPolicy::OwnerOnly;
    let owner_column = t.owner_column.clone().unwrap_or_default();
    let not_owner = || {
        denied(format!(
            "table `{}` accepts writes only to rows whose `{owner_column}` is you",
            t.name
        ))
    };
    if owner_only {
        match values.get(&owner_column) {
            Some(v) if v.key_text() != *who.user_id => return Err(not_owner()),
            Some(_) => {}
            None => {
                values.insert(owner_column.clone(), Value::String(who.user_id.to_string()));
            }
        }
    }
    let mut keys = Vec::with_capacity(t.key.len());
    for (k, _) in &t.key {
        match values.get(k) {
            Some(Value::Null) | None => {
                return Err(invalid(format!(
                    "key column `{k}` of table `{}` is missing",
                    t.name
                )))
            }
            Some(v) => keys.push(v.clone()),
        }
    }
    let key_texts: Vec<String> = keys.iter().map(Value::key_text).collect();
    let row_id = crate::engine::value::row_id(&keys);
    // The table row, locked until commit, and its version.
    let current = read_locked(tx, t, &key_texts)
        .await
        .map_err(|e| db_status(&format!("intent {i} (table `{}`)", t.name), e))?;
    if let Some(row) = &current {
        let theirs = row
            .values
            .get(&t.scope_column)
            .map(|v| crate::wire::convert::value_from_pb(v.clone()).key_text());
        if !theirs.as_deref().is_some_and(ours) {
            return Err(outside());
        }
        if owner_only {
            let owner = row
                .values
                .get(&owner_column)
                .map(|v| crate::wire::convert::value_from_pb(v.clone()).key_text());
            if owner.as_deref() != Some(&*who.user_id) {
                return Err(not_owner());
            }
        }
    }
    // The row's scope before and after this write.
    let before = current.as_ref().and_then(|r| {
        r.values
            .get(&t.scope_column)
            .map(|v| crate::wire::convert::value_from_pb(v.clone()).key_text())
    });
    let after_scope = values
        .get(&t.scope_column)
        .map(Value::key_text)
        .or_else(|| before.clone());
    if after_scope.is_none() && op != IntentOp::Delete {
        return Err(invalid(format!(
            "column `{}` of table `{}` is missing: it names the row's scope",
            t.scope_column, t.name
        )));
    }
    let row_scope = t.scope_of(before.as_deref().or(after_scope.as_deref()).unwrap_or(""));
    let moved = before.is_some() && before != after_scope;
    let now = now_ms();
    let client_ms = if intent.client_time_unix_ms > 0 {
        intent
            .client_time_unix_ms
            .min(now + i64::from(t.clock_skew_ms))
    } else {
        now
    };
    // The row's version, and the write time the trigger records if this
    // intent writes (one round trip for both).
    let meta = tx
        .query_one(
            "SELECT m.version, m.write_ms, m.scope, m.deleted \
             FROM (SELECT set_config('arcana_offline.write_ms', $3, true)) AS s \
             LEFT JOIN arcana_offline.rows m ON m.tbl = $1 AND m.id = $2",
            &[&t.name, &row_id, &client_ms.to_string()],
        )
        .await
        .map_err(|e| db_status("reading the row version", e))?;
    let meta = meta.get::<_, Option<i64>>(0).map(|_| meta);
    // The log knows the scope of rows the caller cannot even see.
    if let Some(m) = &meta {
        if !m.get::<_, bool>(3) && !mine.contains(&m.get::<_, String>(2)) {
            return Err(outside());
        }
    }
    let (version, write_ms) = meta.map_or((0u64, 0i64), |r| (r.get::<_, i64>(0) as u64, r.get(1)));
    let decision = if op == IntentOp::Delete && current.is_none() {
        // Deleting what is gone already changes nothing and conflicts with
        // nothing.
        Decision::Apply
    } else if intent.base_version == version {
        Decision::Apply
    } else {
        let (policy, decision, resolution) = match t.conflict {
            ConflictPolicy::Reject => ("reject", Decision::Conflict, Resolution::Refused),
            ConflictPolicy::ServerWins => {
                ("server_wins", Decision::Superseded, Resolution::ServerKept)
            }
            ConflictPolicy::LastWriterWins if client_ms > write_ms => (
                "last_writer_wins",
                Decision::Apply,
                Resolution::ClientApplied,
            ),
            ConflictPolicy::LastWriterWins => (
                "last_writer_wins",
                Decision::Superseded,
                Resolution::ServerKept,
            ),
        };
        met.push((policy, resolution));
        decision
    };
    let server_row = || pb::ServerRow {
        table: t.name.clone(),
        id: row_id.clone(),
        values: current
            .as_ref()
            .map(|r| r.values.clone())
            .unwrap_or_default(),
        version,
        deleted: current.is_none(),
        scope: row_scope.clone(),
    };
    match decision {
        Decision::Conflict => {
            return Ok(pb::IntentResult {
                status: Outcome::Conflict as i32,
                version,
                server_row: Some(server_row()),
            })
        }
        Decision::Superseded => {
            return Ok(pb::IntentResult {
                status: Outcome::Superseded as i32,
                version,
                server_row: Some(server_row()),
            })
        }
        Decision::Apply => {}
    }
    // Names the column of a value that could not be bound (tokio-postgres
    // reports only its position among `cols`).
    let failed_on = |cols: Vec<String>| {
        move |e: tokio_postgres::Error| {
            let column = e
                .to_string()
                .strip_prefix("error serializing parameter ")
                .and_then(|r| {
                    r.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .and_then(|at| cols.get(at).cloned());
            let what = match column {
                Some(c) => format!("intent {i} (column `{c}` of table `{}`)", t.name),
                None => format!("intent {i} (table `{}`)", t.name),
            };
            db_status(&what, e)
        }
    };
    let key_cols: Vec<String> = t.key.iter().map(|(k, _)| k.clone()).collect();
    let mut wrote = true;
    let key_where: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(n, (k, _))| format!("{} = ${}", ident(k), n + 1))
        .collect();
    let key_where = key_where.join(" AND ");
    let key_params: Vec<SqlParam> = keys.iter().map(SqlParam).collect();
    match (op, current.is_some()) {
        (IntentOp::Delete, true) => {
            let sql = format!("DELETE FROM {} WHERE {key_where}", t.quoted);
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key_params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&sql, &params)
                .await
                .map_err(failed_on(key_cols.clone()))?;
        }
        (IntentOp::Delete, false) => wrote = false,
        (_, true) => {
            let set: Vec<(&String, &Value)> = values
                .iter()
                .filter(|(k, _)| !t.key.iter().any(|(kc, _)| kc == *k))
                .collect();
            if !set.is_empty() {
                let assignments: Vec<String> = set
                    .iter()
                    .enumerate()
                    .map(|(n, (k, _))| format!("{} = ${}", ident(k), n + 1 + keys.len()))
                    .collect();
                let sql = format!(
                    "UPDATE {} SET {} WHERE {key_where}",
                    t.quoted,
                    assignments.join(", ")
                );
                let set_params: Vec<SqlParam> = set.iter().map(|(_, v)| SqlParam(v)).collect();
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key_params
                    .iter()
                    .chain(set_params.iter())
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let cols = key_cols
                    .iter()
                    .cloned()
                    .chain(set.iter().map(|(k, _)| (*k).clone()))
                    .collect();
                tx.execute(&sql, &params).await.map_err(failed_on(cols))?;
            } else {
                wrote = false;
            }
        }
        (_, false) => {
            let cols: Vec<String> = values.keys().map(|k| ident(k)).collect();
            let marks: Vec<String> = (1..=values.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                t.quoted,
                cols.join(", "),
                marks.join(", ")
            );
            let ps: Vec<SqlParam> = values.values().map(SqlParam).collect();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = ps
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let cols = values.keys().cloned().collect();
            tx.execute(&sql, &params).await.map_err(failed_on(cols))?;
        }
    }
    // The row trigger bumped the version once, or twice when the row moved
    // to another of the caller's scopes (logged as a delete and an insert).
    let after = match (wrote, moved && op != IntentOp::Delete) {
        (false, _) => version,
        (true, false) => version + 1,
        (true, true) => version + 2,
    };
    Ok(pb::IntentResult {
        status: Outcome::Applied as i32,
        version: after,
        server_row: None,
    })
}

/// The row with these key texts, locked for the rest of the transaction.
async fn read_locked(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &TableSpec,
    key_texts: &[String],
) -> Result<Option<super::state::ReadRow>, tokio_postgres::Error> {
    let columns: Vec<Vec<String>> = key_texts.iter().map(|k| vec![k.clone()]).collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
        .iter()
        .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let stmt = tx
        .prepare_cached(&format!("{} FOR UPDATE", t.select_by_keys))
        .await?;
    let rows = tx.query(&stmt, &params).await?;
    rows.first()
        .map(|r| super::state::to_read_row(t, r))
        .transpose()
}
