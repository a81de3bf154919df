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

use super::model::{Graph, ViewSpec, Who, Win};

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
    let mut sql = literal_sql(g.sql, who, spec)?;
    if spec.window.is_some() {
        // Every windowed graph here orders by `pos, id`.
        sql = format!("SELECT * FROM ({sql}) w ORDER BY w.pos, w.id");
    }
    let rows = db.query(&sql, &[]).await.map_err(err);
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
    // Each row's ref, order key and the rows it brings (merged only for the
    // refs a window keeps).
    let mut entries: Vec<Entry> = Vec::new();
    for row in rows {
        let mut brings = Vec::new();
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
            brings.push((table.clone(), nid, fields));
            r.nested.insert(name.clone(), n);
        }
        let int = |f: &str| match top.get(f) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        };
        let order = (int("pos"), int("id"));
        brings.push((g.table.to_owned(), id, top));
        entries.push((r, order, brings));
    }
    let (from, to) = match &spec.window {
        Some(w) => {
            let keys: Vec<(i64, i64)> = entries.iter().map(|e| e.1).collect();
            let (from, to) = window_range(&keys, w);
            out.window = Some(arcana::engine::WindowEdges {
                has_before: from > 0,
                has_after: to < keys.len(),
            });
            (from, to)
        }
        None => (0, entries.len()),
    };
    for (r, _, brings) in entries.drain(..).skip(from).take(to - from) {
        for (table, id, fields) in brings {
            out_rows_merge(&mut out.rows, RowKey::new(&table, &id), fields);
        }
        out.refs.push(r);
    }
    Ok(out)
}

/// The slice of `keys` (sorted) a window holds, as the protocol defines it.
fn window_range(keys: &[(i64, i64)], w: &Win) -> (usize, usize) {
    use arcana::proto::WindowDirection as D;
    let limit = w.limit as usize;
    match (D::try_from(w.dir).unwrap_or(D::After), w.cursor) {
        (D::Before, None) => (keys.len().saturating_sub(limit), keys.len()),
        (D::Before, Some(c)) => {
            let end = keys.partition_point(|k| *k < c);
            (end.saturating_sub(limit), end)
        }
        (D::Around, Some(c)) => {
            let at = keys.partition_point(|k| *k < c);
            let before = limit / 2;
            (
                at.saturating_sub(before),
                (at + limit - before).min(keys.len()),
            )
        }
        (_, None) => (0, limit.min(keys.len())),
        (_, Some(c)) => {
            let start = keys.partition_point(|k| *k <= c);
            (start, (start + limit).min(keys.len()))
        }
    }
}

/// One result row: its ref, its `(pos, id)` order key, and the rows
/// (table, id, fields) it brings into the view.
type Entry = (Ref, (i64, i64), Vec<(String, String, Fields)>);

fn out_rows_merge(rows: &mut BTreeMap<RowKey, Fields>, key: RowKey, fields: Fields) {
    rows.entry(key).or_default().extend(fields);
}
