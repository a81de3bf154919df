//! Graphs and mutations written as SQL, as the standalone server declares
//! them in its config. Parameters are named (`:project_id`); the caller's
//! `:workspace_id` and `:user_id` come from the identity, never from input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row};

use super::context::TxContext;
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
        for row in client
            .query(&stmt, &refs)
            .await
            .map_err(|e| self.bind_error(e))?
        {
            let at: i64 = row.try_get(0).map_err(db_error)?;
            match out.get_mut((at - 1) as usize) {
                Some(rows) => rows.push(row),
                None => return Err(EvalError::internal("a lateral row names no item")),
            }
        }
        Ok(out)
    }

    /// [`db_error`], naming the param a value that could not be bound was
    /// given for (tokio-postgres reports only its position).
    fn bind_error(&self, e: tokio_postgres::Error) -> EvalError {
        let at = e
            .to_string()
            .strip_prefix("error serializing parameter ")
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<usize>()
                    .ok()
            });
        let mut err = db_error(e);
        if err.kind == EvalErrorKind::InvalidArgument {
            if let Some(at) = at {
                err.message = match self.named.names.get(at) {
                    Some(name) => format!("param `{name}`: {}", err.message),
                    // Past the statement's own params: a window's cursor.
                    None => format!("window cursor: {}", err.message),
                };
            }
        }
        err
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
        self.query_text(client, &self.named.sql, self.values(scope, params))
            .await
    }

    /// Runs `sql`, a statement built around this one, with `values` bound.
    async fn query_text(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<Row>, EvalError> {
        let binds: Vec<SqlParam<'_>> = values.iter().map(SqlParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        // Cached per connection: one parse per statement and connection (a
        // window statement's text depends only on the window's shape).
        let stmt = client.prepare_cached(sql).await.map_err(db_error)?;
        client
            .query(&stmt, &refs)
            .await
            .map_err(|e| self.bind_error(e))
    }

    /// Runs the statement wrapped in `window`'s keyset parts; returns the
    /// window's rows (each led by its part column) and its edges.
    async fn query_window(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        scope: &Scope,
        params: &Params,
        order: &crate::engine::WindowOrder,
        window: &crate::engine::Window,
    ) -> Result<(Vec<Row>, crate::engine::WindowEdges, crate::engine::Reach), EvalError> {
        let q = super::window_sql::build(&self.named.sql, self.named.names.len(), order, window);
        let mut values = self.values(scope, params);
        values.extend(q.binds.iter().cloned());
        let rows = self.query_text(client, &q.sql, values).await?;
        q.settle(rows)
    }
}

