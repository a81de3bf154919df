//! A caller's scopes: from the token for workspace and user tables, from
//! each SQL-bucketed table's `scopes_sql` otherwise, evaluated per call
//! under the caller's identity so a membership change counts at once.

use tokio_postgres::types::Type;
use tonic::{Code, Status};

use super::spec::TableSpec;
use super::state::{db_status, Offline};
use crate::config::offline::ScopeKind;
use crate::engine::{Identity, Scope};
use crate::wire::status::status;

/// The id in a workspace or user table's scope column that rows of `id`'s
/// scope hold (`None` for SQL buckets).
pub fn token_scope_id<'a>(t: &TableSpec, id: &'a Identity) -> Option<&'a str> {
    match t.scope {
        ScopeKind::Workspace => Some(&id.workspace_id),
        ScopeKind::User => Some(&id.user_id),
        ScopeKind::Sql => None,
    }
}

/// The caller's scopes, sorted and distinct, read on `c` (already under
/// the caller's identity when there are SQL buckets).
pub async fn scopes_on<C: deadpool_postgres::GenericClient>(
    o: &Offline,
    c: &C,
    id: &Identity,
) -> Result<Vec<String>, Status> {
    let mut s = Vec::new();
    let mut asked: Vec<&str> = Vec::new();
    for t in &o.inner.tables {
        match (token_scope_id(t, id), &t.scopes_sql) {
            (Some(mine), _) => s.push(t.scope_of(mine)),
            // Tables sharing a scope name share its query: ask it once.
            (None, Some(_)) if asked.contains(&t.prefix.as_str()) => {}
            (None, Some(sql)) => {
                asked.push(&t.prefix);
                let stmt = c
                    .prepare_typed_cached(sql, &[Type::TEXT, Type::TEXT])
                    .await
                    .map_err(|e| db_status(&format!("reading your scopes of `{}`", t.name), e))?;
                let rows = c
                    .query(&stmt, &[&&*id.user_id, &&*id.workspace_id])
                    .await
                    .map_err(|e| db_status(&format!("reading your scopes of `{}`", t.name), e))?;
                s.extend(rows.iter().map(|r| t.scope_of(r.get::<_, &str>(0))));
            }
            (None, None) => {}
        }
    }
    s.sort();
    s.dedup();
    Ok(s)
}

/// The caller's scopes, in a read-only transaction of their own when SQL
/// buckets need the database.
pub async fn scopes_of(o: &Offline, id: &Identity) -> Result<Vec<String>, Status> {
    if o.inner.tables.iter().all(|t| t.scopes_sql.is_none()) {
        let mut s: Vec<String> = o
            .inner
            .tables
            .iter()
            .filter_map(|t| token_scope_id(t, id).map(|mine| t.scope_of(mine)))
            .collect();
        s.sort();
        s.dedup();
        return Ok(s);
    }
    let mut c = o.conn().await?;
    let tx = c
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| db_status("reading your scopes", e))?;
    enter(o, &tx, id).await?;
    scopes_on(o, &tx, id).await
}

/// Runs the rest of `tx` under the caller's identity.
pub async fn enter(
    o: &Offline,
    tx: &deadpool_postgres::Transaction<'_>,
    id: &Identity,
) -> Result<(), Status> {
    let scope = Scope {
        workspace_id: id.workspace_id.clone(),
        user_id: Some(id.user_id.clone()),
        role: Some(id.role.as_str().into()),
    };
    o.inner
        .ctx
        .enter(tx, &scope)
        .await
        .map_err(|e| status(Code::Unavailable, e.to_string()))
}

/// Refuses any scope of `wanted` outside `mine`, naming only the caller's
/// own scopes.
pub fn check_own<'a>(
    mine: &[String],
    wanted: impl IntoIterator<Item = &'a String>,
) -> Result<(), Status> {
    for s in wanted {
        if !mine.contains(s) {
            return Err(status(
                Code::PermissionDenied,
                format!(
                    "scope `{s}` is not one of yours: yours are {}",
                    if mine.is_empty() {
                        "none".to_owned()
                    } else {
                        mine.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}
