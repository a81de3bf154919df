//! A mutation written as SQL: its statements run in one transaction, the
//! rows they touch checked against what the mutation expects, and the
//! changes it declares reported.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::context::TxContext;
use super::sql::{column_not_null, connection, db_error, named, source_text, Statement};
use super::values::{SqlParam, SqlValue};
use crate::engine::{
    Change, EvalError, EvalErrorKind, Fields, MutationHandler, MutationOutput, Params, Scope, Value,
};

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