/// Maps a database error to an evaluation error a person can act on. The
/// database's detail and any row values are left out: a constraint's detail
/// ("Key (assignee_id)=(x) is not present") would tell a caller whether
/// another tenant's row exists. Constraint violations name the kind and the
/// constraint; a query cancelled by `statement_timeout` is DEADLINE_EXCEEDED.
pub fn db_error(e: tokio_postgres::Error) -> EvalError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let on = |what: &str| match (db.constraint(), db.table(), db.column()) {
            (Some(c), _, _) => format!("{what} (constraint `{c}`, SQLSTATE {code})"),
            (None, Some(t), Some(col)) => {
                format!("{what} (column `{col}` of `{t}`, SQLSTATE {code})")
            }
            _ => format!("{what} (SQLSTATE {code})"),
        };
        let violation = |what: &str| EvalError::new(EvalErrorKind::FailedPrecondition, on(what));
        return match code {
            "23503" => violation(
                "foreign key violation: a referenced row does not exist or is out of reach, \
                 or the row is still referenced",
            ),
            "23505" => violation("unique violation: such a row already exists"),
            "23514" => violation("check violation"),
            "23502" => violation("not-null violation"),
            "23P01" => violation("exclusion violation"),
            "40001" | "40P01" => EvalError::new(
                EvalErrorKind::Aborted,
                format!(
                    "{} (SQLSTATE {code}): a concurrent transaction got in the way; retry",
                    if code == "40P01" {
                        "deadlock"
                    } else {
                        "serialization failure"
                    }
                ),
            ),
            "57014" => EvalError::new(
                EvalErrorKind::DeadlineExceeded,
                "the query was cancelled at its time limit",
            ),
            "42501" => EvalError::new(
                EvalErrorKind::PermissionDenied,
                format!(
                    "the database refused access (SQLSTATE {code}): {}",
                    db.message()
                ),
            ),
            _ => {
                let kind = match &code[..2] {
                    "22" => EvalErrorKind::InvalidArgument,
                    "23" | "40" => EvalErrorKind::FailedPrecondition,
                    "08" | "53" | "57" => EvalErrorKind::Unavailable,
                    _ => EvalErrorKind::Internal,
                };
                EvalError::new(kind, format!("database error {code}: {}", db.message()))
            }
        };
    }
    if e.is_closed() {
        return EvalError::new(
            EvalErrorKind::Unavailable,
            "the database connection closed; retry",
        );
    }
    if std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        // Refused, reset or timed out: the database is down or restarting.
        return EvalError::new(
            EvalErrorKind::Unavailable,
            format!("the database is unreachable ({}); retry", source_text(&e)),
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

/// A pooled connection, or UNAVAILABLE when none frees up in time.
async fn connection(pool: &Pool, ctx: &TxContext) -> Result<deadpool_postgres::Object, EvalError> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        deadpool_postgres::PoolError::Timeout(_) => EvalError::new(
            EvalErrorKind::Unavailable,
            format!(
                "no database connection became free within {} ms (database.pool_timeout_ms); retry later",
                ctx.pool_timeout_ms
            ),
        ),
        other => EvalError::new(
            EvalErrorKind::Unavailable,
            format!("no database connection available: {other}"),
        ),
    })
}

/// Prefixes an error with what failed (`graph `x``), and says which limit
/// cancelled a query.
fn named(what: &str, ctx: &TxContext, e: EvalError) -> EvalError {
    let message = match e.kind {
        EvalErrorKind::DeadlineExceeded => format!(
            "{what}: cancelled after running longer than {}",
            ctx.timeout_text()
        ),
        _ => format!("{what}: {}", e.message),
    };
    EvalError::new(e.kind, message)
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
    /// How its transactions are set up.
    pub ctx: TxContext,
    /// The total order, for graphs kept live through windows.
    pub window: Option<crate::engine::WindowOrder>,
}

/// A window's edges and the order keys its evaluation read.
type WindowFacts = (crate::engine::WindowEdges, crate::engine::Reach);

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
        // The field-name lists refs carry, one allocation per distinct list.
        let mut names: Vec<Arc<[String]>> = Vec::new();
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
            r.fields = shared_names(&mut names, &top);
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
                n.fields = shared_names(&mut names, &fields);
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

