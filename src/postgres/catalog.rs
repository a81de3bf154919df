//! Startup checks against the catalog: a graph's key must identify one row
//! of its table, or a change to one tenant's row could be taken for another
//! tenant's row with the same key values.

use std::collections::BTreeSet;

use super::wal::quote_table;

/// A set of columns the table holds unique: its primary key or a unique
/// index (not partial, no expressions).
#[derive(Debug, Clone)]
pub struct UniqueKey {
    /// The index name.
    pub name: String,
    /// Whether it is the primary key.
    pub primary: bool,
    /// Its columns, in index order.
    pub columns: Vec<String>,
}

impl UniqueKey {
    fn describe(&self) -> String {
        let kind = if self.primary {
            "primary key".to_owned()
        } else {
            format!("unique index {}", self.name)
        };
        format!("{kind} ({})", self.columns.join(", "))
    }
}

/// The primary key and unique indexes of `table`, primary key first. Fails
/// for a table that does not exist.
pub async fn unique_keys(
    c: &tokio_postgres::Client,
    table: &str,
) -> Result<Vec<UniqueKey>, String> {
    let q = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    };
    let exists: Option<String> = c
        .query_one("SELECT to_regclass($1)::text", &[&quote_table(table)])
        .await
        .map_err(q)?
        .get(0);
    if exists.is_none() {
        return Err(format!("table `{table}` does not exist"));
    }
    let rows = c
        .query(
            "SELECT ic.relname::text, i.indisprimary, \
                    array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indpred IS NULL \
               AND 0 <> ALL (i.indkey::int2[]) \
             ORDER BY i.indisprimary DESC, ic.relname",
            &[&quote_table(table)],
        )
        .await
        .map_err(q)?;
    Ok(rows
        .iter()
        .map(|r| UniqueKey {
            name: r.get(0),
            primary: r.get(1),
            columns: r.get(2),
        })
        .collect())
}

/// Checks that `key` is, as a set of columns, the primary key or a unique
/// index of `table`; the error names what would do.
pub async fn check_key(
    c: &tokio_postgres::Client,
    table: &str,
    key: &[String],
) -> Result<(), String> {
    let keys = unique_keys(c, table).await?;
    let given: BTreeSet<&str> = key.iter().map(String::as_str).collect();
    if keys.iter().any(|k| {
        k.columns
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            == given
    }) {
        return Ok(());
    }
    let shown = format!("[{}]", key.join(", "));
    if keys.is_empty() {
        return Err(format!(
            "key {shown} does not identify one row of table `{table}`, which has no primary key or unique index: \
             give the table one and use its columns as the key"
        ));
    }
    let options: Vec<String> = keys.iter().map(UniqueKey::describe).collect();
    Err(format!(
        "key {shown} does not identify one row of table `{table}`: it must be the columns of its {}",
        options.join(" or its ")
    ))
}

/// The tables (named as graphs name them: bare in `public`, else
/// `schema.table`) that have a column named `column`.
pub async fn tables_with_column(
    client: &tokio_postgres::Client,
    column: &str,
) -> Result<BTreeSet<String>, String> {
    let rows = client
        .query(
            "SELECT CASE WHEN table_schema = 'public' THEN table_name::text \
                    ELSE table_schema || '.' || table_name END \
             FROM information_schema.columns WHERE column_name = $1",
            &[&column],
        )
        .await
        .map_err(|e| format!("reading the catalog: {e}"))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
