//! Retention: prunes the change log per scope by age and by count (the
//! ceilings), and below what every active device has pulled (compaction,
//! which sends no active device to a snapshot), raising the scope's floor
//! (pulls from below it must snapshot); drops old bundle results, and
//! deactivates clients idle past the threshold.

use std::time::Duration;

use std::collections::BTreeMap;

use tonic::Status;

use super::state::{db_status, Offline};

/// Runs forever, every `retention_interval_ms`.
pub async fn run(o: Offline) {
    let every = Duration::from_millis(o.inner.cfg.retention_interval_ms.max(10));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = prune(&o).await {
            tracing::warn!(error = %e, "offline retention failed; retrying at the next interval");
        }
    }
}

/// Records that `client_id` holds every change up to `after` of each
/// scope. A pull of some tables only acknowledges nothing: the device may
/// lack the other tables' changes.
pub async fn acknowledge(
    o: &Offline,
    client_id: &str,
    after: &BTreeMap<String, u64>,
) -> Result<(), Status> {
    let scopes: Vec<&String> = after.keys().collect();
    let seqs: Vec<i64> = after.values().map(|&s| s as i64).collect();
    o.conn()
        .await?
        .execute(
            "INSERT INTO arcana_offline.positions (client_id, scope, seq) \
             SELECT $1, s, q FROM unnest($2::text[], $3::int8[]) AS u(s, q) \
             ON CONFLICT (client_id, scope) DO UPDATE SET seq = EXCLUDED.seq, at = now()",
            &[&client_id, &scopes, &seqs],
        )
        .await
        .map_err(|e| db_status("recording the pull's position", e))?;
    Ok(())
}

/// One pass.
pub async fn prune(o: &Offline) -> Result<(), String> {
    let cfg = &o.inner.cfg;
    let c = o.inner.pool.get().await.map_err(|e| e.to_string())?;
    let err = |e: tokio_postgres::Error| e.to_string();
    let age = cfg.retention_seconds as f64;
    c.execute(
        "UPDATE arcana_offline.clients SET active = false \
         WHERE active AND last_seen < now() - make_interval(secs => $1)",
        &[&(cfg.client_idle_seconds as f64)],
    )
    .await
    .map_err(err)?;
    c.execute(
        "DELETE FROM arcana_offline.bundles WHERE at < now() - make_interval(secs => $1)",
        &[&age],
    )
    .await
    .map_err(err)?;
    // Devices that went idle no longer hold back compaction.
    c.execute(
        "DELETE FROM arcana_offline.positions p USING arcana_offline.clients k \
         WHERE k.client_id = p.client_id AND NOT k.active",
        &[],
    )
    .await
    .map_err(err)?;
    let scopes = c
        .query(
            "SELECT s.scope, s.seq, s.floor, \
                 (SELECT max(seq) FROM arcana_offline.changes c \
                  WHERE c.scope = s.scope AND c.at < now() - make_interval(secs => $1)), \
                 (SELECT min(p.seq) FROM arcana_offline.positions p \
                  JOIN arcana_offline.clients k ON k.client_id = p.client_id AND k.active \
                  WHERE p.scope = s.scope), \
                 (SELECT max(seq) FROM arcana_offline.changes c \
                  WHERE c.scope = s.scope AND c.at <= now() - make_interval(secs => $2)) \
             FROM arcana_offline.scopes s",
            &[&age, &(cfg.compact_after_seconds as f64)],
        )
        .await
        .map_err(err)?;
    let max_rows = cfg.retention_max_rows.min(i64::MAX as u64) as i64;
    for s in scopes {
        let scope: String = s.get(0);
        let seq: i64 = s.get(1);
        let floor: i64 = s.get(2);
        let by_age: i64 = s.get::<_, Option<i64>>(3).unwrap_or(0);
        let by_count = seq - max_rows;
        // What every active device of the scope has pulled, once old
        // enough; nothing while no active device reported a position.
        let compacted = match (s.get::<_, Option<i64>>(4), s.get::<_, Option<i64>>(5)) {
            (Some(need), Some(old)) => need.min(old),
            _ => 0,
        };
        let (cut, why, reason) = if compacted > by_age.max(by_count) {
            (
                compacted,
                "compacted",
                format!(
                    "changes every active device had pulled were compacted after offline.compact_after_seconds = {}",
                    cfg.compact_after_seconds
                ),
            )
        } else if by_age >= by_count {
            (
                by_age,
                "age",
                format!(
                    "changes older than offline.retention_seconds = {} were pruned",
                    cfg.retention_seconds
                ),
            )
        } else {
            (
                by_count,
                "count",
                format!(
                    "only the last offline.retention_max_rows = {} changes are kept",
                    cfg.retention_max_rows
                ),
            )
        };
        if cut <= floor {
            continue;
        }
        // The floor moves first: a pull reading between the two sees the
        // new floor and snapshots rather than missing pruned changes.
        c.execute(
            "UPDATE arcana_offline.scopes SET floor = $2, floor_reason = $3 \
             WHERE scope = $1 AND floor < $2",
            &[&scope, &cut, &reason],
        )
        .await
        .map_err(err)?;
        let pruned = c
            .execute(
                "DELETE FROM arcana_offline.changes WHERE scope = $1 AND seq <= $2",
                &[&scope, &cut],
            )
            .await
            .map_err(err)?;
        crate::ops::offline_metrics::floor_raised(why, pruned);
    }
    Ok(())
}
