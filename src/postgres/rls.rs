//! Row-level security policies for tenancy: a second wall behind the
//! `:workspace_id` filters of graphs and mutations.
//!
//! Every table of the configured schemas with the workspace column (see
//! `[rls]`) gets RLS enabled and one policy, `arcana_tenant`, that lets a
//! transaction see and write only rows whose workspace column equals the
//! `arcana.workspace_id` setting (and, with a user column, whose user
//! column equals `arcana.user_id`). The server sets both for every graph
//! evaluation and mutation (see `context.rs`); a connection without them
//! (a migration, the change listener's own queries) sees no rows of such a
//! table unless its role bypasses RLS: superusers, `BYPASSRLS` roles, and
//! table owners when RLS is not forced.
//!
//! RLS is forced on a table owned by the role applying the policies (the
//! server's role), since the owner otherwise bypasses it.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::RlsConfig;

/// The policy's name on every table.
pub const POLICY: &str = "arcana_tenant";

/// One table's policy, as read from the catalog.
#[derive(Debug, Clone)]
pub struct TablePolicy {
    /// The table as named in config (`schema.table` outside `public`).
    pub table: String,
    /// The quoted, schema-qualified name.
    quoted: String,
    /// The workspace column and its type.
    workspace: (String, String),
    /// The user column and its type, if any.
    user: Option<(String, String)>,
    /// Whether RLS is forced (the applying role owns the table).
    pub force: bool,
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A column compared with a setting; an unset or empty setting matches no
/// row (a setting once set in a session reads back as '' afterwards).
fn compare(column: &(String, String), setting: &str) -> String {
    format!(
        "{} = NULLIF(current_setting('{setting}', true), '')::{}",
        ident(&column.0),
        column.1
    )
}

impl TablePolicy {
    /// The statements that (re)create the policy, idempotently.
    pub fn sql(&self) -> Vec<String> {
        let mut cond = compare(&self.workspace, "arcana.workspace_id");
        if let Some(u) = &self.user {
            cond = format!("{cond} AND {}", compare(u, "arcana.user_id"));
        }
        let t = &self.quoted;
        let mut out = vec![format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY")];
        if self.force {
            out.push(format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"));
        }
        out.push(format!("DROP POLICY IF EXISTS {POLICY} ON {t}"));
        out.push(format!(
            "CREATE POLICY {POLICY} ON {t} USING ({cond}) WITH CHECK ({cond})"
        ));
        out
    }
}

/// Reads the catalog and works out each table's policy. Fails on an
/// override naming a missing table or column.
pub async fn plan(
    c: &impl tokio_postgres::GenericClient,
    cfg: &RlsConfig,
) -> Result<Vec<TablePolicy>, String> {
    let q = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    };
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1) \
             ORDER BY n.nspname, c.relname, a.attnum",
            &[&cfg.schemas],
        )
        .await
        .map_err(q)?;
    // table -> (quoted name, owned, column -> type)
    let mut tables: BTreeMap<String, (String, bool, BTreeMap<String, String>)> = BTreeMap::new();
    for r in &rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        let key = if schema == "public" {
            name.clone()
        } else {
            format!("{schema}.{name}")
        };
        let entry = tables.entry(key).or_insert_with(|| {
            (
                format!("{}.{}", ident(&schema), ident(&name)),
                r.get(4),
                BTreeMap::new(),
            )
        });
        entry.2.insert(r.get(2), r.get(3));
    }
    let unknown: BTreeSet<&String> = cfg
        .tables
        .keys()
        .filter(|t| !tables.contains_key(*t))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "[rls.tables] names {unknown:?}, not tables of schemas {:?}",
            cfg.schemas
        ));
    }
    let mut out = Vec::new();
    for (table, (quoted, owned, columns)) in tables {
        let over = cfg.tables.get(&table).cloned().unwrap_or_default();
        if over.exclude {
            continue;
        }
        let typed = |c: &str| columns.get(c).map(|t| (c.to_owned(), t.clone()));
        let workspace = match &over.workspace_column {
            Some(c) => typed(c).ok_or_else(|| {
                format!("[rls.tables.{table}]: table `{table}` has no column `{c}`")
            })?,
            None => match typed(&cfg.workspace_column) {
                Some(w) => w,
                None => continue, // not a tenant table
            },
        };
        let user = match over.user_column.as_deref().or(cfg.user_column.as_deref()) {
            None | Some("") => None,
            Some(c) if over.user_column.is_some() => Some(typed(c).ok_or_else(|| {
                format!("[rls.tables.{table}]: table `{table}` has no column `{c}`")
            })?),
            // The default user column applies where the table has it.
            Some(c) => typed(c),
        };
        out.push(TablePolicy {
            table,
            quoted,
            workspace,
            user,
            force: owned,
        });
    }
    Ok(out)
}

async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let (c, conn) = super::tls::connect(url)
        .await
        .map_err(|e| format!("connecting to the database: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((c, task))
}

/// Every statement of the policies, in order.
pub async fn all_sql(url: &str, cfg: &RlsConfig) -> Result<Vec<String>, String> {
    let (c, task) = connect(url).await?;
    let plan = plan(&c, cfg).await;
    drop(c);
    let _ = task.await;
    Ok(plan?.iter().flat_map(TablePolicy::sql).collect())
}

/// Applies the policies in one transaction; returns the tables covered.
pub async fn install(url: &str, cfg: &RlsConfig) -> Result<Vec<String>, String> {
    let (mut c, task) = connect(url).await?;
    let r = async {
        let q = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(d) => format!(
                "installing row-level security: {} ({})",
                d.message(),
                d.code().code()
            ),
            None => e.to_string(),
        };
        let tx = c.transaction().await.map_err(q)?;
        let plan = plan(&tx, cfg).await?;
        for p in &plan {
            tx.batch_execute(&p.sql().join(";\n")).await.map_err(q)?;
        }
        tx.commit().await.map_err(q)?;
        Ok(plan.into_iter().map(|p| p.table).collect())
    }
    .await;
    drop(c);
    let _ = task.await;
    r
}
