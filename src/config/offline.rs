//! The `[offline]` section: which tables devices replicate, how their rows
//! are scoped, who may write them, how conflicts resolve, and the limits.

use serde::Deserialize;

/// `[offline]`: two-way sync for devices that keep their own copy of rows.
/// Off unless `tables` names at least one table.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// The replicated tables.
    pub tables: Vec<SyncTableConfig>,
    /// Version of the replicated schema, announced by Capabilities; bump it
    /// when the tables change in a way devices must notice.
    pub schema_version: u32,
    /// The lowest app version RegisterClient accepts (semantic version,
    /// e.g. "1.4.0"); empty: any.
    pub min_app_version: String,
    /// Create the change-log schema and triggers at startup.
    pub install: bool,
    /// Most row intents in one pushed bundle.
    pub max_push_rows: u32,
    /// Most bytes of row intents in one pushed bundle.
    pub max_push_bytes: u32,
    /// Most row intents in one chunk of a push.
    pub max_chunk_rows: u32,
    /// Most changes in one pull response.
    pub max_pull_rows: u32,
    /// Most bytes of changes in one pull response (one change always goes).
    pub max_pull_bytes: u32,
    /// Rows per snapshot chunk.
    pub snapshot_chunk_rows: u32,
    /// Change-log entries older than this many seconds are pruned.
    pub retention_seconds: u64,
    /// Most change-log entries kept per scope; older ones are pruned.
    pub retention_max_rows: u64,
    /// How often the retention task runs, in milliseconds.
    pub retention_interval_ms: u64,
    /// Change-log entries at least this many seconds old that every
    /// active device of their scope has pulled are pruned before the
    /// ceilings above: no active device has to snapshot for them.
    pub compact_after_seconds: u64,
    /// A client not seen for this many seconds is deactivated and must
    /// register again and take a snapshot.
    pub client_idle_seconds: u64,
    /// Most open follow streams of one client id.
    pub max_follows_per_client: usize,
    /// Connections of the offline service's own pool, apart from the
    /// engine's (`database.pool_size`), so offline work cannot starve view
    /// evaluations and mutations.
    pub pool_size: usize,
    /// A snapshot whose reader has taken no chunk for this many
    /// milliseconds gives its transaction and connection back; it goes on
    /// from where it stood in a new transaction when the reader reads.
    pub snapshot_stall_ms: u64,
    /// Most open snapshots of one client id.
    pub max_snapshots_per_client: usize,
    /// Most open snapshots of one identity (user and workspace).
    pub max_snapshots_per_identity: usize,
    /// Most active registered client ids of one identity.
    pub max_clients_per_identity: usize,
    /// Most open follow streams of one identity, over all its client ids.
    pub max_follows_per_identity: usize,
    /// Key signing snapshot cursors (HMAC-SHA256), as text; none: a random
    /// key made at startup, so cursors do not survive a restart or move to
    /// another server.
    pub cursor_key: Option<String>,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            tables: Vec::new(),
            schema_version: 1,
            min_app_version: String::new(),
            install: true,
            max_push_rows: 1000,
            max_push_bytes: 1 << 20,
            max_chunk_rows: 200,
            max_pull_rows: 500,
            max_pull_bytes: 1 << 20,
            snapshot_chunk_rows: 500,
            retention_seconds: 30 * 24 * 3600,
            retention_max_rows: 1_000_000,
            retention_interval_ms: 60_000,
            compact_after_seconds: 24 * 3600,
            client_idle_seconds: 90 * 24 * 3600,
            max_follows_per_client: 2,
            pool_size: 4,
            snapshot_stall_ms: 5_000,
            max_snapshots_per_client: 1,
            max_snapshots_per_identity: 4,
            max_clients_per_identity: 32,
            max_follows_per_identity: 8,
            cursor_key: None,
        }
    }
}

/// Whose rows a table's rows are: each scope has its own change sequence.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// Rows belong to the workspace in `scope_column`.
    Workspace,
    /// Rows belong to the user in `scope_column`.
    User,
    /// Rows belong to the bucket whose id is in `scope_column`; a caller's
    /// buckets are the rows of `scopes_sql`.
    Sql,
}

/// Who may push writes of a table.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PushPolicy {
    /// Nobody: devices only read it.
    ReadOnly,
    /// Only the user named in `owner_column`.
    OwnerOnly,
    /// Anyone in the row's scope.
    Scope,
}

/// How a write based on a stale row version is resolved.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The whole bundle is refused.
    Reject,
    /// The later client time wins.
    LastWriterWins,
    /// The server's row stands; the write is dropped.
    ServerWins,
}

/// One `[[offline.tables]]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SyncTableConfig {
    /// The table (`schema.table` outside `public`).
    pub table: String,
    /// Key columns; empty: the primary key. Must be the primary key or a
    /// unique index.
    #[serde(default)]
    pub key: Vec<String>,
    /// `workspace`, `user` or `sql`.
    pub scope: ScopeKind,
    /// The column holding the scope's id; default `workspace_id` or
    /// `user_id`; required for `sql`.
    pub scope_column: Option<String>,
    /// For `sql`: the query listing the caller's bucket ids (one column),
    /// with `:user_id` and `:workspace_id` bound from the caller's token.
    pub scopes_sql: Option<String>,
    /// For `sql`: the prefix of the wire's scope names (`<scope_name>:<id>`);
    /// default the table's name.
    pub scope_name: Option<String>,
    /// The columns that travel; empty: all.
    #[serde(default)]
    pub columns: Vec<String>,
    /// `read_only`, `owner_only` or `scope` (default).
    #[serde(default = "default_push")]
    pub push: PushPolicy,
    /// The column naming a row's owner (user id), for `owner_only`.
    pub owner_column: Option<String>,
    /// `reject` (default), `last_writer_wins` or `server_wins`.
    #[serde(default = "default_conflict")]
    pub conflict: ConflictPolicy,
    /// For last-writer-wins: a client time more than this many
    /// milliseconds ahead of the server's clock is clamped to it.
    #[serde(default = "default_skew")]
    pub clock_skew_ms: u32,
    /// Columns only the server writes (defaults, triggers), e.g.
    /// `created_at`: they travel to devices, and a push's values for them
    /// are ignored.
    #[serde(default)]
    pub protected: Vec<String>,
}

fn default_push() -> PushPolicy {
    PushPolicy::Scope
}
fn default_conflict() -> ConflictPolicy {
    ConflictPolicy::Reject
}
fn default_skew() -> u32 {
    5_000
}

impl SyncTableConfig {
    /// The scope column, defaulted by scope kind.
    pub fn scope_column(&self) -> String {
        self.scope_column.clone().unwrap_or_else(|| {
            match self.scope {
                ScopeKind::Workspace => "workspace_id",
                ScopeKind::User => "user_id",
                ScopeKind::Sql => "",
            }
            .into()
        })
    }
}
