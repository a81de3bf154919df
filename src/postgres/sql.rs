//! Graphs and mutations written as SQL, as the standalone server declares
//! them in its config. Parameters are named (`:project_id`); the caller's
//! `:workspace_id` and `:user_id` come from the identity, never from input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row};

use super::named::{rewrite, rewrite_with, NamedSql};
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
    /// The statement as written, with its `:name` placeholders.
    source: String,
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
        Ok(Statement {
            named,
            source: sql.to_owned(),
        })
    }

    /// The statement with positional parameters, as sent to Postgres.
    pub fn sql(&self) -> &str {
        &self.named.sql
    }

    /// Whether the statement reads the caller's user id.
    pub fn uses_user(&self) -> bool {
        self.named.names.iter().any(|n| n == USER_PARAM)
    }

    /// The statement answering many parameter sets at once: each
    /// placeholder becomes a column of unnested arrays (of the types
    /// Postgres inferred for it, `types`), and the statement runs once per
    /// array position through `LATERAL`. Each row starts with that position
    /// (1-based) and otherwise is a row of the statement.
    fn lateral(&self, types: &[Type]) -> Result<String, String> {
        let inner = rewrite_with(&self.source, |n, _| format!("{ARGS}.p{n}"))?.sql;
        let inner = inner.trim_end().trim_end_matches(';');
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{}.{}[]", i + 1, quote(t.schema()), quote(t.name())))
            .collect();
        let columns: Vec<String> = (1..=types.len()).map(|n| format!("p{n}")).collect();
        Ok(format!(
            "SELECT {ARGS}.{POSITION}, {ARGS}_q.* FROM unnest({}) WITH ORDINALITY AS {ARGS}({}, {POSITION}) \
             CROSS JOIN LATERAL ({inner}) AS {ARGS}_q",
            arrays.join(", "),
            columns.join(", ")
        ))
    }

    /// Runs the lateral form of the statement for every `(scope, params)`;
    /// returns the rows grouped by item, in order.
    async fn query_many(
        &self,
        lateral: &str,
        client: &deadpool_postgres::Transaction<'_>,
        items: &[(Scope, Params)],
    ) -> Result<Vec<Vec<Row>>, EvalError> {
        let values: Vec<Vec<Value>> = items.iter().map(|(s, p)| self.values(s, p)).collect();
        let columns: Vec<Vec<SqlParam<'_>>> = (0..self.named.names.len())
            .map(|k| values.iter().map(|v| SqlParam(&v[k])).collect())
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let stmt = client.prepare_cached(lateral).await.map_err(db_error)?;
        let mut out: Vec<Vec<Row>> = (0..items.len()).map(|_| Vec::new()).collect();
        for row in client.query(&stmt, &refs).await.map_err(db_error)? {
            let at: i64 = row.try_get(0).map_err(db_error)?;
            match out.get_mut((at - 1) as usize) {
                Some(rows) => rows.push(row),
                None => return Err(EvalError::internal("a lateral row names no item")),
            }
        }
        Ok(out)
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
        if let Some(bind) = src.downcast_ref::<super::values::BindError>() {
            return EvalError::new(EvalErrorKind::InvalidArgument, bind.0.clone());
        }
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
    /// The lateral forms of the statements, found at startup by
    /// [`SqlGraph::shape`]; `None` when the graph cannot use them.
    pub lateral: std::sync::OnceLock<Option<Lateral>>,
}

/// A graph's statements in the form that answers many views in one query.
#[derive(Debug, Clone)]
pub struct Lateral {
    query: String,
    total: Option<String>,
}

/// The alias of the unnested arguments in lateral statements.
const ARGS: &str = "arcana_args";
/// The ordinality column: which item a row answers.
const POSITION: &str = "arcana_item";

