//! A view's content computed straight from PostgreSQL: the graph's SQL
//! run directly, and refs, rows and total built the way the server
//! documents them (`<nested>.<column>` columns form nested refs; a NULL
//! nested key means no nested ref; a row reached by several refs holds the
//! union of their fields).

use std::collections::BTreeMap;

use arcana::client::ViewState;
use arcana::engine::{row_id, Fields, Ref, RowKey, Value};
use arcana::postgres::named::rewrite_with;
use arcana::postgres::values::SqlValue;

use super::model::{Graph, ViewSpec, Who};

/// `sql` with every `:name` replaced by a literal.
fn literal_sql(sql: &str, who: &Who, spec: &ViewSpec) -> Result<String, String> {
    Ok(rewrite_with(sql, |_, name| match name {
        "workspace_id" => format!("'{}'", who.ws),
        "user_id" => format!("'{}'", who.user),
        other => spec
            .params
            .iter()
            .find(|(k, _)| *k == other)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "NULL".into()),
    })?
    .sql)
}

fn key_of(key: &[String], fields: &Fields) -> Result<String, String> {
    let parts: Vec<Value> = key
        .iter()
        .map(|k| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| format!("no key column {k}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(row_id(&parts))
}

/// Parses `{ name = { table = "t", key = ["id"] } }` from the graph entry.
fn nested_specs(g: &Graph) -> Vec<(String, String)> {
    let Some(n) = g.nested else { return vec![] };
    let v: toml::Value = toml::from_str(&format!("n = {n}")).unwrap();
    v["n"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(name, spec)| (name.clone(), spec["table"].as_str().unwrap().to_owned()))
        .collect()
}

/// What `who` should see for `spec`, read in one repeatable-read snapshot.
pub async fn expected(
    db: &tokio_postgres::Client,
    g: &Graph,
    who: &Who,
    spec: &ViewSpec,
) -> Result<ViewState, String> {
    let err = |e: tokio_postgres::Error| e.to_string();
    db.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(err)?;
    let rows = db
        .query(&literal_sql(g.sql, who, spec)?, &[])
        .await
        .map_err(err);
    let total = match (g.total_sql, &rows) {
        (Some(t), Ok(_)) => Some(
            db.query_one(&literal_sql(t, who, spec)?, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(err),
        ),
        _ => None,
    };
    let _ = db.batch_execute("COMMIT").await;
    let rows = rows?;
    let total = total.transpose()?;
    let key: Vec<String> = g.key.iter().map(|s| s.to_string()).collect();
    let nested = nested_specs(g);
    let mut out = ViewState {
        total,
        ..Default::default()
    };
    let mut merge = |table: &str, id: &str, fields: Fields| {
        out_rows_merge(&mut out.rows, RowKey::new(table, id), fields)
    };
    let mut refs = Vec::new();
    for row in rows {
        let mut top = Fields::new();
        let mut parts: BTreeMap<String, Fields> = BTreeMap::new();
        for (i, col) in row.columns().iter().enumerate() {
            let SqlValue(v) = row.try_get(i).map_err(|e| e.to_string())?;
            match col.name().split_once('.') {
                Some((n, f)) => {
                    parts.entry(n.to_owned()).or_default().insert(f.into(), v);
                }
                None => {
                    top.insert(col.name().to_owned(), v);
                }
            }
        }
        let id = key_of(&key, &top)?;
        let mut r = Ref::new(g.table, &id);
        r.fields = top.keys().cloned().collect();
        for (name, table) in &nested {
            let Some(fields) = parts.remove(name) else {
                continue;
            };
            // Every nested key here is a single `id` column.
            if matches!(fields.get("id"), None | Some(Value::Null)) {
                continue;
            }
            let nid = key_of(&["id".to_owned()], &fields)?;
            let mut n = Ref::new(table, &nid);
            n.fields = fields.keys().cloned().collect();
            merge(table, &nid, fields);
            r.nested.insert(name.clone(), n);
        }
        merge(g.table, &id, top);
        refs.push(r);
    }
    out.refs = refs;
    Ok(out)
}

fn out_rows_merge(rows: &mut BTreeMap<RowKey, Fields>, key: RowKey, fields: Fields) {
    rows.entry(key).or_default().extend(fields);
}
