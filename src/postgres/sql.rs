//! Graphs and mutations written as SQL, as the standalone server declares
//! them in its config. Parameters are named (`:project_id`); the caller's
//! `:workspace_id` and `:user_id` come from the identity, never from input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::named::{rewrite, NamedSql};
use super::values::{SqlParam, SqlValue};
use crate::engine::{
    row_id, Change, EvalError, EvalErrorKind, Factory, Fields, GraphResult, MutationHandler,
    MutationOutput, Params, Ref, Scope, Value,
};

/// The identity parameters every statement may use.
pub const WORKSPACE_PARAM: &str = "workspace_id";
/// The caller's user id; graphs using it must be per-user.
pub const USER_PARAM: &str = "user_id";

/// A statement with its named parameters resolved to positions.
#[derive(Debug, Clone)]
pub struct Statement {
    named: NamedSql,
}

impl Statement {
    /// Parses `sql`; `declared` are the parameter names callers may give.
    pub fn parse(sql: &str, declared: &[&str]) -> Result<Statement, String> {
        let named = rewrite(sql)?;
        for n in &named.names {
            if n != WORKSPACE_PARAM && n != USER_PARAM && !declared.contains(&n.as_str()) {
                return Err(format!(
                    "the SQL uses :{n}, which is not a declared param (declared: {}; always available: :{WORKSPACE_PARAM}, :{USER_PARAM})",
                    if declared.is_empty() { "none".to_owned() } else { declared.join(", ") }
                ));
            }
        }
        Ok(Statement { named })
    }

    /// The statement with positional parameters, as sent to Postgres.
    pub fn sql(&self) -> &str {
        &self.named.sql
    }

    /// Whether the statement reads the caller's user id.
    pub fn uses_user(&self) -> bool {
        self.named.names.iter().any(|n| n == USER_PARAM)
    }

    fn values(&self, scope: &Scope, params: &Params) -> Vec<Value> {
        self.named
            .names
            .iter()
            .map(|n| match n.as_str() {
                WORKSPACE_PARAM => Value::String(scope.workspace_id.to_string()),
                USER_PARAM => scope
                    .user_id
                    .as_ref()
                    .map_or(Value::Null, |u| Value::String(u.to_string())),
                other => params.get(other).clone(),
            })
            .collect()
    }

    async fn query(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        scope: &Scope,
        params: &Params,
    ) -> Result<Vec<Row>, EvalError> {
        let values = self.values(scope, params);
        let binds: Vec<SqlParam<'_>> = values.iter().map(SqlParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        // Cached per connection: one parse per statement and connection.
        let stmt = client
            .prepare_cached(&self.named.sql)
            .await
            .map_err(db_error)?;
        client.query(&stmt, &refs).await.map_err(db_error)
    }
}

/// Maps a database error to an evaluation error a person can act on.
pub fn db_error(e: tokio_postgres::Error) -> EvalError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let kind = match &code[..2] {
            "22" => EvalErrorKind::InvalidArgument,
            "23" | "40" => EvalErrorKind::FailedPrecondition,
            "08" | "53" | "57" => EvalErrorKind::Unavailable,
            _ => EvalErrorKind::Internal,
        };
        let mut msg = format!("database error {code}: {}", db.message());
        if let Some(d) = db.detail() {
            msg.push_str(&format!(" ({d})"));
        }
        return EvalError::new(kind, msg);
    }
    if e.is_closed() {
        return EvalError::new(
            EvalErrorKind::Unavailable,
            "the database connection closed; retry",
        );
    }
    // Conversion errors (a param that cannot be bound, a column we cannot read).
    let mut msg = e.to_string();
    if let Some(src) = std::error::Error::source(&e) {
        msg = format!("{msg}: {src}");
    }
    EvalError::new(EvalErrorKind::Internal, msg)
}

fn pool_error(e: deadpool_postgres::PoolError) -> EvalError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => EvalError::new(
            EvalErrorKind::Unavailable,
            format!("no database connection available: {other}"),
        ),
    }
}

/// A nested reference read from `<name>.<column>` result columns.
#[derive(Debug, Clone)]
pub struct NestedSpec {
    /// The nested ref name, and the column prefix.
    pub name: String,
    /// The table its rows belong to.
    pub table: String,
    /// Its key columns.
    pub key: Vec<String>,
}

