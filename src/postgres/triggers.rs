//! Trigger SQL for LISTEN/NOTIFY change detection, for databases without
//! logical replication.
//!
//! Each tracked table gets a row trigger (INSERT, UPDATE, DELETE) and a
//! statement trigger (TRUNCATE) that call `pg_notify(channel, payload)`.
//! The payload is built with Postgres' JSON functions, so any key value is
//! escaped correctly: `{"t": table, "op": ..., "k": row id, "c": [changed
//! tracked columns], "x": transaction id}`. NOTIFY payloads must stay under
//! 8000 bytes: a payload that would not fits drops the column list (then the
//! key), never the notification itself.
//!
//! A deferred constraint trigger on each table sends `{"end": transaction
//! id}` at commit, after the transaction's change notifications, so the
//! listener knows when a transaction's notifications are complete (a
//! transaction is one batch however its notifications are read). Postgres
//! delivers identical notifications of one transaction once, so it is one
//! marker per transaction. A transaction that only truncates has no marker.
//!
//! Note: NOTIFY inside a writing transaction takes a cluster-wide lock at
//! commit, which costs throughput with many concurrent writers. Prefer WAL
//! mode for write-heavy databases.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::wal::{primary_keys, quote_table};

/// The payload budget, below Postgres' 8000-byte NOTIFY limit.
pub const PAYLOAD_LIMIT: usize = 7900;

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name for the table's function, safe as one identifier.
fn function_name(table: &str) -> String {
    let cleaned: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("arcana_notify_{cleaned}")
}

