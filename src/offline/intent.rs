//! One row intent of a bundle: checked against the table's spec and the
//! caller's scopes, compared with the row's version under the table's
//! conflict policy, and written, inside the bundle's transaction.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Code, Status};

use super::scopes::token_scope_id;
use super::spec::{ident, TableSpec};
use super::state::{db_status, Offline};
use crate::config::offline::{ConflictPolicy, PushPolicy};
use crate::engine::{Identity, Value};
use crate::ops::offline_metrics::Resolution;
use crate::postgres::values::SqlParam;
use crate::proto::{self as pb, intent_result::Status as Outcome, IntentOp};
use crate::wire::convert::checked_value_from_pb;
use crate::wire::status::status;

/// The policy (its config name) and resolution of each conflict a bundle met.
pub(super) type Met = Vec<(&'static str, Resolution)>;

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
pub(super) async fn apply(
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
