//! Builds the registry of graphs and mutations a config declares: each
//! SQL statement parsed and prepared against the database, so a broken
//! query, an unreadable column type or a missing key column stops startup
//! with a message naming the graph or mutation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use deadpool_postgres::Pool;

use super::catalog::check_key;
use super::context::TxContext;
use super::sql::{Statement, USER_PARAM, WORKSPACE_PARAM};
use super::sql_graph::{NestedSpec, SqlGraph};
use super::sql_mutation::{ChangeSpec, SqlMutation};
use crate::config::{
    Config, GraphConfig, MutationConfig, ParamConfig, RouteConfig, SqlList, WindowConfig,
};
use crate::engine::{
    GraphDef, MutationDef, ParamSchema, ParamSpec, ParamType, Registry, Route, TableDep, Value,
};

/// The registry of `config`'s graphs and mutations, checked on `pool`.
pub async fn build(config: &Config, pool: &Pool) -> Result<Registry, String> {
    let client = pool.get().await.map_err(|e| {
        format!(
            "connecting to the database: {}",
            crate::postgres::tls::error_chain(&e)
        )
    })?;
    let ctx = TxContext::from_config(&config.database);
    if let Some(role) = &ctx.eval_role {
        check_role(&client, role).await?;
    }
    let mut reg = Registry::new();
    for g in &config.graphs {
        let named = |e: String| format!("graph `{}`: {e}", g.name);
        let (mut def, sql) = graph(g, pool, &ctx).map_err(named)?;
        def.fields = sql.shape(&client).await.map_err(named)?;
        check_key(&client, &g.table, &g.key).await.map_err(named)?;
        for (name, n) in &g.nested {
            check_key(&client, &n.table, &n.key)
                .await
                .map_err(|e| named(format!("nested ref `{name}`: {e}")))?;
        }
        reg.register(def)?;
    }
    // A mutation runs for one workspace: its changes to tables with a
    // workspace column concern only that workspace's views.
    let scoped =
        crate::postgres::catalog::tables_with_column(&client, &config.rls.workspace_column).await?;
    for m in &config.mutations {
        let named = |e: String| format!("mutation `{}`: {e}", m.name);
        let (mut def, sql) = mutation(m, pool, &ctx, &scoped).map_err(named)?;
        def.fields = sql.check(&client).await.map_err(named)?;
        reg.register_mutation(def)?;
    }
    Ok(reg)
}

