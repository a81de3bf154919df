//! A graph written as SQL: its statement evaluated for one view, for a
//! round of views at once (one lateral query), or for a window, and the
//! rows read back as a normalized result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, Row};

use super::context::TxContext;
use super::sql::{column_not_null, connection, db_error, named, source_text, Statement};
use super::values::SqlValue;
use crate::engine::{
    row_id, EvalError, Factory, Fields, GraphResult, Params, Ref, Scope, Seen, Value,
};

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

impl Factory for Arc<SqlGraph> {
    fn evaluate(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<GraphResult, EvalError>> {
        let g = self.clone();
        Box::pin(async move {
            let (rows, total, window, seen) =
                g.fetch(&scope, &params).await.map_err(|e| g.named(e))?;
            let mut out = g.build(rows, total, usize::from(window.is_some()))?;
            out.seen = seen;
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
    /// window its edges (its rows then lead with the part column); and the
    /// snapshot they were read in.
    async fn fetch(
        &self,
        scope: &Scope,
        params: &Params,
    ) -> Result<(Vec<Row>, Option<i64>, Option<WindowFacts>, Option<Seen>), EvalError> {
        let mut client = connection(&self.pool, &self.ctx).await?;
        let tx = read_snapshot(&mut client).await?;
        self.ctx.enter(&tx, scope).await?;
        let read = async {
            Ok(match (&self.window, params.window()) {
                (Some(order), Some(w)) => {
                    let (rows, edges, reach) = self
                        .query
                        .query_window(&tx, scope, params, order, w)
                        .await?;
                    (rows, Some((edges, reach)))
                }
                _ => (self.query.query(&tx, scope, params).await?, None),
            })
        };
        let ((rows, window), seen) = both(tokio::join!(read, seen(&tx)))?;
        let total = match &self.total {
            Some(t) => Some(self.total_of(&t.query(&tx, scope, params).await?, 0)?),
            None => None,
        };
        tx.commit().await.map_err(db_error)?;
        Ok((rows, total, window, seen))
    }

    fn named(&self, e: EvalError) -> EvalError {
        named(&format!("graph `{}`", self.name), &self.ctx, e)
    }
}

/// The snapshot a repeatable-read transaction reads in. Sent beside the
/// transaction's queries, so it costs no round trip of its own.
async fn seen(tx: &deadpool_postgres::Transaction<'_>) -> Result<Option<Seen>, EvalError> {
    let rows = tx
        .simple_query("SELECT txid_current_snapshot()::text")
        .await
        .map_err(db_error)?;
    Ok(rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(Seen::parse),
        _ => None,
    }))
}

/// A read and the snapshot query sent beside it. When the read fails the
/// transaction is aborted and the snapshot query fails too: the read's
/// error is the one that says what went wrong.
fn both<T>(
    (read, seen): (Result<T, EvalError>, Result<Option<Seen>, EvalError>),
) -> Result<(T, Option<Seen>), EvalError> {
    Ok((read?, seen?))
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
    ) -> Result<(Vec<Vec<Row>>, Option<Vec<Vec<Row>>>, Option<Seen>), EvalError> {
        let mut client = connection(&self.pool, &self.ctx).await?;
        let tx = read_snapshot(&mut client).await?;
        self.ctx.enter(&tx, scope).await?;
        let (rows, seen) = both(tokio::join!(
            self.query.query_many(&lateral.query, &tx, items),
            seen(&tx)
        ))?;
        let totals = match (&self.total, &lateral.total) {
            (Some(t), Some(sql)) => Some(t.query_many(sql, &tx, items).await?),
            _ => None,
        };
        tx.commit().await.map_err(db_error)?;
        Ok((rows, totals, seen))
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
        let (rows, totals, seen) = self
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
            out.push(self.build(rows, total, 1).map(|mut r| {
                r.seen = seen.clone();
                r
            }));
        }
        Ok(out)
    }
}
