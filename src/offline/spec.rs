//! Startup checks of `[[offline.tables]]` against the catalog, resolving
//! each into a [`TableSpec`]: the key, the travelling columns with their
//! types, and the SQL that reads rows by key.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::config::offline::{
    ConflictPolicy, OfflineConfig, PushPolicy, ScopeKind, SyncTableConfig,
};
use crate::postgres::catalog::unique_keys;
use crate::postgres::values::kind_of;
use crate::postgres::wal::quote_table;
use crate::proto as pb;

/// One travelling column.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// Its name.
    pub name: String,
    /// `format_type` of its type, e.g. `bigint`.
    pub pg_type: String,
    /// The Value kind it travels as.
    pub kind: &'static str,
    /// Whether it may hold NULL.
    pub nullable: bool,
    /// Whether it is a key column.
    pub key: bool,
    /// Written only by the server: a push's value for it is ignored.
    pub protected: bool,
}

/// A checked sync table.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The name devices use (as configured).
    pub name: String,
    /// The quoted name for SQL.
    pub quoted: String,
    /// The key columns, in order, with their types.
    pub key: Vec<(String, String)>,
    /// The travelling columns (key and scope columns always travel).
    pub columns: Vec<ColumnSpec>,
    /// Workspace, user or SQL buckets.
    pub scope: ScopeKind,
    /// What scope names of this table begin with: `workspace:`, `user:` or
    /// `<scope_name>:`.
    pub prefix: String,
    /// For SQL buckets: the caller's bucket ids as text, `$1` the user id
    /// and `$2` the workspace id.
    pub scopes_sql: Option<String>,
    /// The scope column.
    pub scope_column: String,
    /// Who may push.
    pub push: PushPolicy,
    /// The owner column, for owner-only pushes.
    pub owner_column: Option<String>,
    /// How stale writes resolve.
    pub conflict: ConflictPolicy,
    /// Clock skew tolerance for last-writer-wins.
    pub clock_skew_ms: u32,
    /// `SELECT <columns> FROM t WHERE (<key>) IN (unnest of one text array
    /// per key column)`.
    pub select_by_keys: String,
    /// Its rank among the synced tables by foreign keys: a bundle's rows
    /// are written parents (lower ranks) first (see `order.rs`).
    pub rank: usize,
}

/// Quotes an identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl TableSpec {
    /// The column list of the travelling columns.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Looks up a travelling column.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The scope id (the wire's scope string) for a scope column value.
    pub fn scope_of(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The wire description of this table.
    pub fn to_pb(&self) -> pb::SyncTableSpec {
        pb::SyncTableSpec {
            name: self.name.clone(),
            key: self.key.iter().map(|(k, _)| k.clone()).collect(),
            columns: self
                .columns
                .iter()
                .map(|c| pb::SyncColumn {
                    name: c.name.clone(),
                    pg_type: c.pg_type.clone(),
                    kind: c.kind.into(),
                    nullable: c.nullable,
                    key: c.key,
                })
                .collect(),
            push_policy: match self.push {
                PushPolicy::ReadOnly => pb::PushPolicy::ReadOnly,
                PushPolicy::OwnerOnly => pb::PushPolicy::OwnerOnly,
                PushPolicy::Scope => pb::PushPolicy::Scope,
            } as i32,
            conflict_policy: match self.conflict {
                ConflictPolicy::Reject => pb::ConflictPolicy::Reject,
                ConflictPolicy::LastWriterWins => pb::ConflictPolicy::LastWriterWins,
                ConflictPolicy::ServerWins => pb::ConflictPolicy::ServerWins,
            } as i32,
            clock_skew_ms: self.clock_skew_ms,
        }
    }
}