/// The SQL text of a row's id from `rec` (NEW or OLD), matching the engine's
/// row ids: the key's text, or a JSON array of the texts for composite keys.
fn key_expr(rec: &str, key: &[String]) -> String {
    match key {
        [one] => format!("{rec}.{}::text", quote_ident(one)),
        many => format!(
            "array_to_json(ARRAY[{}])::text",
            many.iter()
                .map(|k| format!("{rec}.{}::text", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The statements installing triggers on one table. `key` names the key
/// columns; `columns` are the tracked columns (`None`: every column, in
/// which case updates report no column list).
pub fn table_sql(
    channel: &str,
    table: &str,
    key: &[String],
    columns: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let func = function_name(table);
    let qtable = quote_table(table);
    let changed = match columns {
        Some(cols) if !cols.is_empty() => format!(
            "array_remove(ARRAY[{}]::text[], NULL)",
            cols.iter()
                .map(|c| format!(
                    "CASE WHEN OLD.{q} IS DISTINCT FROM NEW.{q} THEN {l} END",
                    q = quote_ident(c),
                    l = quote_literal(c)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "NULL::text[]".to_owned(),
    };
    let skip_unchanged = match columns {
        Some(cols) if !cols.is_empty() => "    IF TG_OP = 'UPDATE' AND cardinality(cols) = 0 THEN\n      RETURN NULL;\n    END IF;\n",
        _ => "",
    };
    let function = format!(
        r#"CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $arcana$
DECLARE
  payload text;
  cols text[];
  k text;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    payload := json_build_object('t', {table_lit}, 'op', TG_OP, 'x', txid_current()::text)::text;
  ELSE
    IF TG_OP = 'UPDATE' THEN
      cols := {changed};
{skip_unchanged}    END IF;
    IF TG_OP = 'DELETE' THEN
      k := {old_key};
    ELSE
      k := {new_key};
    END IF;
    payload := json_build_object('t', {table_lit}, 'op', TG_OP, 'k', k, 'c', cols, 'x', txid_current()::text)::text;
    IF octet_length(payload) > {limit} THEN
      payload := json_build_object('t', {table_lit}, 'op', TG_OP, 'k', k, 'x', txid_current()::text)::text;
    END IF;
    IF octet_length(payload) > {limit} THEN
      payload := json_build_object('t', {table_lit}, 'op', TG_OP, 'x', txid_current()::text)::text;
    END IF;
  END IF;
  PERFORM pg_notify({channel_lit}, payload);
  RETURN NULL;
END
$arcana$"#,
        table_lit = quote_literal(table),
        channel_lit = quote_literal(channel),
        old_key = key_expr("OLD", key),
        new_key = key_expr("NEW", key),
        limit = PAYLOAD_LIMIT,
    );
    let row_trigger = format!("{func}_row");
    let stmt_trigger = format!("{func}_truncate");
    vec![
        function,
        format!("DROP TRIGGER IF EXISTS {} ON {qtable}", quote_ident(&row_trigger)),
        format!(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {qtable} FOR EACH ROW EXECUTE FUNCTION {func}()",
            quote_ident(&row_trigger)
        ),
        format!("DROP TRIGGER IF EXISTS {} ON {qtable}", quote_ident(&stmt_trigger)),
        format!("CREATE TRIGGER {} AFTER TRUNCATE ON {qtable} FOR EACH STATEMENT EXECUTE FUNCTION {func}()", quote_ident(&stmt_trigger)),
    ]
}

/// The function that marks the end of a transaction's notifications.
fn end_function(channel: &str) -> (String, String) {
    let cleaned: String = channel
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("arcana_notify_end_{cleaned}");
    let sql = format!(
        r#"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $arcana$
BEGIN
  PERFORM pg_notify({channel_lit}, json_build_object('end', txid_current()::text)::text);
  RETURN NULL;
END
$arcana$"#,
        channel_lit = quote_literal(channel),
    );
    (name, sql)
}

/// The deferred trigger that sends the end marker at commit: after every
/// change notification of the transaction, and once (Postgres delivers
/// identical notifications of one transaction once).
fn end_trigger_sql(channel: &str, table: &str) -> Vec<String> {
    let (end, _) = end_function(channel);
    let trigger = format!("{}_end", function_name(table));
    let qtable = quote_table(table);
    vec![
        format!("DROP TRIGGER IF EXISTS {} ON {qtable}", quote_ident(&trigger)),
        format!(
            "CREATE CONSTRAINT TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {qtable} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {end}()",
            quote_ident(&trigger)
        ),
    ]
}

/// Every statement for every tracked table. Key columns come from
/// `config_keys` first, then the primary key in the catalog.
pub async fn all_sql(
    url: &str,
    channel: &str,
    tables: &BTreeMap<String, Option<BTreeSet<String>>>,
    config_keys: &HashMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    let (c, conn) = super::tls::connect(url)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let task = tokio::spawn(conn);
    let names: Vec<String> = tables.keys().cloned().collect();
    let pks = primary_keys(&c, &names).await;
    drop(c);
    let _ = task.await;
    let pks = pks?;
    let mut out = vec![end_function(channel).1];
    for (table, cols) in tables {
        let key = config_keys.get(table).filter(|k| !k.is_empty()).or_else(|| pks.get(table).filter(|k| !k.is_empty())).ok_or_else(|| {
            format!("table `{table}` has no primary key and no graph declares its key; add a primary key or a graph `key`")
        })?;
        out.extend(table_sql(channel, table, key, cols.as_ref()));
        out.extend(end_trigger_sql(channel, table));
    }
    Ok(out)
}

/// Installs (or replaces) the triggers.
pub async fn install(
    url: &str,
    channel: &str,
    tables: &BTreeMap<String, Option<BTreeSet<String>>>,
    config_keys: &HashMap<String, Vec<String>>,
) -> Result<usize, String> {
    let stmts = all_sql(url, channel, tables, config_keys).await?;
    let script = format!("BEGIN;\n{};\nCOMMIT;", stmts.join(";\n"));
    super::execute_script(url, &script).await?;
    Ok(tables.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        let cols: BTreeSet<String> = ["ti\"tle".to_string()].into();
        let sql = table_sql("chan'nel", "we\"ird", &["id".into()], Some(&cols)).join(";\n");
        assert!(
            sql.contains("OLD.\"ti\"\"tle\" IS DISTINCT FROM NEW.\"ti\"\"tle\""),
            "{sql}"
        );
        assert!(sql.contains("'chan''nel'"));
        assert!(sql.contains("ON \"we\"\"ird\""));
        assert!(sql.contains("arcana_notify_we_ird()"));
    }

    #[test]
    fn composite_keys_become_json_arrays_of_text() {
        assert_eq!(
            key_expr("NEW", &["a".into(), "b".into()]),
            "array_to_json(ARRAY[NEW.\"a\"::text, NEW.\"b\"::text])::text"
        );
    }
}