/// `fields`' names as a list shared with earlier rows of the same shape.
fn shared_names(cache: &mut Vec<Arc<[String]>>, fields: &Fields) -> Arc<[String]> {
    let same = |l: &Arc<[String]>| {
        l.len() == fields.len() && l.iter().zip(fields.keys()).all(|(a, b)| a == b)
    };
    if let Some(l) = cache.iter().find(|l| same(l)) {
        return l.clone();
    }
    let l: Arc<[String]> = fields.keys().cloned().collect();
    cache.push(l.clone());
    l
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
            let not_null = column_not_null(client, col).await;
            fields.push(crate::engine::FieldShape {
                nested,
                name,
                kind,
                not_null,
            });
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
        for c in self.window.iter().flat_map(|w| &w.order) {
            if !has("", c) {
                return Err(format!(
                    "the query returns no `{c}` column, which window.order names"
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

/// Whether a result column is a plain table column declared NOT NULL.
/// Computed columns, and any lookup that fails, count as nullable.
async fn column_not_null(client: &tokio_postgres::Client, col: &tokio_postgres::Column) -> bool {
    let (Some(table), Some(attnum)) = (col.table_oid(), col.column_id()) else {
        return false;
    };
    client
        .query_opt(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = $1 AND attnum = $2",
            &[&table, &attnum],
        )
        .await
        .ok()
        .flatten()
        .is_some_and(|r| r.get::<_, bool>(0))
}

impl SqlMutation {
    /// Prepares every statement, so a broken one fails startup, and returns
    /// the fields of the last statement's rows (what a call's `data` holds).
    pub async fn check(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<crate::engine::FieldShape>, String> {
        let mut fields = Vec::new();
        for (i, s) in self.statements.iter().enumerate() {
            let stmt = client.prepare(s.sql()).await.map_err(|e| {
                format!(
                    "statement {}: {}",
                    i + 1,
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                )
            })?;
            fields.clear();
            for col in stmt.columns() {
                // A type the reader cannot decode fails the call, not startup.
                let Ok(kind) = super::values::kind_of(col.type_()) else {
                    continue;
                };
                let not_null = column_not_null(client, col).await;
                fields.push(crate::engine::FieldShape {
                    nested: String::new(),
                    name: col.name().to_owned(),
                    kind,
                    not_null,
                });
            }
        }
        Ok(fields)
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
            let (rows, total, window) = g.fetch(&scope, &params).await.map_err(|e| g.named(e))?;
            let mut out = g.build(rows, total, usize::from(window.is_some()))?;
            if let Some((edges, reach)) = window {
                out.window = Some(edges);
                // A total counts every row of the list, so any change of
                // the table can move it: only a window without one can
                // skip changes outside what it read.
                out.reach = g.total.is_none().then_some(reach);
            }
            Ok(out)
        })
    }

    fn evaluate_many(
        &self,
        items: Vec<(Scope, Params)>,
    ) -> BoxFuture<'static, Vec<Result<GraphResult, EvalError>>> {
        let g = self.clone();
        Box::pin(async move {
            // One transaction carries one identity: views of different
            // workspaces (or users) never share a query.
            let groups = by_scope(&items);
            let each = groups.iter().map(|at| {
                let group: Vec<(Scope, Params)> = at.iter().map(|&i| items[i].clone()).collect();
                g.evaluate_group(group)
            });
            let results = futures_util::future::join_all(each).await;
            let mut out: Vec<Option<Result<GraphResult, EvalError>>> =
                (0..items.len()).map(|_| None).collect();
            for (at, rs) in groups.iter().zip(results) {
                for (&i, r) in at.iter().zip(rs) {
                    out[i] = Some(r);
                }
            }
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| Err(EvalError::internal("an item got no result"))))
                .collect()
        })
    }
}

/// The positions of `items`, grouped by scope, groups in order of first
/// appearance.
fn by_scope(items: &[(Scope, Params)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<&Scope, usize> = HashMap::new();
    for (i, (scope, _)) in items.iter().enumerate() {
        let g = *index.entry(scope).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

impl SqlGraph {
    /// Evaluates items of one scope: one lateral query when it can.
    async fn evaluate_group(
        self: &Arc<Self>,
        items: Vec<(Scope, Params)>,
    ) -> Vec<Result<GraphResult, EvalError>> {
        let windowed = items.iter().any(|(_, p)| p.window().is_some());
        if items.len() > 1 && !windowed && matches!(self.lateral.get(), Some(Some(_))) {
            match self.evaluate_lateral(&items).await {
                Ok(results) => {
                    // For the evaluation round's span, if traced.
                    tracing::Span::current().record("lateral", true);
                    return results;
                }
                // One bad item fails the shared query: evaluate each on
                // its own so the others still refresh.
                Err(e) => {
                    tracing::debug!(graph = %self.name, error = %e, "lateral evaluation failed")
                }
            }
        }
        let each: Vec<_> = items
            .into_iter()
            .map(|(s, p)| self.evaluate(s, p))
            .collect();
        futures_util::future::join_all(each).await
    }

    /// The rows and total of one view, in one transaction, and for a
    /// window its edges (its rows then lead with the part column).
    async fn fetch(
        &self,
        scope: &Scope,
        params: &Params,
    ) -> Result<(Vec<Row>, Option<i64>, Option<WindowFacts>), EvalError> {
        let mut client = connection(&self.pool, &self.ctx).await?;
        let tx = read_snapshot(&mut client).await?;
        self.ctx.enter(&tx, scope).await?;
        let (rows, window) = match (&self.window, params.window()) {
            (Some(order), Some(w)) => {
                let (rows, edges, reach) = self
                    .query
                    .query_window(&tx, scope, params, order, w)
                    .await?;
                (rows, Some((edges, reach)))
            }
            _ => (self.query.query(&tx, scope, params).await?, None),
        };
        let total = match &self.total {
            Some(t) => Some(self.total_of(&t.query(&tx, scope, params).await?, 0)?),
            None => None,
        };
        tx.commit().await.map_err(db_error)?;
        Ok((rows, total, window))
    }

    fn named(&self, e: EvalError) -> EvalError {
        named(&format!("graph `{}`", self.name), &self.ctx, e)
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
    /// The rows (and totals) of many views of one scope, grouped by item.
    async fn fetch_many(
        &self,
        lateral: &Lateral,
        scope: &Scope,
        items: &[(Scope, Params)],
    ) -> Result<(Vec<Vec<Row>>, Option<Vec<Vec<Row>>>), EvalError> {
        let mut client = connection(&self.pool, &self.ctx).await?;
        let tx = read_snapshot(&mut client).await?;
        self.ctx.enter(&tx, scope).await?;
        let rows = self.query.query_many(&lateral.query, &tx, items).await?;
        let totals = match (&self.total, &lateral.total) {
            (Some(t), Some(sql)) => Some(t.query_many(sql, &tx, items).await?),
            _ => None,
        };
        tx.commit().await.map_err(db_error)?;
        Ok((rows, totals))
    }

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

    /// Evaluates many views with the lateral forms [`SqlGraph::shape`]
    /// prepared: one transaction of (at most) two queries per scope, since
    /// a transaction carries one identity for row-level security. Results
    /// are in the order of `items`.
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
        let mut out: Vec<Option<Result<GraphResult, EvalError>>> =
            (0..items.len()).map(|_| None).collect();
        for at in by_scope(items) {
            let group: Vec<(Scope, Params)> = at.iter().map(|&i| items[i].clone()).collect();
            let results = self.lateral_group(lateral, &group).await?;
            for (i, r) in at.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EvalError::internal("an item got no result"))))
            .collect())
    }

    /// One lateral query (and total query) for items of one scope.
    async fn lateral_group(
        &self,
        lateral: &Lateral,
        items: &[(Scope, Params)],
    ) -> Result<Vec<Result<GraphResult, EvalError>>, EvalError> {
        let Some((scope, _)) = items.first() else {
            return Ok(Vec::new());
        };
        let (rows, totals) = self
            .fetch_many(lateral, scope, items)
            .await
            .map_err(|e| self.named(e))?;
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
    /// The table has a workspace column: the change concerns only the
    /// caller's workspace, whose rows alone the mutation can touch.
    pub scoped: bool,
    /// Returned columns holding the changed row's route values (see
    /// `Route`), the same before and after the write.
    pub route_from: Vec<String>,
}

pub use crate::config::Expect;

impl Expect {
    /// Why `n` touched rows are not what was expected, with the status
    /// kind; `None` when they are.
    fn refuse(self, n: u64) -> Option<(EvalErrorKind, String)> {
        match (self, n) {
            (Expect::Any, _) | (Expect::Some, 1..) | (Expect::One, 1) => None,
            (_, 0) => Some((
                EvalErrorKind::NotFound,
                "no row matched; nothing was written".into(),
            )),
            (_, n) => Some((
                EvalErrorKind::FailedPrecondition,
                format!("{n} rows matched where one was expected; nothing was written"),
            )),
        }
    }
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
    /// How many rows the statements must touch.
    pub expect: Expect,
    /// How its transaction is set up.
    pub ctx: TxContext,
}

impl SqlMutation {
    /// Runs the statements in one transaction; returns the returned fields.
    /// Also returns how many rows the last statement returned.
    async fn write(&self, scope: &Scope, params: &Params) -> Result<(Fields, usize), EvalError> {
        let mut client = connection(&self.pool, &self.ctx).await?;
        let tx = client.transaction().await.map_err(db_error)?;
        self.ctx.enter(&tx, scope).await?;
        let mut last = Vec::new();
        let mut touched = 0u64;
        for s in &self.statements {
            let (rows, n) = s.run(&tx, scope, params).await?;
            touched += n;
            last = rows;
        }
        if let Some((kind, why)) = self.expect.refuse(touched) {
            // Dropping the transaction rolls it back.
            return Err(EvalError::new(kind, why));
        }
        let mut data = Fields::new();
        if let Some(row) = last.first() {
            for (i, col) in row.columns().iter().enumerate() {
                let SqlValue(v) = row.try_get(i).map_err(|e| {
                    EvalError::internal(format!("column `{}`: {}", col.name(), source_text(&e)))
                })?;
                data.insert(col.name().to_owned(), v);
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok((data, last.len()))
    }
}

impl Statement {
    /// Runs a mutation statement: its rows, and how many rows it touched
    /// (returned, or affected when it returns none).
    async fn run(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        scope: &Scope,
        params: &Params,
    ) -> Result<(Vec<Row>, u64), EvalError> {
        let values = self.values(scope, params);
        let binds: Vec<SqlParam<'_>> = values.iter().map(SqlParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        let stmt = tx.prepare_cached(&self.named.sql).await.map_err(db_error)?;
        if stmt.columns().is_empty() {
            let n = tx
                .execute(&stmt, &refs)
                .await
                .map_err(|e| self.bind_error(e))?;
            return Ok((Vec::new(), n));
        }
        let rows = tx
            .query(&stmt, &refs)
            .await
            .map_err(|e| self.bind_error(e))?;
        let n = rows.len() as u64;
        Ok((rows, n))
    }
}

impl MutationHandler for Arc<SqlMutation> {
    fn run(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<MutationOutput, EvalError>> {
        let m = self.clone();
        Box::pin(async move {
            // A transaction that lost to a concurrent one is run again, a
            // bounded number of times, after a short random pause.
            let mut tries = 0u32;
            let (data, returned) = loop {
                match m.write(&scope, &params).await {
                    Err(e)
                        if e.kind == EvalErrorKind::Aborted && tries < m.ctx.mutation_retries =>
                    {
                        tries += 1;
                        let pause = rand::random_range(1..=10u64 << tries.min(6));
                        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    }
                    Err(mut e) => {
                        if e.kind == EvalErrorKind::Aborted {
                            e.message = format!(
                                "{} (tried {} times, database.mutation_retries = {})",
                                e.message,
                                tries + 1,
                                m.ctx.mutation_retries
                            );
                        }
                        return Err(named(&format!("mutation `{}`", m.name), &m.ctx, e));
                    }
                    Ok(r) => break r,
                }
            };
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
                    // Only one returned row is in `data`: with more, the
                    // route values are unknown.
                    route_values: c
                        .route_from
                        .iter()
                        .filter(|_| returned == 1)
                        .filter_map(|col| {
                            let v = data.get(col)?.key_text();
                            Some((col.clone(), std::collections::BTreeSet::from([v])))
                        })
                        .collect(),
                    values: None,
                    workspace: c.scoped.then(|| scope.workspace_id.to_string()),
                    order_keys: Default::default(),
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
