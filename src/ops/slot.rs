//! The replication slot's state: `arcana slot status|drop`, the startup
//! warning about retained WAL, and the slot numbers of `/metrics`.

use deadpool_postgres::Pool;

use super::metrics::SlotNumbers;

/// One slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// Whether a client (a running server) streams from it.
    pub active: bool,
    /// The backend streaming from it, if active.
    pub active_pid: Option<i32>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL kept for this slot.
    pub retained_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// The confirmed flush position, as PostgreSQL prints it.
    pub confirmed_flush: Option<String>,
    /// The confirmed flush position in bytes.
    pub confirmed_bytes: Option<i64>,
}

const STATUS_SQL: &str = "SELECT slot_name::text, active, active_pid, \
     (pg_current_wal_lsn() - restart_lsn)::int8, \
     (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
     confirmed_flush_lsn::text, \
     (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 \
     FROM pg_replication_slots WHERE slot_name = $1";

/// The slot named `name`, if it exists.
pub async fn status(pool: &Pool, name: &str) -> Result<Option<SlotStatus>, String> {
    let c = pool
        .get()
        .await
        .map_err(|e| format!("connecting to the database: {e}"))?;
    let row = c
        .query_opt(STATUS_SQL, &[&name])
        .await
        .map_err(|e| format!("reading pg_replication_slots: {e}"))?;
    Ok(row.map(|r| SlotStatus {
        name: r.get(0),
        active: r.get(1),
        active_pid: r.get(2),
        retained_bytes: r.get(3),
        lag_bytes: r.get(4),
        confirmed_flush: r.get(5),
        confirmed_bytes: r.get(6),
    }))
}

/// The numbers `/metrics` shows; none when they cannot be read.
pub async fn numbers(pool: &Pool, name: &str) -> Option<SlotNumbers> {
    let s = status(pool, name).await.ok()??;
    Some(SlotNumbers {
        confirmed: s.confirmed_bytes.unwrap_or(0).max(0) as u64,
        lag_bytes: s.lag_bytes.unwrap_or(0),
        retained_bytes: s.retained_bytes.unwrap_or(0),
    })
}

/// Drops the slot, refusing while a server streams from it.
pub async fn drop_slot(pool: &Pool, name: &str) -> Result<(), String> {
    let Some(s) = status(pool, name).await? else {
        return Err(format!("there is no replication slot `{name}`"));
    };
    if s.active {
        let pid = s
            .active_pid
            .map(|p| format!(" (PID {p})"))
            .unwrap_or_default();
        return Err(format!(
            "replication slot `{name}` is active: a server is streaming from it{pid}; \
             stop every Arcana server using it, then drop it"
        ));
    }
    let c = pool
        .get()
        .await
        .map_err(|e| format!("connecting to the database: {e}"))?;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("dropping `{name}`: {}", db.message()),
            None => format!("dropping `{name}`: {e}"),
        })?;
    Ok(())
}

/// Logs a warning when the slot keeps more than `max_mb` MiB of WAL.
pub async fn warn_if_retaining(pool: &Pool, name: &str, max_mb: u64) {
    match status(pool, name).await {
        Ok(Some(s)) => {
            let retained = s.retained_bytes.unwrap_or(0).max(0) as u64;
            if retained > max_mb.saturating_mul(1 << 20) {
                tracing::warn!(
                    slot = name,
                    retained_mb = retained >> 20,
                    limit_mb = max_mb,
                    "the replication slot retains much WAL (changes.max_retained_wal_mb): \
                     the server was down or behind; it catches up now, or see \
                     `arcana slot status` and docs/OPERATIONS.md"
                );
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(slot = name, error = %e, "cannot read the replication slot"),
    }
}

/// `bytes` for people: B, kB, MB, GB.
pub fn human(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes.unsigned_abs() {
        n if n < 1 << 10 => format!("{bytes} B"),
        n if n < 1 << 20 => format!("{:.1} kB", b / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MB", b / (1024.0 * 1024.0)),
        _ => format!("{:.2} GB", b / (1024.0 * 1024.0 * 1024.0)),
    }
}
