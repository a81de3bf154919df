//! The change log in its own schema, `arcana_offline`, and the triggers
//! that fill it.
//!
//! A row trigger on every sync table bumps the row's version in `rows` and
//! queues the change in `pending` (tagged with the transaction id); the
//! transaction's first change also adds a row to `commits`, whose deferred
//! constraint trigger runs once at commit: it takes each
//! touched scope's counter row in `scopes` (in scope order, so committers
//! never deadlock), adds the transaction's changes to `changes` with the
//! next sequences, and notifies `arcana_offline`. The counter row stays
//! locked until the transaction commits, so the next committer of the scope
//! gets the next sequences only after these are visible: a reader never
//! sees sequence N+1 without N.

use super::spec::{ident, literal, TableSpec};

/// The channel the commit trigger notifies, with the scope as payload.
pub const CHANNEL: &str = "arcana_offline";

/// The constraint trigger's name, for `SET CONSTRAINTS ... IMMEDIATE`.
pub const SEQUENCE_TRIGGER: &str = "arcana_offline_sequence";

const BASE: &str = r#"
CREATE SCHEMA IF NOT EXISTS arcana_offline;

CREATE TABLE IF NOT EXISTS arcana_offline.scopes (
    scope        text PRIMARY KEY,
    seq          bigint NOT NULL DEFAULT 0,
    floor        bigint NOT NULL DEFAULT 0,
    floor_reason text NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS arcana_offline.rows (
    tbl      text NOT NULL,
    id       text NOT NULL,
    key      text[] NOT NULL,
    scope    text NOT NULL,
    version  bigint NOT NULL,
    deleted  boolean NOT NULL,
    write_ms bigint NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE INDEX IF NOT EXISTS rows_by_scope ON arcana_offline.rows (scope, tbl, id);

CREATE UNLOGGED TABLE IF NOT EXISTS arcana_offline.pending (
    ord       bigserial PRIMARY KEY,
    xid       bigint NOT NULL,
    scope     text NOT NULL,
    tbl       text NOT NULL,
    id        text NOT NULL,
    op        smallint NOT NULL,
    version   bigint NOT NULL,
    client_id text,
    bundle_id bigint
);
CREATE INDEX IF NOT EXISTS pending_by_xid ON arcana_offline.pending (xid, scope);

-- One row per transaction with pending changes: its deferred trigger
-- sequences them at commit.
CREATE UNLOGGED TABLE IF NOT EXISTS arcana_offline.commits (
    xid bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS arcana_offline.changes (
    scope     text NOT NULL,
    seq       bigint NOT NULL,
    tbl       text NOT NULL,
    id        text NOT NULL,
    op        smallint NOT NULL,
    version   bigint NOT NULL,
    client_id text,
    bundle_id bigint,
    xid       bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, seq)
);
CREATE INDEX IF NOT EXISTS changes_by_xid ON arcana_offline.changes (xid);

CREATE TABLE IF NOT EXISTS arcana_offline.clients (
    client_id     text PRIMARY KEY,
    workspace_id  text NOT NULL,
    user_id       text NOT NULL,
    platform      text NOT NULL,
    app_version   text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    active        boolean NOT NULL DEFAULT true
);

-- A client id registered in place of another (a reinstall): the old one's
-- bundles count as its own.
ALTER TABLE arcana_offline.clients ADD COLUMN IF NOT EXISTS replaces text;

-- Where each device last pulled each scope from: it holds every change
-- up to there, so compaction may prune them.
CREATE TABLE IF NOT EXISTS arcana_offline.positions (
    client_id text NOT NULL,
    scope     text NOT NULL,
    seq       bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, scope)
);

CREATE TABLE IF NOT EXISTS arcana_offline.bundles (
    client_id text NOT NULL,
    bundle_id bigint NOT NULL,
    result    bytea NOT NULL,
    digest    bytea NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, bundle_id)
);

