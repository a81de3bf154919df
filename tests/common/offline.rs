//! A test device for the offline service: registers, pushes bundles, pulls
//! and snapshots into a local copy of rows.

use std::collections::{BTreeMap, HashMap};

use arcana::proto::{self as pb, offline_service_client::OfflineServiceClient};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

use super::{Bearer, Harness};

pub type OfflineClient = OfflineServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn offline_client(h: &Harness, token: &str) -> OfflineClient {
    OfflineServiceClient::with_interceptor(h.channel().await, Bearer(token.into()))
}

/// A local row: its version and values.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRow {
    pub version: u64,
    pub values: HashMap<String, pb::Value>,
    /// The scope the device holds the row through.
    pub scope: String,
}

pub struct Device {
    pub client: OfflineClient,
    pub id: String,
    pub next_bundle: u64,
    pub at: BTreeMap<String, u64>,
    pub rows: BTreeMap<(String, String), LocalRow>,
}

pub fn intent(
    table: &str,
    op: pb::IntentOp,
    values: &[(&str, pb::Value)],
    base_version: u64,
) -> pb::RowIntent {
    pb::RowIntent {
        table: table.into(),
        op: op as i32,
        values: values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        base_version,
        client_time_unix_ms: 0,
    }
}

pub fn text_of(v: Option<&pb::Value>) -> Option<String> {
    match v?.kind.as_ref()? {
        pb::value::Kind::String(s) => Some(s.clone()),
        pb::value::Kind::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

impl Device {
    pub async fn new(h: &Harness, token: &str, id: &str) -> Device {
        let mut client = offline_client(h, token).await;
        let r = client
            .register_client(pb::RegisterClientRequest {
                client_id: id.into(),
                platform: "test".into(),
                app_version: "1.0.0".into(),
                replaces_client_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.scopes.is_empty());
        Device {
            client,
            id: id.into(),
            next_bundle: 1,
            at: BTreeMap::new(),
            rows: BTreeMap::new(),
        }
    }

    /// Pushes one bundle in one chunk under the next bundle id.
    pub async fn push(&mut self, intents: Vec<pb::RowIntent>) -> Result<pb::PushResponse, Status> {
        let b = self.next_bundle;
        self.next_bundle += 1;
        self.push_as(b, intents).await
    }

    pub async fn push_as(
        &mut self,
        bundle_id: u64,
        intents: Vec<pb::RowIntent>,
    ) -> Result<pb::PushResponse, Status> {
        let chunk = pb::PushChunk {
            client_id: self.id.clone(),
            bundle_id,
            chunk_index: 0,
            last: true,
            intents,
        };
        self.push_chunks(vec![chunk]).await
    }

    pub async fn push_chunks(
        &mut self,
        chunks: Vec<pb::PushChunk>,
    ) -> Result<pb::PushResponse, Status> {
        self.client
            .push(tokio_stream::iter(chunks))
            .await
            .map(|r| r.into_inner())
    }

    pub fn after(&self) -> Vec<pb::ScopeSequence> {
        self.at
            .iter()
            .map(|(s, q)| pb::ScopeSequence {
                scope: s.clone(),
                sequence: *q,
            })
            .collect()
    }

    /// Applies one change if it is not older than what the device holds; a
    /// row that moved out of the change's scope is dropped only when the
    /// local copy is older, or is held through that scope (or none known).
    pub fn apply(&mut self, c: &pb::RowChange) {
        let k = (c.table.clone(), c.id.clone());
        if let Some(r) = self.rows.get(&k) {
            if r.version > c.version {
                return;
            }
            // At the change's version the local copy is the row in its new
            // scope.
            if c.moved_out && r.version == c.version && !r.scope.is_empty() && r.scope != c.scope {
                return;
            }
        }
        if c.op == pb::IntentOp::Delete as i32 {
            self.rows.remove(&k);
        } else {
            self.rows.insert(
                k,
                LocalRow {
                    version: c.version,
                    values: c.values.clone(),
                    scope: c.scope.clone(),
                },
            );
        }
    }

    /// Pulls only `scopes` (from where the device stands, 0 for a scope it
    /// does not hold yet) until caught up.
    pub async fn pull_only(&mut self, scopes: &[&str]) -> Result<(), Status> {
        let after = scopes
            .iter()
            .map(|s| pb::ScopeSequence {
                scope: s.to_string(),
                sequence: self.at.get(*s).copied().unwrap_or(0),
            })
            .collect();
        let mut s = self
            .client
            .pull(pb::PullRequest {
                client_id: self.id.clone(),
                after,
                ..Default::default()
            })
            .await?
            .into_inner();
        while let Some(m) = s.next().await {
            match m?.kind {
                Some(pb::pull_response::Kind::Changes(b)) => self.take(&b),
                other => panic!("pulling {scopes:?}: {other:?}"),
            }
        }
        Ok(())
    }

    /// Stops holding a scope: forgets its position and its rows.
    pub fn drop_scope(&mut self, scope: &str) {
        self.at.remove(scope);
        self.rows.retain(|_, r| r.scope != scope);
    }

    /// Pulls until caught up; returns the snapshot demand, if any.
    pub async fn pull(&mut self) -> Result<Option<pb::SnapshotRequired>, Status> {
        let mut s = self
            .client
            .pull(pb::PullRequest {
                client_id: self.id.clone(),
                after: self.after(),
                max_rows: 0,
                max_bytes: 0,
                follow: false,
                tables: Vec::new(),
            })
            .await?
            .into_inner();
        while let Some(m) = s.next().await {
            match m?.kind {
                Some(pb::pull_response::Kind::Changes(b)) => self.take(&b),
                Some(pb::pull_response::Kind::SnapshotRequired(r)) => return Ok(Some(r)),
                None => {}
            }
        }
        Ok(None)
    }

    pub fn take(&mut self, b: &pb::ChangeBatch) {
        for c in &b.changes {
            self.apply(c);
        }
        for t in &b.through {
            self.at.insert(t.scope.clone(), t.sequence);
        }
    }

    /// Replaces the local copy with a snapshot.
    pub async fn snapshot(&mut self) -> Result<(), Status> {
        let mut s = self
            .client
            .snapshot(pb::SnapshotRequest {
                client_id: self.id.clone(),
                scopes: vec![],
                cursor: String::new(),
            })
            .await?
            .into_inner();
        self.rows.clear();
        while let Some(c) = s.next().await {
            let c = c?;
            for r in c.rows {
                self.rows.insert(
                    (r.table.clone(), r.id.clone()),
                    LocalRow {
                        version: r.version,
                        values: r.values,
                        scope: r.scope,
                    },
                );
            }
            for a in c.at {
                self.at.insert(a.scope, a.sequence);
            }
        }
        Ok(())
    }

    /// table -> id -> the text of `column`, for comparing with the server.
    pub fn column(&self, table: &str, column: &str) -> BTreeMap<String, Option<String>> {
        self.rows
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, id), r)| (id.clone(), text_of(r.values.get(column))))
            .collect()
    }

    pub fn version(&self, table: &str, id: &str) -> u64 {
        self.rows
            .get(&(table.to_owned(), id.to_owned()))
            .map_or(0, |r| r.version)
    }
}

/// id -> `column` of the rows of `table` in `where`, read from PostgreSQL.
pub async fn server_column(
    h: &Harness,
    table: &str,
    column: &str,
    filter: &str,
) -> BTreeMap<String, Option<String>> {
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query(
        &format!("SELECT id::text, {column}::text FROM {table} WHERE {filter}"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