/// Checks that the server's role may switch to `database.eval_role`.
async fn check_role(client: &tokio_postgres::Client, role: &str) -> Result<(), String> {
    let r = client
        .query_one(
            "SELECT pg_has_role(current_user, r.oid, 'MEMBER'), r.rolsuper OR r.rolbypassrls \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await;
    match r {
        Ok(row) if !row.get::<_, bool>(0) => Err(format!(
            "database.eval_role: the server's role is not a member of role `{role}`: GRANT \"{role}\" TO the server's role"
        )),
        Ok(row) if row.get::<_, bool>(1) => Err(format!(
            "database.eval_role: role `{role}` is a superuser or has BYPASSRLS, so row-level security would not apply"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("database.eval_role: role `{role}` does not exist")),
    }
}

fn schema(params: &BTreeMap<String, ParamConfig>) -> Result<ParamSchema, String> {
    let mut out = ParamSchema::new();
    for (name, p) in params {
        if name == WORKSPACE_PARAM || name == USER_PARAM {
            return Err(format!(
                "param `{name}` is reserved: it always holds the caller's identity"
            ));
        }
        let conv = |v: &toml::Value| value_of(p.ty, v).map_err(|e| format!("param `{name}`: {e}"));
        let mut spec = ParamSpec::new(p.ty);
        spec.required = p.required;
        spec.default = p.default.as_ref().map(conv).transpose()?;
        spec.one_of = p.one_of.iter().map(conv).collect::<Result<_, _>>()?;
        spec.description = p.description.clone();
        out.insert(name.clone(), spec);
    }
    Ok(out)
}

fn value_of(ty: ParamType, v: &toml::Value) -> Result<Value, String> {
    Ok(match (ty, v) {
        (ParamType::String, toml::Value::String(s)) => Value::String(s.clone()),
        (ParamType::Uuid, toml::Value::String(s)) => Value::Uuid(
            crate::engine::params::parse_uuid(s).ok_or_else(|| format!("{s:?} is not a UUID"))?,
        ),
        (ParamType::Int, toml::Value::Integer(i)) => Value::Int(*i),
        (ParamType::Float, toml::Value::Float(f)) => Value::Float(*f),
        (ParamType::Float, toml::Value::Integer(i)) => Value::Float(*i as f64),
        (ParamType::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (ty, other) => return Err(format!("{other} is not a valid {} value", ty.name())),
    })
}

fn deps(map: &BTreeMap<String, Vec<String>>) -> Vec<TableDep> {
    map.iter()
        .map(|(t, cols)| {
            if cols.is_empty() || cols.iter().any(|c| c == "*") {
                TableDep::all(t)
            } else {
                TableDep {
                    table: t.clone(),
                    columns: Some(cols.iter().cloned().collect::<BTreeSet<_>>()),
                }
            }
        })
        .collect()
}

fn graph(
    g: &GraphConfig,
    pool: &Pool,
    ctx: &TxContext,
) -> Result<(GraphDef, Arc<SqlGraph>), String> {
    let params = schema(&g.params)?;
    let declared: Vec<&str> = params.keys().map(String::as_str).collect();
    let query = Statement::parse(&g.sql, &declared).map_err(|e| format!("sql: {e}"))?;
    let total = g
        .total_sql
        .as_deref()
        .map(|s| Statement::parse(s, &declared))
        .transpose()
        .map_err(|e| format!("total_sql: {e}"))?;
    let uses_user = query.uses_user() || total.as_ref().is_some_and(Statement::uses_user);
    if uses_user && !g.per_user {
        return Err(
            "the SQL uses :user_id, so set per_user = true (otherwise users would share one view)"
                .into(),
        );
    }
    if g.key.is_empty() {
        return Err("key must name at least one column".into());
    }
    if g.deps.is_empty() {
        return Err(
            "deps must name the tables the query reads, e.g. deps = { tasks = [\"*\"] }".into(),
        );
    }
    let nested: Vec<NestedSpec> = g
        .nested
        .iter()
        .map(|(name, n)| NestedSpec {
            name: name.clone(),
            table: n.table.clone(),
            key: n.key.clone(),
        })
        .collect();
    let window = g.window.as_ref().map(window_order).transpose()?;
    if let Some(w) = &window {
        if !w.order.ends_with(&g.key) {
            return Err(format!(
                "window.order must end with the key column(s) {:?}, so that rows never tie",
                g.key
            ));
        }
    }
    let factory = Arc::new(SqlGraph {
        window: window.clone(),
        name: g.name.clone(),
        pool: pool.clone(),
        query,
        total,
        table: g.table.clone(),
        key: g.key.clone(),
        nested,
        lateral: std::sync::OnceLock::new(),
        ctx: ctx.clone(),
    });
    let mut def = GraphDef::new(&g.name, factory.clone());
    def.description = g.description.clone();
    def.params = params;
    def.deps = deps(&g.deps);
    def.permissions = g.permissions.clone();
    def.per_user = g.per_user;
    def.routes = g
        .route
        .iter()
        .map(|(table, r)| {
            let (column, param) = match r {
                RouteConfig::Column(c) => (c.clone(), c.clone()),
                RouteConfig::Explicit { column, param } => (
                    column.clone(),
                    param.clone().unwrap_or_else(|| column.clone()),
                ),
            };
            Route {
                table: table.clone(),
                column,
                param,
            }
        })
        .collect();
    def.patchable = g
        .patch
        .iter()
        .map(|(t, cols)| (t.clone(), cols.iter().cloned().collect()))
        .collect();
    def.table = Some(g.table.clone());
    def.window = window;
    def.nested = g
        .nested
        .iter()
        .map(|(k, v)| (k.clone(), v.table.clone()))
        .collect();
    Ok((def, factory))
}

fn window_order(w: &WindowConfig) -> Result<crate::engine::WindowOrder, String> {
    if w.order.is_empty() {
        return Err("window.order must name at least one column".into());
    }
    if w.default_limit == 0 || w.default_limit > w.max_limit {
        return Err(format!(
            "window.default_limit must be between 1 and max_limit ({})",
            w.max_limit
        ));
    }
    Ok(crate::engine::WindowOrder {
        order: w.order.clone(),
        descending: w.descending,
        default_limit: w.default_limit,
        max_limit: w.max_limit,
    })
}

fn mutation(
    m: &MutationConfig,
    pool: &Pool,
    ctx: &TxContext,
    scoped: &BTreeSet<String>,
) -> Result<(MutationDef, Arc<SqlMutation>), String> {
    let params = schema(&m.params)?;
    let declared: Vec<&str> = params.keys().map(String::as_str).collect();
    let sqls = match &m.sql {
        SqlList::One(s) => vec![s.clone()],
        SqlList::Many(v) => v.clone(),
    };
    if sqls.is_empty() {
        return Err("sql must hold at least one statement".into());
    }
    let statements = sqls
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Statement::parse(s, &declared).map_err(|e| format!("statement {}: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let changes: Vec<ChangeSpec> = m
        .changes
        .iter()
        .map(|c| ChangeSpec {
            table: c.table.clone(),
            columns: c.columns.clone(),
            id_from: c.id.clone(),
            scoped: scoped.contains(&c.table),
            route_from: c.routes.clone(),
        })
        .collect();
    let handler = Arc::new(SqlMutation {
        name: m.name.clone(),
        pool: pool.clone(),
        statements,
        changes,
        expect: m.expect,
        ctx: ctx.clone(),
    });
    let mut def = MutationDef::new(&m.name, handler.clone());
    def.description = m.description.clone();
    def.params = params;
    def.permissions = m.permissions.clone();
    def.changes = m
        .changes
        .iter()
        .map(|c| {
            if c.columns.is_empty() {
                TableDep::all(&c.table)
            } else {
                TableDep::columns(&c.table, c.columns.clone())
            }
        })
        .collect();
    Ok((def, handler))
}