CREATE OR REPLACE FUNCTION arcana_offline.record(p_tbl text, p_id text, p_key text[], p_scope text, p_op smallint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE
    v bigint;
    t bigint;
BEGIN
    -- A row without a scope belongs to no device.
    IF p_scope IS NULL THEN
        RETURN;
    END IF;
    t := coalesce(nullif(current_setting('arcana_offline.write_ms', true), '')::bigint,
                  (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    INSERT INTO arcana_offline.rows AS r (tbl, id, key, scope, version, deleted, write_ms)
    VALUES (p_tbl, p_id, p_key, p_scope, 1, p_op = 3, t)
    ON CONFLICT (tbl, id) DO UPDATE
        SET version = r.version + 1, deleted = EXCLUDED.deleted, scope = EXCLUDED.scope,
            key = EXCLUDED.key, write_ms = EXCLUDED.write_ms
    RETURNING version INTO v;
    INSERT INTO arcana_offline.pending (xid, scope, tbl, id, op, version, client_id, bundle_id)
    VALUES (txid_current(), p_scope, p_tbl, p_id, p_op, v,
            nullif(current_setting('arcana_offline.client_id', true), ''),
            nullif(current_setting('arcana_offline.bundle_id', true), '')::bigint);
    -- The first change of the transaction queues the commit trigger once.
    IF coalesce(current_setting('arcana_offline.queued', true), '') <> '1' THEN
        -- The flag first: an immediate trigger (SET CONSTRAINTS) runs
        -- within the insert and clears it again.
        PERFORM set_config('arcana_offline.queued', '1', true);
        INSERT INTO arcana_offline.commits (xid) VALUES (txid_current());
    END IF;
END
$f$;

CREATE OR REPLACE FUNCTION arcana_offline.sequence()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE
    me bigint := txid_current();
    s text;
    n bigint;
    base bigint;
BEGIN
    FOR s, n IN SELECT p.scope, count(*) FROM arcana_offline.pending p WHERE p.xid = me
                GROUP BY p.scope ORDER BY p.scope LOOP
        INSERT INTO arcana_offline.scopes (scope) VALUES (s) ON CONFLICT DO NOTHING;
        UPDATE arcana_offline.scopes SET seq = seq + n WHERE scope = s RETURNING seq - n INTO base;
        INSERT INTO arcana_offline.changes (scope, seq, tbl, id, op, version, client_id, bundle_id, xid)
        SELECT p.scope, base + row_number() OVER (ORDER BY p.ord), p.tbl, p.id, p.op, p.version,
               p.client_id, p.bundle_id, me
        FROM arcana_offline.pending p WHERE p.xid = me AND p.scope = s;
        PERFORM pg_notify('arcana_offline', s);
    END LOOP;
    DELETE FROM arcana_offline.pending WHERE xid = me;
    DELETE FROM arcana_offline.commits WHERE xid = me;
    -- Changes made after this (past SET CONSTRAINTS ... IMMEDIATE) queue
    -- the trigger again.
    PERFORM set_config('arcana_offline.queued', '', true);
    RETURN NULL;
END
$f$;

DO $d$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'arcana_offline_sequence'
                   AND tgrelid = 'arcana_offline.commits'::regclass) THEN
        CREATE CONSTRAINT TRIGGER arcana_offline_sequence AFTER INSERT ON arcana_offline.commits
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION arcana_offline.sequence();
    END IF;
END
$d$;
"#;

/// The SQL naming a row's id and key texts, over `r` (NEW or OLD).
fn id_expr(t: &TableSpec, r: &str) -> (String, String) {
    let parts: Vec<String> = t
        .key
        .iter()
        .map(|(k, _)| format!("{r}.{}::text", ident(k)))
        .collect();
    let array = format!("ARRAY[{}]::text[]", parts.join(", "));
    let id = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("to_json({array})::text")
    };
    (id, array)
}

fn trigger_name(t: &TableSpec) -> String {
    format!("arcana_offline_{}", t.name.replace('.', "_"))
}

fn function_name(t: &TableSpec) -> String {
    format!("arcana_offline.{}", ident(&format!("log_{}", t.name)))
}

/// The SQL recording one row image `r` with operation `op`.
fn record_call(t: &TableSpec, r: &str, op: u8) -> String {
    let (id, key) = id_expr(t, r);
    format!(
        "PERFORM arcana_offline.record({}, {id}, {key}, {} || {r}.{}::text, {op}::smallint);",
        literal(&t.name),
        literal(&t.prefix),
        ident(&t.scope_column)
    )
}

/// The trigger function and trigger of one sync table.
pub fn table_sql(t: &TableSpec) -> String {
    let keys_or_scope_changed = t
        .key
        .iter()
        .map(|(k, _)| k.as_str())
        .chain([t.scope_column.as_str()])
        .map(|c| format!("OLD.{0} IS DISTINCT FROM NEW.{0}", ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ");
    format!(
        r#"
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {ins}
    ELSIF TG_OP = 'DELETE' THEN
        {del}
    ELSIF {moved} THEN
        -- A row that changes key or scope leaves one place for another.
        {del}
        {ins}
    ELSE
        {upd}
    END IF;
    RETURN NULL;
END
$f$;
DO $d$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = {tname}
                   AND tgrelid = {regclass}::regclass) THEN
        CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {func}();
        -- Rows already there are logged once, so a device pulling from 0
        -- gets them too.
        PERFORM arcana_offline.record({tlit}, {id}, {key}, {prefix} || r.{scol}::text, 1::smallint)
        FROM {table} AS r;
    END IF;
END
$d$;
-- TRUNCATE fires no row triggers: every row the log holds as live is
-- logged deleted, from the log's own copy (the table is not read).
CREATE OR REPLACE FUNCTION {tfunc}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
BEGIN
    PERFORM arcana_offline.record(r.tbl, r.id, r.key, r.scope, 3::smallint)
    FROM arcana_offline.rows AS r WHERE r.tbl = {tlit} AND NOT r.deleted;
    RETURN NULL;
END
$f$;
DO $d$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = {ttname}
                   AND tgrelid = {regclass}::regclass) THEN
        CREATE TRIGGER {ttrigger} BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {tfunc}();
    END IF;
END
$d$;
"#,
        tfunc = format!("arcana_offline.{}", ident(&format!("truncate_{}", t.name))),
        ttname = literal(&format!("{}_truncate", trigger_name(t))),
        ttrigger = ident(&format!("{}_truncate", trigger_name(t))),
        func = function_name(t),
        ins = record_call(t, "NEW", 1),
        del = record_call(t, "OLD", 3),
        upd = record_call(t, "NEW", 2),
        moved = keys_or_scope_changed,
        tname = literal(&trigger_name(t)),
        regclass = literal(&t.quoted),
        trigger = ident(&trigger_name(t)),
        table = t.quoted,
        tlit = literal(&t.name),
        id = id_expr(t, "r").0,
        key = id_expr(t, "r").1,
        prefix = literal(&t.prefix),
        scol = ident(&t.scope_column),
    )
}

/// Everything, for `arcana offline sql` and for installing. `eval_role`
/// (`database.eval_role`) gets what pushes, pulls and snapshots read and
/// write directly.
pub fn script(tables: &[TableSpec], eval_role: Option<&str>) -> String {
    let mut s = String::from(BASE);
    for t in tables {
        s.push_str(&table_sql(t));
    }
    if let Some(role) = eval_role {
        let r = ident(role);
        s.push_str(&format!(
            "\nGRANT USAGE ON SCHEMA arcana_offline TO {r};\n\
             GRANT SELECT ON arcana_offline.rows, arcana_offline.changes, arcana_offline.scopes TO {r};\n\
             GRANT SELECT, INSERT ON arcana_offline.bundles TO {r};\n"
        ));
    }
    s
}

/// Installs the schema in one transaction, serialized between servers
/// starting at once by an advisory lock.
pub async fn install(
    client: &mut tokio_postgres::Client,
    tables: &[TableSpec],
    eval_role: Option<&str>,
) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('arcana_offline install'));\n{}",
        script(tables, eval_role)
    ))
    .await
    .map_err(|e| {
        let msg = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        format!("installing the offline change log: {msg}")
    })?;
    tx.commit().await.map_err(|e| e.to_string())
}
