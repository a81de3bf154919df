//! The offline service's shared state (its pool, tables, quotas and
//! signing key) and the database helpers every call uses.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::broadcast;
use tonic::{Code, Status};

use super::quota;
use super::spec::TableSpec;
use crate::auth::Authenticator;
use crate::config::OfflineConfig;
use crate::engine::{Identity, Value};
use crate::postgres::context::TxContext;
use crate::postgres::values::SqlValue;
use crate::proto as pb;
use crate::wire::convert::value_to_pb;
use crate::wire::status::status;

/// Version of the offline protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// The offline sync service, cheap to clone.
#[derive(Clone)]
pub struct Offline {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Offline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offline")
            .field("tables", &self.inner.tables.len())
            .finish()
    }
}

pub(super) struct Inner {
    pub(super) pool: Pool,
    pub(super) auth: Arc<dyn Authenticator>,
    pub(super) cfg: OfflineConfig,
    pub(super) tables: Vec<TableSpec>,
    pub(super) schema_hash: String,
    pub(super) ctx: TxContext,
    /// Scopes that committed changes, from the NOTIFY listener; `*` after a
    /// reconnect (anything may have changed).
    pub(super) commits: broadcast::Sender<Arc<str>>,
    /// Open follow streams per client id and per identity.
    pub(super) follows: quota::Quota,
    /// Open snapshots per client id and per identity.
    pub(super) snapshots: quota::Quota,
    /// The key snapshot cursors are signed with.
    pub(super) cursor_key: Vec<u8>,
}

impl Offline {
    pub(super) fn table(&self, name: &str) -> Option<&TableSpec> {
        self.inner.tables.iter().find(|t| t.name == name)
    }

    pub(super) async fn conn(&self) -> Result<deadpool_postgres::Object, Status> {
        self.inner.pool.get().await.map_err(|e| {
            status(
                Code::Unavailable,
                format!("the database is not available right now, retry: {e}"),
            )
        })
    }
}

/// A database error as a status for the caller: the server's own failures
/// are UNAVAILABLE (retry), errors about the caller's data INVALID_ARGUMENT.
pub(super) fn db_status(what: &str, e: tokio_postgres::Error) -> Status {
    match e.as_db_error() {
        Some(d) => {
            let code = match d.code().code() {
                // Serialization failures and deadlocks: try again.
                "40001" | "40P01" => Code::Aborted,
                "42501" => Code::PermissionDenied,
                c if c.starts_with("22") || c.starts_with("23") => Code::InvalidArgument,
                _ => Code::Internal,
            };
            status(code, format!("{what}: {}", d.message()))
        }
        None => {
            if let Some(b) = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<crate::postgres::values::BindError>())
            {
                return status(Code::InvalidArgument, format!("{what}: {b}"));
            }
            status(
                Code::Unavailable,
                format!("{what}: the database connection failed, retry: {e}"),
            )
        }
    }
}

/// A row as read from its table: its id and travelling values.
pub(super) struct ReadRow {
    pub(super) id: String,
    pub(super) values: HashMap<String, pb::Value>,
}

/// Reads the rows with the given key texts from `t`, by id.
pub(super) async fn read_rows<C: deadpool_postgres::GenericClient>(
    c: &C,
    t: &TableSpec,
    keys: &[Vec<String>],
) -> Result<HashMap<String, ReadRow>, tokio_postgres::Error> {
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let mut columns: Vec<Vec<String>> = vec![Vec::with_capacity(keys.len()); t.key.len()];
    for k in keys {
        for (i, part) in k.iter().enumerate().take(t.key.len()) {
            columns[i].push(part.clone());
        }
    }
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
        .iter()
        .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let stmt = c.prepare_cached(&t.select_by_keys).await?;
    for row in c.query(&stmt, &params).await? {
        let r = to_read_row(t, &row)?;
        out.insert(r.id.clone(), r);
    }
    Ok(out)
}

pub(super) fn to_read_row(
    t: &TableSpec,
    row: &tokio_postgres::Row,
) -> Result<ReadRow, tokio_postgres::Error> {
    let mut values = HashMap::with_capacity(t.columns.len());
    let mut key_values: Vec<Value> = vec![Value::Null; t.key.len()];
    for (i, c) in t.columns.iter().enumerate() {
        let v: Option<SqlValue> = row.try_get(i)?;
        let v = v.map_or(Value::Null, |v| v.0);
        if let Some(pos) = t.key.iter().position(|(k, _)| k == &c.name) {
            key_values[pos] = v.clone();
        }
        values.insert(c.name.clone(), value_to_pb(&v));
    }
    Ok(ReadRow {
        id: crate::engine::value::row_id(&key_values),
        values,
    })
}

/// A registered client, checked to belong to the caller and to be active;
/// its last-seen time is updated.
pub(super) async fn check_client(
    o: &Offline,
    id: &Identity,
    client_id: &str,
) -> Result<(), Status> {
    if client_id.is_empty() {
        return Err(status(
            Code::InvalidArgument,
            "client_id is empty: call RegisterClient with a stable client id first",
        ));
    }
    let c = o.conn().await?;
    let row = c
        .query_opt(
            "UPDATE arcana_offline.clients SET last_seen = now() \
             WHERE client_id = $1 AND workspace_id = $2 AND user_id = $3 RETURNING active",
            &[&client_id, &&*id.workspace_id, &&*id.user_id],
        )
        .await
        .map_err(|e| db_status("checking the client", e))?;
    match row {
        None => Err(status(
            Code::FailedPrecondition,
            format!("client `{client_id}` is not registered for this user: call RegisterClient first"),
        )),
        Some(r) if !r.get::<_, bool>(0) => Err(status(
            Code::FailedPrecondition,
            format!(
                "client `{client_id}` was deactivated after {} s without contact: call RegisterClient again and take a Snapshot",
                o.inner.cfg.client_idle_seconds
            ),
        )),
        Some(_) => Ok(()),
    }
}