/// A graph whose result comes from one query (plus an optional total query),
/// both run in one read-only repeatable-read transaction so they agree.
pub struct SqlGraph {
    /// The graph name, for messages.
    pub name: String,
    /// The pool.
    pub pool: Pool,
    /// The main query: one row per top-level ref, in order.
    pub query: Statement,
    /// Counts all matching rows, for paging.
    pub total: Option<Statement>,
    /// The table of the main rows.
    pub table: String,
    /// Its key columns.
    pub key: Vec<String>,
    /// Nested refs.
    pub nested: Vec<NestedSpec>,
}

impl SqlGraph {
    fn build(&self, rows: Vec<Row>, total: Option<i64>) -> Result<GraphResult, EvalError> {
        let mut out = GraphResult::new();
        for row in rows {
            let mut top = Fields::new();
            let mut nested: BTreeMap<&str, Fields> = BTreeMap::new();
            for (i, col) in row.columns().iter().enumerate() {
                let SqlValue(v) = row.try_get(i).map_err(|e| {
                    EvalError::internal(format!(
                        "graph `{}`: column `{}`: {}",
                        self.name,
                        col.name(),
                        source_text(&e)
                    ))
                })?;
                match col.name().split_once('.') {
                    Some((prefix, field)) => {
                        let spec = self.nested.iter().find(|n| n.name == prefix).ok_or_else(|| {
                            EvalError::internal(format!(
                                "graph `{}`: column `{}` names nested ref `{prefix}`, which the graph does not declare",
                                self.name,
                                col.name()
                            ))
                        })?;
                        nested
                            .entry(spec.name.as_str())
                            .or_default()
                            .insert(field.to_owned(), v);
                    }
                    None => {
                        top.insert(col.name().to_owned(), v);
                    }
                }
            }
            let id = self.key_of(&self.table, &self.key, &top)?;
            let mut r = Ref::new(&self.table, &id);
            r.fields = top.keys().cloned().collect();
            for spec in &self.nested {
                let Some(fields) = nested.remove(spec.name.as_str()) else {
                    continue;
                };
                if spec
                    .key
                    .iter()
                    .all(|k| matches!(fields.get(k), None | Some(Value::Null)))
                {
                    continue; // no related row (an outer join found none)
                }
                let nid = self.key_of(&spec.table, &spec.key, &fields)?;
                let mut n = Ref::new(&spec.table, &nid);
                n.fields = fields.keys().cloned().collect();
                out.add_row(&spec.table, &nid, fields);
                r.nested.insert(spec.name.clone(), n);
            }
            out.add_row(&self.table, &id, top);
            out.add_ref(r);
        }
        out.total = total;
        Ok(out)
    }

    fn key_of(&self, table: &str, key: &[String], fields: &Fields) -> Result<String, EvalError> {
        let mut parts = Vec::with_capacity(key.len());
        for k in key {
            match fields.get(k) {
                Some(v) if !matches!(v, Value::Null) => parts.push(v.clone()),
                _ => {
                    return Err(EvalError::internal(format!(
                        "graph `{}`: the query returned no `{k}` value, which is a key column of `{table}`",
                        self.name
                    )))
                }
            }
        }
        Ok(row_id(&parts))
    }
}

