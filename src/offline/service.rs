//! The `OfflineService` gRPC handlers: authentication, argument checks,
//! and the hand-off to push, pull and snapshot.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::scopes::{check_own, scopes_of};
use super::snapshot::Cursor;
use super::state::{check_client, db_status, Offline, PROTOCOL_VERSION};
use crate::engine::Identity;
use crate::grpc::caller::credentials;
use crate::proto as pb;
use crate::wire::status::status;

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/arcana.v1.OfflineService.rs"));
}
pub use generated::offline_service_server;

/// Longest client id accepted, in characters.
const MAX_CLIENT_ID: usize = 128;
/// Longest `platform` and `app_version` accepted, in characters.
const MAX_CLIENT_TEXT: usize = 64;

impl Offline {
    async fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        Ok(credentials(&*self.inner.auth, req).await?.identity)
    }
}

/// Parses "1.4.2" (pre-release and build suffixes ignored) to numbers.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty() && p.len() <= 4)
}

/// Compares versions with missing parts read as 0.
fn version_at_least(have: &[u64], min: &[u64]) -> bool {
    let n = have.len().max(min.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    for i in 0..n {
        match at(have, i).cmp(&at(min, i)) {
            std::cmp::Ordering::Greater => return true,
            std::cmp::Ordering::Less => return false,
            std::cmp::Ordering::Equal => {}
        }
    }
    true
}

#[tonic::async_trait]
impl offline_service_server::OfflineService for Offline {
    async fn capabilities(
        &self,
        req: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        self.caller(&req).await?;
        let cfg = &self.inner.cfg;
        Ok(Response::new(pb::CapabilitiesResponse {
            protocol_version: PROTOCOL_VERSION,
            schema_version: cfg.schema_version,
            schema_hash: self.inner.schema_hash.clone(),
            tables: self.inner.tables.iter().map(|t| t.to_pb()).collect(),
            limits: Some(pb::OfflineLimits {
                max_push_rows: cfg.max_push_rows,
                max_push_bytes: cfg.max_push_bytes,
                max_chunk_rows: cfg.max_chunk_rows,
                max_pull_rows: cfg.max_pull_rows,
                max_pull_bytes: cfg.max_pull_bytes,
                snapshot_chunk_rows: cfg.snapshot_chunk_rows,
                retention_seconds: cfg.retention_seconds,
            }),
            features: vec!["follow".into(), "snapshot_resume".into()],
            min_app_version: cfg.min_app_version.clone(),
        }))
    }

    async fn register_client(
        &self,
        req: Request<pb::RegisterClientRequest>,
    ) -> Result<Response<pb::RegisterClientResponse>, Status> {
        let id = self.caller(&req).await?;
        let r = req.into_inner();
        if r.client_id.is_empty() || r.client_id.chars().count() > MAX_CLIENT_ID {
            return Err(status(
                Code::InvalidArgument,
                format!("client_id must be 1 to {MAX_CLIENT_ID} characters (a UUID is fine)"),
            ));
        }
        for (field, v) in [("platform", &r.platform), ("app_version", &r.app_version)] {
            if v.chars().count() > MAX_CLIENT_TEXT {
                return Err(status(
                    Code::InvalidArgument,
                    format!(
                        "{field} is longer than {MAX_CLIENT_TEXT} characters: send a short name"
                    ),
                ));
            }
        }
        let min = &self.inner.cfg.min_app_version;
        if !min.is_empty() {
            let have = parse_version(&r.app_version).ok_or_else(|| {
                status(
                    Code::InvalidArgument,
                    format!(
                        "app_version `{}` is not a version like 1.4.2",
                        r.app_version
                    ),
                )
            })?;
            let need = parse_version(min).unwrap_or_default();
            if !version_at_least(&have, &need) {
                return Err(status(
                    Code::FailedPrecondition,
                    format!(
                        "upgrade required: app version {} is too old, this server needs >= {min}",
                        r.app_version
                    ),
                ));
            }
        }
        let mut c = self.conn().await?;
        let tx = c
            .transaction()
            .await
            .map_err(|e| db_status("registering the client", e))?;
        // One registration of a user at a time, so the count below holds.
        let max = self.inner.cfg.max_clients_per_identity as i64;
        let (held, known): (i64, bool) = {
            let row = tx
                .query_one(
                    "SELECT pg_advisory_xact_lock(hashtext('arcana_offline client ' || $1 || '/' || $2)), \
                     (SELECT count(*) FROM arcana_offline.clients WHERE workspace_id = $1 AND user_id = $2 AND active), \
                     EXISTS (SELECT 1 FROM arcana_offline.clients WHERE client_id = $3 AND active)",
                    &[&&*id.workspace_id, &&*id.user_id, &r.client_id],
                )
                .await
                .map_err(|e| db_status("registering the client", e))?;
            (row.get(1), row.get(2))
        };
        let replaces = if !r.replaces_client_id.is_empty() && r.replaces_client_id != r.client_id {
            replace(&tx, &id, &r.replaces_client_id).await?;
            r.replaces_client_id.clone()
        } else {
            String::new()
        };
        // A replaced id was counted and is released now.
        let held = held - i64::from(!replaces.is_empty());
        if !known && held >= max {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "this user already has {max} registered client ids (offline.max_clients_per_identity): reuse a client id; ids not seen for offline.client_idle_seconds are released"
                ),
            ));
        }
        let owner = tx
            .query_opt(
                "INSERT INTO arcana_offline.clients (client_id, workspace_id, user_id, platform, app_version, replaces) \
                 VALUES ($1, $2, $3, $4, $5, nullif($6, '')) \
                 ON CONFLICT (client_id) DO UPDATE SET platform = EXCLUDED.platform, \
                     app_version = EXCLUDED.app_version, last_seen = now(), active = true, \
                     replaces = coalesce(EXCLUDED.replaces, clients.replaces) \
                 WHERE clients.workspace_id = EXCLUDED.workspace_id AND clients.user_id = EXCLUDED.user_id \
                 RETURNING 1",
                &[
                    &r.client_id,
                    &&*id.workspace_id,
                    &&*id.user_id,
                    &r.platform,
                    &r.app_version,
                    &replaces,
                ],
            )
            .await
            .map_err(|e| db_status("registering the client", e))?;
        tx.commit()
            .await
            .map_err(|e| db_status("registering the client", e))?;
        if owner.is_none() {
            return Err(status(
                Code::PermissionDenied,
                format!(
                    "client id `{}` is registered to another user: choose a new client id",
                    r.client_id
                ),
            ));
        }
        let scopes = scopes_of(self, &id).await?;
        let mut at: BTreeMap<String, u64> = scopes.iter().map(|s| (s.clone(), 0)).collect();
        for row in c
            .query(
                "SELECT scope, seq FROM arcana_offline.scopes WHERE scope = ANY($1)",
                &[&scopes],
            )
            .await
            .map_err(|e| db_status("reading the scopes", e))?
        {
            at.insert(row.get(0), row.get::<_, i64>(1) as u64);
        }
        Ok(Response::new(pb::RegisterClientResponse {
            scopes: at
                .into_iter()
                .map(|(scope, sequence)| pb::ScopeSequence { scope, sequence })
                .collect(),
            schema_hash: self.inner.schema_hash.clone(),
        }))
    }

    async fn push(
        &self,
        req: Request<Streaming<pb::PushChunk>>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let id = self.caller(&req).await?;
        let r = super::push::push(self, &id, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    type PullStream = ReceiverStream<Result<pb::PullResponse, Status>>;

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let id = self.caller(&req).await?;
        let r = req.into_inner();
        check_client(self, &id, &r.client_id).await?;
        let mine = scopes_of(self, &id).await?;
        let after: BTreeMap<String, u64> = if r.after.is_empty() {
            mine.iter().map(|s| (s.clone(), 0)).collect()
        } else {
            r.after
                .iter()
                .map(|s| (s.scope.clone(), s.sequence))
                .collect()
        };
        check_own(&mine, after.keys())?;
        // The log stores sequences as bigint: a larger position was never
        // issued, and would otherwise read as a negative one.
        if let Some((scope, seq)) = after.iter().find(|(_, &s)| i64::try_from(s).is_err()) {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "after: sequence {seq} of scope `{scope}` was never issued (sequences stay below 2^63): pull from the `through` of your last batch, or take a Snapshot"
                ),
            ));
        }
        let cfg = &self.inner.cfg;
        let bound = |asked: u32, max: u32| {
            if asked == 0 || asked > max {
                max
            } else {
                asked
            }
        };
        // Pulling from a position acknowledges every change up to it: the
        // device no longer needs them (compaction, see retention.rs).
        if r.tables.is_empty() {
            super::retention::acknowledge(self, &r.client_id, &after).await?;
        }
        if let Some(t) = r.tables.iter().find(|t| self.table(t).is_none()) {
            return Err(status(
                Code::InvalidArgument,
                format!("tables: `{t}` is not a synced table (Capabilities lists them)"),
            ));
        }
        let shape = super::pull::Shape {
            max_rows: bound(r.max_rows, cfg.max_pull_rows).max(1) as usize,
            max_bytes: bound(r.max_bytes, cfg.max_pull_bytes) as usize,
            tables: r.tables,
        };
        let slot = if r.follow {
            Some(super::pull::take_follow(self, &id, &r.client_id)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(super::pull::run(self.clone(), id, after, shape, slot, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let id = self.caller(&req).await?;
        let r = req.into_inner();
        check_client(self, &id, &r.client_id).await?;
        let cursor = if r.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&r.cursor, &self.inner.cursor_key)?)
        };
        let mine = scopes_of(self, &id).await?;
        let scopes: Vec<String> = match &cursor {
            Some(c) => c.at.keys().cloned().collect(),
            None if r.scopes.is_empty() => mine.clone(),
            None => r.scopes.clone(),
        };
        check_own(&mine, scopes.iter())?;
        let slot = super::snapshot::take_slot(self, &id, &r.client_id)?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(super::snapshot::run(
            self.clone(),
            id,
            scopes,
            cursor,
            slot,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Releases `old`, a client id of the caller's, for `new`, which takes over
/// its applied bundles (see `RegisterClientRequest.replaces_client_id`).
async fn replace(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &Identity,
    old: &str,
) -> Result<(), Status> {
    let owner = tx
        .query_opt(
            "SELECT workspace_id = $2 AND user_id = $3 FROM arcana_offline.clients WHERE client_id = $1",
            &[&old, &&*id.workspace_id, &&*id.user_id],
        )
        .await
        .map_err(|e| db_status("replacing the client", e))?;
    let refusal = match owner.map(|r| r.get::<_, bool>(0)) {
        Some(true) => None,
        Some(false) => Some((
            Code::PermissionDenied,
            format!("replaces_client_id: `{old}` is not one of your client ids"),
        )),
        None => Some((
            Code::InvalidArgument,
            format!(
                "replaces_client_id: `{old}` was never registered; leave it empty for a new device"
            ),
        )),
    };
    if let Some((code, message)) = refusal {
        return Err(status(code, message));
    }
    tx.execute(
        "UPDATE arcana_offline.clients SET active = false WHERE client_id = $1",
        &[&old],
    )
    .await
    .map_err(|e| db_status("replacing the client", e))?;
    tx.execute(
        "DELETE FROM arcana_offline.positions WHERE client_id = $1",
        &[&old],
    )
    .await
    .map_err(|e| db_status("replacing the client", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        let v = |s| parse_version(s).unwrap();
        assert!(version_at_least(&v("1.4.2"), &v("1.4.0")));
        assert!(version_at_least(&v("1.10.0"), &v("1.9.9")));
        assert!(!version_at_least(&v("1.4"), &v("1.4.1")));
        assert!(version_at_least(&v("2.0.0-beta"), &v("2")));
        assert!(parse_version("one.two").is_none());
    }
}