/// Checks every configured table; the error names the table and what to fix.
pub async fn resolve(
    client: &tokio_postgres::Client,
    cfg: &OfflineConfig,
) -> Result<Vec<TableSpec>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for t in &cfg.tables {
        if !seen.insert(t.table.clone()) {
            return Err(format!(
                "offline.tables: table `{}` is listed twice",
                t.table
            ));
        }
        let spec = resolve_one(client, t)
            .await
            .map_err(|e| format!("offline.tables `{}`: {e}", t.table))?;
        // Tables sharing SQL buckets must agree on who holds them, or one
        // table's query would open the other's rows.
        if let Some(other) = out
            .iter()
            .find(|o: &&TableSpec| o.prefix == spec.prefix && o.scopes_sql != spec.scopes_sql)
        {
            return Err(format!(
                "offline.tables `{}`: it shares scope_name `{}` with table `{}` but not its scopes_sql: give both the same query or different scope names",
                t.table,
                spec.prefix.trim_end_matches(':'),
                other.name
            ));
        }
        out.push(spec);
    }
    let names: Vec<String> = out.iter().map(|t| t.name.clone()).collect();
    let ranks = super::order::ranks(client, &names).await?;
    for t in &mut out {
        t.rank = ranks.get(&t.name).copied().unwrap_or(0);
    }
    Ok(out)
}

