//! What codegen generates from: a Describe response, and when built from a
//! config, the columns of the tables the graphs read and of the offline
//! tables, from the PostgreSQL catalog.

use std::collections::BTreeSet;

use crate::config::Config;
use crate::proto::{DescribeResponse, FieldInfo};

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// `format_type` of its type, e.g. `numeric(12,2)`.
    pub pg_type: String,
    /// The Value kind it travels as (`int`, `string`, ...); empty when no
    /// kind carries its type (the generators leave such columns out).
    pub kind: String,
    /// Whether it may hold NULL.
    pub nullable: bool,
}

impl Column {
    /// As a field of a row type.
    pub fn field(&self) -> FieldInfo {
        FieldInfo {
            nested: String::new(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            not_null: !self.nullable,
        }
    }
}

/// A table a graph reads, with all its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableType {
    /// The table's name as the config spells it (`schema.table` outside
    /// `public`).
    pub name: String,
    /// Its columns in table order.
    pub columns: Vec<Column>,
}

/// A table of the config's `[offline]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineTable {
    /// The name devices use.
    pub name: String,
    /// The key columns, in order.
    pub key: Vec<String>,
    /// The columns that travel to devices.
    pub columns: Vec<Column>,
}

/// The input of every generator.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// Graphs, mutations, params and fields.
    pub describe: DescribeResponse,
    /// The tables the graphs read (empty from a server's Describe, which
    /// does not carry column types).
    pub tables: Vec<TableType>,
    /// The offline tables (empty from a server's Describe).
    pub offline: Vec<OfflineTable>,
}

impl From<DescribeResponse> for Source {
    fn from(describe: DescribeResponse) -> Self {
        Source {
            describe,
            ..Default::default()
        }
    }
}

/// Builds the registry as the server does at startup (so a config the
/// server would refuse fails here with the same message), describes it,
/// and reads the columns of its tables and of the offline tables from the
/// database at `url`.
pub async fn from_config(config: &Config, url: &str) -> Result<Source, String> {
    let pool = crate::postgres::pool(url, 1)?;
    let registry = crate::postgres::registry::build(config, &pool).await?;
    let describe = crate::wire::convert::describe(&registry);
    let client = pool.get().await.map_err(|e| {
        format!(
            "connecting to the database: {}",
            crate::postgres::tls::error_chain(&e)
        )
    })?;
    let mut names: BTreeSet<String> = describe.tables.iter().map(|t| t.name.clone()).collect();
    for g in &describe.graphs {
        if !g.table.is_empty() {
            names.insert(g.table.clone());
        }
        names.extend(g.nested.values().cloned());
    }
    let mut tables = Vec::new();
    for name in names {
        let columns = table_columns(&client, &name)
            .await
            .map_err(|e| format!("table `{name}`: {e}"))?;
        tables.push(TableType { name, columns });
    }
    let offline = crate::offline::spec::resolve(&client, &config.offline)
        .await?
        .into_iter()
        .map(|t| OfflineTable {
            key: t.key.iter().map(|(k, _)| k.clone()).collect(),
            columns: t
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    pg_type: c.pg_type.clone(),
                    kind: c.kind.to_owned(),
                    nullable: c.nullable,
                })
                .collect(),
            name: t.name,
        })
        .collect();
    Ok(Source {
        describe,
        tables,
        offline,
    })
}

/// A table's columns: names, declared types and NOT NULL from
/// `pg_attribute`, Value kinds from a prepared `SELECT *` (the same
/// mapping rows are read with).
async fn table_columns(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<Vec<Column>, String> {
    let quoted = crate::postgres::wal::quote_table(table);
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
             AND NOT a.attisdropped ORDER BY a.attnum",
            &[&quoted],
        )
        .await
        .map_err(|e| crate::postgres::tls::error_chain(&e))?;
    let stmt = client
        .prepare(&format!("SELECT * FROM {quoted}"))
        .await
        .map_err(|e| crate::postgres::tls::error_chain(&e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let kind = stmt
                .columns()
                .iter()
                .find(|c| c.name() == name)
                .and_then(|c| crate::postgres::values::kind_of(c.type_()).ok())
                .unwrap_or_default();
            Column {
                pg_type: r.get(1),
                kind: kind.to_owned(),
                nullable: !r.get::<_, bool>(2),
                name,
            }
        })
        .collect())
}