impl SqlGraph {
    /// Builds the result from rows whose first `skip` columns are not the
    /// graph's (the lateral form's item position).
    fn build(
        &self,
        rows: Vec<Row>,
        total: Option<i64>,
        skip: usize,
    ) -> Result<GraphResult, EvalError> {
        let mut out = GraphResult::new();
        for row in rows {
            let mut top = Fields::new();
            let mut nested: BTreeMap<&str, Fields> = BTreeMap::new();
            for (i, col) in row.columns().iter().enumerate().skip(skip) {
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
        let mut total_params = None;
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
            total_params = Some(stmt.params().to_vec());
        }
        let lateral = self
            .prepare_lateral(client, stmt.params(), total_params.as_deref())
            .await;
        if let Err(e) = &lateral {
            tracing::debug!(graph = %self.name, error = %e, "views of this graph are evaluated one by one");
        }
        let _ = self.lateral.set(lateral.ok());
        Ok(fields)
    }
}

impl SqlGraph {
    /// Builds and prepares the lateral forms of the statements.
    async fn prepare_lateral(
        &self,
        client: &tokio_postgres::Client,
        params: &[Type],
        total_params: Option<&[Type]>,
    ) -> Result<Lateral, String> {
        if params.is_empty() {
            return Err("no parameters: every view of the graph is the same query".into());
        }
        let query = self.query.lateral(params)?;
        client.prepare(&query).await.map_err(|e| e.to_string())?;
        let total = match (&self.total, total_params) {
            (Some(t), Some(types)) if !types.is_empty() => {
                let sql = t.lateral(types)?;
                client.prepare(&sql).await.map_err(|e| e.to_string())?;
                Some(sql)
            }
            (Some(_), _) => return Err("total_sql has no parameters".into()),
            (None, _) => None,
        };
        Ok(Lateral { query, total })
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
            let tx = read_snapshot(&mut client).await?;
            let rows = g.query.query(&tx, &scope, &params).await?;
            let total = match &g.total {
                Some(t) => Some(g.total_of(&t.query(&tx, &scope, &params).await?, 0)?),
                None => None,
            };
            tx.commit().await.map_err(db_error)?;
            g.build(rows, total, 0)
        })
    }

    fn evaluate_many(
        &self,
        items: Vec<(Scope, Params)>,
    ) -> BoxFuture<'static, Vec<Result<GraphResult, EvalError>>> {
        let g = self.clone();
        Box::pin(async move {
            if items.len() > 1 && matches!(g.lateral.get(), Some(Some(_))) {
                match g.evaluate_lateral(&items).await {
                    Ok(results) => return results,
                    // One bad item fails the shared query: evaluate each on
                    // its own so the others still refresh.
                    Err(e) => {
                        tracing::debug!(graph = %g.name, error = %e, "lateral evaluation failed")
                    }
                }
            }
            let each: Vec<_> = items.into_iter().map(|(s, p)| g.evaluate(s, p)).collect();
            futures_util::future::join_all(each).await
        })
    }
}

/// A read-only repeatable-read transaction, so a graph's queries agree.
async fn read_snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, EvalError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)
}

impl SqlGraph {
    /// The count in column `at` of the total query's first row.
    fn total_of(&self, rows: &[Row], at: usize) -> Result<i64, EvalError> {
        match rows.first().map(|row| row.try_get::<_, SqlValue>(at)) {
            Some(Ok(SqlValue(Value::Int(n)))) => Ok(n),
            _ => Err(EvalError::internal(format!(
                "graph `{}`: total_sql must return one integer, such as SELECT count(*) ...",
                self.name
            ))),
        }
    }

    /// Evaluates many views in one transaction of (at most) two queries,
    /// with the lateral forms [`SqlGraph::shape`] prepared.
    pub async fn evaluate_lateral(
        &self,
        items: &[(Scope, Params)],
    ) -> Result<Vec<Result<GraphResult, EvalError>>, EvalError> {
        let Some(Some(lateral)) = self.lateral.get() else {
            return Err(EvalError::internal(format!(
                "graph `{}` has no lateral form",
                self.name
            )));
        };
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = read_snapshot(&mut client).await?;
        let rows = self.query.query_many(&lateral.query, &tx, items).await?;
        let totals = match (&self.total, &lateral.total) {
            (Some(t), Some(sql)) => Some(t.query_many(sql, &tx, items).await?),
            _ => None,
        };
        tx.commit().await.map_err(db_error)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, rows) in rows.into_iter().enumerate() {
            let total = match &totals {
                None => None,
                Some(t) => match self.total_of(&t[i], 1) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        out.push(Err(e));
                        continue;
                    }
                },
            };
            out.push(self.build(rows, total, 1));
        }
        Ok(out)
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
                    values: None,
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