fn source_text(e: &tokio_postgres::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

impl SqlGraph {
    /// Prepares the graph's statements on `client` and returns its row
    /// fields, checking that key columns are present and types are readable.
    /// Startup fails here, with the database's words, on a broken query.
    pub async fn shape(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<crate::engine::FieldShape>, String> {
        let db = |e: tokio_postgres::Error| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        };
        let stmt = client
            .prepare(self.query.sql())
            .await
            .map_err(|e| format!("sql: {}", db(e)))?;
        let mut fields = Vec::new();
        for col in stmt.columns() {
            let kind = super::values::kind_of(col.type_())
                .map_err(|e| format!("column `{}`: {e}", col.name()))?;
            let (nested, name) = match col.name().split_once('.') {
                Some((n, f)) => {
                    if !self.nested.iter().any(|s| s.name == n) {
                        return Err(format!(
                            "column `{}` names nested ref `{n}`, which the graph does not declare",
                            col.name()
                        ));
                    }
                    (n.to_owned(), f.to_owned())
                }
                None => (String::new(), col.name().to_owned()),
            };
            fields.push(crate::engine::FieldShape { nested, name, kind });
        }
        let has =
            |nested: &str, name: &str| fields.iter().any(|f| f.nested == nested && f.name == name);
        for k in &self.key {
            if !has("", k) {
                return Err(format!(
                    "the query returns no `{k}` column, which is the key of `{}`",
                    self.table
                ));
            }
        }
        for n in &self.nested {
            for k in &n.key {
                if !has(&n.name, k) {
                    return Err(format!(
                        "the query returns no `{}.{k}` column, the key of nested ref `{}`",
                        n.name, n.name
                    ));
                }
            }
        }
        if let Some(t) = &self.total {
            let stmt = client
                .prepare(t.sql())
                .await
                .map_err(|e| format!("total_sql: {}", db(e)))?;
            let ok = stmt.columns().len() == 1
                && super::values::kind_of(stmt.columns()[0].type_()) == Ok("int");
            if !ok {
                return Err(
                    "total_sql must return one integer column, such as SELECT count(*) ...".into(),
                );
            }
        }
        Ok(fields)
    }
}

impl SqlMutation {
    /// Prepares every statement, so a broken one fails startup.
    pub async fn check(&self, client: &tokio_postgres::Client) -> Result<(), String> {
        for (i, s) in self.statements.iter().enumerate() {
            client.prepare(s.sql()).await.map_err(|e| {
                format!(
                    "statement {}: {}",
                    i + 1,
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                )
            })?;
        }
        Ok(())
    }
}

impl Factory for Arc<SqlGraph> {
    fn evaluate(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<GraphResult, EvalError>> {
        let g = self.clone();
        Box::pin(async move {
            let mut client = g.pool.get().await.map_err(pool_error)?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db_error)?;
            let rows = g.query.query(&tx, &scope, &params).await?;
            let total = match &g.total {
                Some(t) => {
                    let r = t.query(&tx, &scope, &params).await?;
                    match r.first().map(|row| row.try_get::<_, SqlValue>(0)) {
                        Some(Ok(SqlValue(Value::Int(n)))) => Some(n),
                        _ => {
                            return Err(EvalError::internal(format!(
                                "graph `{}`: total_sql must return one integer, such as SELECT count(*) ...",
                                g.name
                            )))
                        }
                    }
                }
                None => None,
            };
            tx.commit().await.map_err(db_error)?;
            g.build(rows, total)
        })
    }
}

/// A declared change of a SQL mutation.
#[derive(Debug, Clone)]
pub struct ChangeSpec {
    /// The table.
    pub table: String,
    /// Changed columns (empty: any).
    pub columns: Vec<String>,
    /// A returned column holding the changed row's id, if any.
    pub id_from: Option<String>,
}

/// A mutation made of statements run in one transaction. The first row of
/// the last statement, if any, is returned to the caller.
pub struct SqlMutation {
    /// The mutation name, for messages.
    pub name: String,
    /// The pool.
    pub pool: Pool,
    /// Statements, in order.
    pub statements: Vec<Statement>,
    /// Changes reported after commit.
    pub changes: Vec<ChangeSpec>,
}

impl MutationHandler for Arc<SqlMutation> {
    fn run(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<MutationOutput, EvalError>> {
        let m = self.clone();
        Box::pin(async move {
            let mut client = m.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let mut last = Vec::new();
            for s in &m.statements {
                last = s.query(&tx, &scope, &params).await?;
            }
            let mut data = Fields::new();
            if let Some(row) = last.first() {
                for (i, col) in row.columns().iter().enumerate() {
                    let SqlValue(v) = row.try_get(i).map_err(|e| {
                        EvalError::internal(format!(
                            "mutation `{}`: column `{}`: {}",
                            m.name,
                            col.name(),
                            source_text(&e)
                        ))
                    })?;
                    data.insert(col.name().to_owned(), v);
                }
            }
            tx.commit().await.map_err(db_error)?;
            let changes = m
                .changes
                .iter()
                .map(|c| Change {
                    table: c.table.clone(),
                    id: c
                        .id_from
                        .as_ref()
                        .and_then(|f| data.get(f))
                        .map(Value::key_text)
                        .unwrap_or_default(),
                    columns: c.columns.clone(),
                    route_values: Default::default(),
                })
                .collect();
            Ok(MutationOutput { data, changes })
        })
    }
}

/// Parameter values by name, for tests and tools.
pub fn params_map<const N: usize>(pairs: [(&str, Value); N]) -> HashMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
