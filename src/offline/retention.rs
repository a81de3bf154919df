//! Retention: prunes the change log by age and by count per scope, raising
//! the scope's floor (pulls from below it must snapshot), drops old bundle
//! results, and deactivates clients idle past the threshold.

use std::time::Duration;

use super::state::Offline;

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
    let scopes = c
        .query(
            "SELECT s.scope, s.seq, s.floor, \
                 (SELECT max(seq) FROM arcana_offline.changes c \
                  WHERE c.scope = s.scope AND c.at < now() - make_interval(secs => $1)) \
             FROM arcana_offline.scopes s",
            &[&age],
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
        let by_age_wins = by_age >= by_count;
        let (cut, reason) = if by_age_wins {
            (
                by_age,
                format!(
                    "changes older than offline.retention_seconds = {} were pruned",
                    cfg.retention_seconds
                ),
            )
        } else {
            (
                by_count,
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
        crate::ops::offline_metrics::floor_raised(by_age_wins, pruned);
    }
    Ok(())
}
