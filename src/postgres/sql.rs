//! Graphs and mutations written as SQL, as the standalone server declares
//! them in its config. Parameters are named (`:project_id`); the caller's
//! `:workspace_id` and `:user_id` come from the identity, never from input.

use deadpool_postgres::Pool;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::context::TxContext;
use super::named::{rewrite, rewrite_with, NamedSql};
use super::values::SqlParam;
use crate::engine::{EvalError, EvalErrorKind, Params, Scope, Value};

/// The identity parameters every statement may use.
pub const WORKSPACE_PARAM: &str = "workspace_id";
/// The caller's user id; graphs using it must be per-user.
pub const USER_PARAM: &str = "user_id";

/// A statement with its named parameters resolved to positions.
#[derive(Debug, Clone)]
pub struct Statement {
    pub(super) named: NamedSql,
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
    pub(super) fn lateral(&self, types: &[Type]) -> Result<String, String> {
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
    pub(super) async fn query_many(
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
    pub(super) fn bind_error(&self, e: tokio_postgres::Error) -> EvalError {
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

    pub(super) fn values(&self, scope: &Scope, params: &Params) -> Vec<Value> {
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

    pub(super) async fn query(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        scope: &Scope,
        params: &Params,
    ) -> Result<Vec<Row>, EvalError> {
        self.query_text(client, &self.named.sql, self.values(scope, params))
            .await
    }

    /// Runs `sql`, a statement built around this one, with `values` bound.
    pub(super) async fn query_text(
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
    pub(super) async fn query_window(
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
pub(super) async fn connection(
    pool: &Pool,
    ctx: &TxContext,
) -> Result<deadpool_postgres::Object, EvalError> {
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
pub(super) fn named(what: &str, ctx: &TxContext, e: EvalError) -> EvalError {
    let message = match e.kind {
        EvalErrorKind::DeadlineExceeded => format!(
            "{what}: cancelled after running longer than {}",
            ctx.timeout_text()
        ),
        _ => format!("{what}: {}", e.message),
    };
    EvalError::new(e.kind, message)
}

/// The alias of the unnested arguments in lateral statements.
pub(super) const ARGS: &str = "arcana_args";

/// The ordinality column: which item a row answers.
pub(super) const POSITION: &str = "arcana_item";

pub(super) fn source_text(e: &tokio_postgres::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

/// Whether a result column is a plain table column declared NOT NULL.
/// Computed columns, and any lookup that fails, count as nullable.
pub(super) async fn column_not_null(
    client: &tokio_postgres::Client,
    col: &tokio_postgres::Column,
) -> bool {
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