async fn resolve_one(
    client: &tokio_postgres::Client,
    t: &SyncTableConfig,
) -> Result<TableSpec, String> {
    let keys = unique_keys(client, &t.table).await?;
    let key: Vec<String> = if t.key.is_empty() {
        keys.iter()
            .find(|k| k.primary)
            .map(|k| k.columns.clone())
            .ok_or(
                "the table has no primary key: give it one or set key to a unique index's columns",
            )?
    } else {
        let given: BTreeSet<&String> = t.key.iter().collect();
        if !keys
            .iter()
            .any(|k| k.columns.iter().collect::<BTreeSet<_>>() == given)
        {
            return Err(format!(
                "key [{}] is not the primary key or a unique index of the table",
                t.key.join(", ")
            ));
        }
        t.key.clone()
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
             AND NOT a.attisdropped ORDER BY a.attnum",
            &[&quote_table(&t.table)],
        )
        .await
        .map_err(|e| e.to_string())?;
    let all: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), !r.get::<_, bool>(2)))
        .collect();
    let scope_column = t.scope_column();
    let (prefix, scopes_sql) = match t.scope {
        ScopeKind::Workspace => ("workspace:".to_owned(), None),
        ScopeKind::User => {
            // `user:<id>` is one bucket whatever the workspace: right only
            // where user ids are global. A table that keeps a workspace per
            // row says they may not be, and would then let a user of one
            // workspace read the same user id's rows in another.
            if all.iter().any(|(c, _, _)| c == "workspace_id") {
                return Err("scope = \"user\" names one bucket per user id across all workspaces, but this table has a workspace_id column: a user id repeated in two workspaces would read both. Use scope = \"sql\" with scopes_sql = \"SELECT :user_id WHERE ...\" and a bucket column that includes the workspace, or scope = \"workspace\"".into());
            }
            ("user:".to_owned(), None)
        }
        ScopeKind::Sql => {
            if t.scope_column.is_none() {
                return Err(
                    "scope = \"sql\" needs scope_column (the column holding the row's bucket id)"
                        .into(),
                );
            }
            let Some(sql) = &t.scopes_sql else {
                return Err(
                    "scope = \"sql\" needs scopes_sql (the query listing a caller's bucket ids)"
                        .into(),
                );
            };
            let name = t.scope_name.clone().unwrap_or_else(|| t.table.clone());
            if name.is_empty() || name.contains(':') || name == "workspace" || name == "user" {
                return Err(format!(
                    "scope_name `{name}` must be non-empty, hold no `:` and not be `workspace` or `user`"
                ));
            }
            let prepared = super::scope_sql::prepare(client, sql)
                .await
                .map_err(|e| format!("scopes_sql: {e}"))?;
            (format!("{name}:"), Some(prepared))
        }
    };
    if t.scope != ScopeKind::Sql && (t.scopes_sql.is_some() || t.scope_name.is_some()) {
        return Err("scopes_sql and scope_name belong to scope = \"sql\"".into());
    }
    let mut wanted: Vec<String> = if t.columns.is_empty() {
        all.iter().map(|c| c.0.clone()).collect()
    } else {
        t.columns.clone()
    };
    // Key, scope and owner columns always travel: devices need them to
    // address rows and to know whose rows they are.
    let mut must = key.clone();
    must.push(scope_column.clone());
    if let Some(o) = &t.owner_column {
        must.push(o.clone());
    }
    for m in must {
        if !wanted.contains(&m) {
            wanted.push(m);
        }
    }
    if t.push == PushPolicy::OwnerOnly && t.owner_column.is_none() {
        return Err("push = \"owner_only\" needs owner_column".into());
    }
    // The Value kinds come from a prepared statement's column types.
    let list = wanted
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let quoted = quote_table(&t.table);
    let mut columns = Vec::new();
    for name in &wanted {
        let Some((_, pg_type, nullable)) = all.iter().find(|c| &c.0 == name) else {
            return Err(format!("column `{name}` does not exist"));
        };
        columns.push(ColumnSpec {
            name: name.clone(),
            pg_type: pg_type.clone(),
            kind: "",
            nullable: *nullable,
            key: key.contains(name),
            protected: t.protected.contains(name),
        });
    }
    for p in &t.protected {
        if !wanted.contains(p) {
            return Err(format!(
                "protected column `{p}` does not travel: add it to columns, or drop it from protected"
            ));
        }
        if key.contains(p) || p == &scope_column || t.owner_column.as_ref() == Some(p) {
            return Err(format!(
                "column `{p}` cannot be protected: devices write a row's key, scope and owner columns"
            ));
        }
    }
    let stmt = client
        .prepare(&format!("SELECT {list} FROM {quoted}"))
        .await
        .map_err(|e| e.to_string())?;
    for (c, col) in columns.iter_mut().zip(stmt.columns()) {
        c.kind = kind_of(col.type_()).map_err(|e| format!("column `{}`: {e}", c.name))?;
    }
    let key_typed: Vec<(String, String)> = key
        .iter()
        .map(|k| {
            let ty = all.iter().find(|c| &c.0 == k).map(|c| c.1.clone());
            (k.clone(), ty.unwrap_or_else(|| "text".into()))
        })
        .collect();
    let unnest_args: Vec<String> = (1..=key.len()).map(|i| format!("${i}::text[]")).collect();
    let casts: Vec<String> = key_typed
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("u.k{i}::{ty}"))
        .collect();
    let names: Vec<String> = (0..key.len()).map(|i| format!("k{i}")).collect();
    let key_cols: Vec<String> = key.iter().map(|k| ident(k)).collect();
    // A single key column is matched with `= ANY(array)`, which PostgreSQL
    // answers from the key's index whatever the table's size; an `IN
    // (SELECT ... unnest)` may be planned as a hash join over the whole
    // table, once per chunk of a snapshot.
    let select_by_keys = if key_cols.len() == 1 {
        format!(
            "SELECT {list} FROM {quoted} WHERE {} = ANY(ARRAY(SELECT {} FROM unnest({}) AS u({})))",
            key_cols[0], casts[0], unnest_args[0], names[0]
        )
    } else {
        format!(
            "SELECT {list} FROM {quoted} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
            key_cols.join(", "),
            casts.join(", "),
            unnest_args.join(", "),
            names.join(", ")
        )
    };
    Ok(TableSpec {
        name: t.table.clone(),
        quoted,
        key: key_typed,
        columns,
        scope: t.scope,
        prefix,
        scopes_sql,
        scope_column,
        push: t.push,
        owner_column: t.owner_column.clone(),
        conflict: t.conflict,
        clock_skew_ms: t.clock_skew_ms,
        select_by_keys,
        rank: 0,
    })
}

/// A hash of the table specs: devices rebuild when it changes.
pub fn schema_hash(version: u32, tables: &[TableSpec]) -> String {
    let mut h = Sha256::new();
    h.update(version.to_be_bytes());
    for t in tables {
        h.update(t.name.as_bytes());
        h.update([0]);
        for (k, _) in &t.key {
            h.update(k.as_bytes());
            h.update([1]);
        }
        for c in &t.columns {
            h.update(c.name.as_bytes());
            h.update([2]);
            h.update(c.pg_type.as_bytes());
            h.update([u8::from(c.nullable)]);
        }
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}
