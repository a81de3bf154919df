//! The standalone server's TOML config: server and engine settings, auth,
//! and graphs and mutations declared as SQL. See README.md for the reference.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::engine::{
    EngineConfig, GraphDef, MutationDef, ParamSchema, ParamSpec, ParamType, Registry, Route,
    TableDep, Value,
};
use crate::postgres::catalog::check_key;
use crate::postgres::context::TxContext;
use crate::postgres::sql::{
    ChangeSpec, Expect, NestedSpec, SqlGraph, SqlMutation, Statement, USER_PARAM, WORKSPACE_PARAM,
};

/// The whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and message limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Database connection.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Engine limits.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Tokens and JWT settings.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Graphs.
    #[serde(default)]
    pub graphs: Vec<GraphConfig>,
    /// Mutations.
    #[serde(default)]
    pub mutations: Vec<MutationConfig>,
    /// Change detection.
    #[serde(default)]
    pub changes: ChangesConfig,
    /// Row-level security policies for tenancy.
    #[serde(default)]
    pub rls: RlsConfig,
    /// The admin HTTP listener (metrics and health).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Trace export over OTLP.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Running as one node of a cluster over NATS JetStream; absent: a
    /// standalone server without NATS.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Two-way offline sync (`OfflineService`).
    #[serde(default)]
    pub offline: crate::offline::OfflineConfig,
}

/// `[cluster]`: nodes sharing one PostgreSQL and one NATS server with
/// JetStream. One node at a time (the holder of a lease) reads the change
/// stream from PostgreSQL and publishes it; every node consumes it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name in the cluster (leases, logs, the replication
    /// connection's `application_name`); default: random.
    pub node_id: String,
    /// How long a lease lives without renewal, in milliseconds; the holder
    /// renews it every third of that. A dead leader is replaced after at
    /// most this long.
    pub lease_ttl_ms: u64,
    /// The JetStream key-value bucket holding the leases.
    pub lease_bucket: String,
    /// The JetStream stream carrying change batches.
    pub changes_stream: String,
    /// The subject change batches are published on.
    pub changes_subject: String,
    /// How long the stream remembers a batch's id to drop a republished
    /// one (a new leader replaying the WAL), in milliseconds.
    pub duplicate_window_ms: u64,
    /// How long the stream keeps batches, in seconds: a node that was cut
    /// off from NATS for longer refreshes every view when it comes back.
    pub stream_max_age_s: u64,
    /// Most bytes the stream keeps (oldest dropped first).
    pub stream_max_bytes: i64,
    /// Largest batch published as is, in bytes; a larger transaction is
    /// published as "refresh every view" (NATS refuses messages over its
    /// `max_payload`, which lowers this limit further).
    pub max_batch_bytes: usize,
    /// Evaluate each view on one node (its owner, by a lease) and send its
    /// frames to the other nodes through JetStream, so every node shows
    /// the same epochs and versions (default). Off: every node evaluates
    /// the views its own clients hold.
    pub view_owners: bool,
    /// The JetStream stream keeping each owned view's latest frames.
    pub frames_stream: String,
    /// The subject prefix of views' frames (`<prefix>.<view hash>`).
    pub frames_subject: String,
    /// The subject prefix on which a node asks a view's owner for its
    /// snapshot (`<prefix>.<owner node>.<view hash>`).
    pub snapshot_subject: String,
    /// How long the frames stream keeps a frame, in seconds.
    pub frames_max_age_s: u64,
    /// The JetStream object store bucket holding each view's checkpoint
    /// (its last state, for the next owner to go on from).
    pub checkpoint_bucket: String,
    /// The checkpoint bucket's size limit in bytes (-1: no limit).
    pub checkpoint_max_bytes: i64,
    /// Checkpoints waiting to be written, at most; past it a view goes
    /// without a newer one (a node taking it over may then start a new
    /// epoch, which sends snapshots).
    pub checkpoint_queue: usize,
    /// The JetStream key-value bucket holding each view's last claimed
    /// term (a new owner's versions start a term no other node used).
    pub terms_bucket: String,
    /// The terms bucket's size limit in bytes: one small key per view ever
    /// taken over. When it is full claims fail: a view resumed from a
    /// checkpoint starts a new epoch, a follower retries at its next check.
    pub terms_max_bytes: i64,
    /// How long a node waits for a view's owner before failing a
    /// subscribe, in milliseconds (added to `lease_ttl_ms`, so a dead
    /// owner's lease can expire meanwhile).
    pub owner_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            node_id: format!("node-{:08x}", rand::random::<u32>()),
            lease_ttl_ms: 5000,
            lease_bucket: "arcana_leases".into(),
            changes_stream: "ARCANA_CHANGES".into(),
            changes_subject: "arcana.changes".into(),
            duplicate_window_ms: 120_000,
            stream_max_age_s: 86_400,
            stream_max_bytes: 1 << 30,
            max_batch_bytes: 1 << 20,
            view_owners: true,
            frames_stream: "ARCANA_FRAMES".into(),
            frames_subject: "arcana.frames".into(),
            snapshot_subject: "arcana.snapshots".into(),
            frames_max_age_s: 3600,
            checkpoint_bucket: "ARCANA_VIEWS".into(),
            checkpoint_max_bytes: 1 << 30,
            checkpoint_queue: 4096,
            terms_bucket: "arcana_terms".into(),
            terms_max_bytes: 64 << 20,
            owner_wait_ms: 5000,
        }
    }
}

/// `[telemetry]`: exporting spans to an OpenTelemetry collector over
/// OTLP/gRPC. Off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (which wins).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/gRPC address, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans; `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
    /// Most finished spans waiting for export; further ones are dropped.
    pub max_queued_spans: usize,
    /// Longest wait between exports of queued spans, in milliseconds.
    pub batch_delay_ms: u64,
    /// An export not answered within this many milliseconds fails (and
    /// its spans are dropped).
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "arcana".into(),
            max_queued_spans: 2048,
            batch_delay_ms: 5_000,
            export_timeout_ms: 10_000,
        }
    }
}

/// `[admin]`: bounds of the admin HTTP listener that `server.admin_listen`
/// turns on.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Most open admin connections; further ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// An admin connection is closed this many milliseconds after it was
    /// accepted, whatever it is doing.
    pub request_timeout_ms: u64,
    /// Longest the readiness check waits for the database to answer, in
    /// milliseconds; slower counts as not ready.
    pub ready_timeout_ms: u64,
    /// How often readiness is checked in the background (for the gRPC
    /// health service), in milliseconds.
    pub ready_interval_ms: u64,
    /// Most DevTools live streams open at once; a further one gets 503.
    pub devtools_streams: usize,
    /// Recent change batches and frames the DevTools feed keeps.
    pub devtools_feed: usize,
    /// A DevTools live stream ends this many seconds after it opened (the
    /// page reconnects); `request_timeout_ms` does not cut it short.
    pub devtools_stream_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            max_connections: 16,
            request_timeout_ms: 5_000,
            ready_timeout_ms: 2_000,
            ready_interval_ms: 1_000,
            devtools_streams: 4,
            devtools_feed: 200,
            devtools_stream_secs: 300,
        }
    }
}

/// How the server learns about writes made outside its mutations.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeMode {
    /// Logical replication (`wal_level = logical`).
    Wal,
    /// LISTEN/NOTIFY with generated triggers.
    Notify,
    /// Only mutations and the Notify call.
    None,
}

/// `[changes]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ChangesConfig {
    /// `wal` (default), `notify` or `none`.
    pub mode: ChangeMode,
    /// Replication slot (wal).
    pub slot: String,
    /// Publication (wal).
    pub publication: String,
    /// Create the slot and publication when missing (wal).
    pub create: bool,
    /// NOTIFY channel (notify).
    pub channel: String,
    /// Install the triggers at startup (notify).
    pub install_triggers: bool,
    /// Warn at startup when the slot holds back more WAL than this many
    /// MiB (wal).
    pub max_retained_wal_mb: u64,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig {
            mode: ChangeMode::Wal,
            slot: "arcana_slot".into(),
            publication: "arcana_pub".into(),
            create: true,
            channel: "arcana_changes".into(),
            install_triggers: true,
            max_retained_wal_mb: 1024,
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Origins allowed for grpc-web from browsers; `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// Frames that queue up for a session go out as one message of up to
    /// this many bytes; 0 sends every frame on its own.
    pub max_batch_bytes: usize,
    /// A snapshot bigger than this goes out in parts of about this many
    /// bytes, which the client applies as one.
    pub snapshot_part_bytes: usize,
    /// A connection that has not sent one complete request this many
    /// milliseconds after it was accepted is closed.
    pub handshake_timeout_ms: u64,
    /// Most open client connections; further ones wait in the kernel's
    /// backlog until a slot frees.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls) on one connection.
    pub max_streams_per_connection: u32,
    /// Most open sessions of one identity (user and workspace).
    pub max_sessions_per_identity: usize,
    /// Most open sessions in total.
    pub max_sessions: usize,
    /// Most views in one Sync request.
    pub max_sync_views: usize,
    /// HTTP/2 flow-control window of each call, in bytes.
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window of each connection, in bytes.
    pub connection_window_bytes: u32,
    /// A connection with no open call for this many milliseconds is
    /// closed (GOAWAY).
    pub idle_timeout_ms: u64,
    /// Most open connections from one peer address.
    pub max_connections_per_peer: usize,
    /// Most open calls of one peer address over all its connections.
    pub max_calls_per_peer: usize,
    /// Most open connections whose first authenticated call was made by
    /// one identity (user and workspace).
    pub max_connections_per_identity: usize,
    /// Reverse proxies (addresses or blocks such as `10.0.0.0/8`) whose
    /// `x-forwarded-for` names the client.
    pub trusted_proxies: Vec<String>,
    /// Address of the admin HTTP listener (`/metrics`, `/healthz`,
    /// `/readyz`); none: off.
    pub admin_listen: Option<String>,
    /// On shutdown, open calls get this many milliseconds to finish before
    /// they are cut.
    pub shutdown_grace_ms: u64,
    /// Serve clients over TLS (`[server.tls]`); plain when absent.
    pub tls: Option<ServerTls>,
}

/// `[server.tls]`: the certificate served to clients, reloaded when its
/// files change or on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// How often the files' modification times are checked, in
    /// milliseconds; 0 reloads on SIGHUP only.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    5000
}

impl Default for ServerConfig {
    fn default() -> Self {
        let limits = crate::grpc::Limits::default();
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            max_message_bytes: 1 << 20,
            cors_origins: vec!["*".into()],
            max_batch_bytes: crate::grpc::DEFAULT_BATCH_BYTES,
            snapshot_part_bytes: crate::wire::parts::DEFAULT_PART_BYTES,
            handshake_timeout_ms: limits.handshake_timeout.as_millis() as u64,
            max_connections: limits.max_connections,
            max_streams_per_connection: limits.max_streams_per_connection,
            max_sessions_per_identity: limits.max_sessions_per_identity,
            max_sessions: limits.max_sessions,
            max_sync_views: limits.max_sync_views,
            stream_window_bytes: limits.stream_window_bytes,
            connection_window_bytes: limits.connection_window_bytes,
            idle_timeout_ms: limits.idle_timeout.as_millis() as u64,
            max_connections_per_peer: limits.max_connections_per_peer,
            max_calls_per_peer: limits.max_calls_per_peer,
            max_connections_per_identity: limits.max_connections_per_identity,
            trusted_proxies: Vec::new(),
            admin_listen: None,
            shutdown_grace_ms: 10_000,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The connection and session limits of this section; fails on a
    /// `trusted_proxies` entry that is not an address or block.
    pub fn limits(&self) -> Result<crate::grpc::Limits, String> {
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| format!("server.trusted_proxies: {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(crate::grpc::Limits {
            handshake_timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            max_sessions_per_identity: self.max_sessions_per_identity,
            max_sessions: self.max_sessions,
            max_sync_views: self.max_sync_views,
            stream_window_bytes: self.stream_window_bytes,
            connection_window_bytes: self.connection_window_bytes,
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            max_connections_per_peer: self.max_connections_per_peer,
            max_calls_per_peer: self.max_calls_per_peer,
            max_connections_per_identity: self.max_connections_per_identity,
            trusted_proxies,
        })
    }
}

/// `[database]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL; `DATABASE_URL` overrides it.
    pub url: Option<String>,
    /// Pool size.
    pub pool_size: usize,
    /// Longest a graph query or mutation statement may run, in
    /// milliseconds (`SET LOCAL statement_timeout`); 0: no limit.
    pub statement_timeout_ms: u64,
    /// Longest a graph evaluation or mutation waits for a free pooled
    /// connection, in milliseconds; 0: no limit.
    pub pool_timeout_ms: u64,
    /// A role switched to (`SET LOCAL ROLE`) for graph evaluations and
    /// mutations, so row-level security applies even when the server
    /// connects as a superuser or the tables' owner.
    pub eval_role: Option<String>,
    /// How many times a mutation that hits a deadlock or a serialization
    /// failure is run again before it answers ABORTED.
    pub mutation_retries: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            pool_size: 16,
            statement_timeout_ms: 30_000,
            pool_timeout_ms: 5_000,
            eval_role: None,
            mutation_retries: 3,
        }
    }
}

impl DatabaseConfig {
    /// What every graph and mutation transaction sets up.
    pub fn tx_context(&self) -> TxContext {
        TxContext {
            eval_role: self.eval_role.clone(),
            statement_timeout_ms: self.statement_timeout_ms,
            pool_timeout_ms: self.pool_timeout_ms,
            mutation_retries: self.mutation_retries,
        }
    }
}

/// `[rls]`: the policies `arcana rls sql|install` generate (and the server
/// installs at startup with `install = true`). Every table of `schemas`
/// with the workspace column gets a policy letting a transaction see and
/// write only the rows of the workspace in `arcana.workspace_id`, which the
/// server sets for every graph evaluation and mutation.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RlsConfig {
    /// Apply the policies when the server starts.
    pub install: bool,
    /// The column holding a row's workspace id.
    pub workspace_column: String,
    /// A column holding a row's user id: rows are then visible only to
    /// that user (mutations and per-user graphs).
    pub user_column: Option<String>,
    /// The schemas whose tables get policies.
    pub schemas: Vec<String>,
    /// Per-table overrides, by table name (`schema.table` outside `public`).
    pub tables: BTreeMap<String, RlsTableConfig>,
}

impl Default for RlsConfig {
    fn default() -> Self {
        RlsConfig {
            install: false,
            workspace_column: "workspace_id".into(),
            user_column: None,
            schemas: vec!["public".into()],
            tables: BTreeMap::new(),
        }
    }
}

/// One `[rls.tables.<name>]`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RlsTableConfig {
    /// The workspace column of this table, if not the default.
    pub workspace_column: Option<String>,
    /// The user column of this table; `""`: none.
    pub user_column: Option<String>,
    /// Leave the table without a policy.
    #[serde(default)]
    pub exclude: bool,
}

/// `[auth]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens, for development and trusted services.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// JWT settings.
    pub jwt: Option<JwtConfig>,
}

/// One static token.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token.
    pub token: String,
    /// User id.
    pub user: String,
    /// Workspace id.
    pub workspace: String,
    /// Role.
    #[serde(default)]
    pub role: String,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// `[auth.jwt]`: signed tokens, checked with an HS256 secret and/or the
/// public keys of a JWKS (RS256, ES256, EdDSA).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The HS256 shared secret.
    pub secret: Option<String>,
    /// An environment variable holding the HS256 secret (preferred).
    pub secret_env: Option<String>,
    /// A JWKS file with the public keys tokens may be signed with.
    pub jwks_file: Option<String>,
    /// An HTTPS URL serving the JWKS (an identity provider's `jwks_uri`).
    pub jwks_url: Option<String>,
    /// Seconds between fetches of `jwks_url`: the keys are refreshed this
    /// often, and a token naming an unknown `kid` triggers at most one
    /// fetch per interval.
    pub jwks_refresh_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// The claim holding the workspace id.
    pub workspace_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            secret_env: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            require_exp: true,
            leeway_secs: 30,
            issuer: None,
            audience: None,
            workspace_claim: "workspace".into(),
        }
    }
}

/// One `[graphs.params.<name>]` or `[mutations.params.<name>]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// string, int, float, bool, uuid or timestamp.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Must be given.
    #[serde(default)]
    pub required: bool,
    /// Used when not given.
    pub default: Option<toml::Value>,
    /// The only accepted values.
    #[serde(default)]
    pub one_of: Vec<toml::Value>,
    /// Shown by Describe.
    #[serde(default)]
    pub description: String,
}

/// A nested ref read from `<name>.<column>` columns.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct NestedConfig {
    /// The table of the nested rows.
    pub table: String,
    /// Its key column(s).
    #[serde(default = "default_key")]
    pub key: Vec<String>,
}

fn default_key() -> Vec<String> {
    vec!["id".into()]
}

/// One `[[graphs]]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Name clients subscribe by.
    pub name: String,
    /// Shown by Describe.
    #[serde(default)]
    pub description: String,
    /// The table of the rows the query returns.
    pub table: String,
    /// Its key column(s).
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// The query; one row per top-level ref, in order.
    pub sql: String,
    /// Optional count of all matching rows.
    pub total_sql: Option<String>,
    /// Parameters.
    #[serde(default)]
    pub params: BTreeMap<String, ParamConfig>,
    /// Nested refs by name.
    #[serde(default)]
    pub nested: BTreeMap<String, NestedConfig>,
    /// table -> columns whose changes matter (`["*"]`: all).
    pub deps: BTreeMap<String, Vec<String>>,
    /// Permissions needed to subscribe.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// One view per user (required when the SQL uses :user_id).
    #[serde(default)]
    pub per_user: bool,
    /// table -> the column that always equals a param in the query's rows
    /// (`"project_id"`, or `{ column = "project_id", param = "project" }`).
    /// Changes of that table then re-evaluate only the views they can
    /// touch. See `Route`.
    #[serde(default)]
    pub route: BTreeMap<String, RouteConfig>,
    /// table -> columns the rows carry as plain fields of the same name and
    /// that nothing else in the query uses (no filter, order, join or
    /// expression). A single-row update of only these columns is patched
    /// into the views holding the row, without running the query.
    #[serde(default)]
    pub patch: BTreeMap<String, Vec<String>>,
    /// Keep views live through windows over this order (see
    /// [`WindowConfig`]); the query then lists every row of the list and
    /// has no LIMIT of its own.
    pub window: Option<WindowConfig>,
}

/// A windowed graph's order: `window = { order = ["position", "id"] }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Result columns the list sorts by; must end with the graph's key
    /// columns, so the order is total.
    pub order: Vec<String>,
    /// The list runs from the highest key to the lowest.
    #[serde(default)]
    pub descending: bool,
    /// Rows of a subscription that gives no window.
    #[serde(default = "default_window_limit")]
    pub default_limit: u32,
    /// The largest window a subscription may ask for.
    #[serde(default = "default_window_max")]
    pub max_limit: u32,
}

fn default_window_limit() -> u32 {
    50
}

fn default_window_max() -> u32 {
    10_000
}

/// One graph's route for a table.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RouteConfig {
    /// A column equal to the param of the same name.
    Column(String),
    /// A column and the param it equals.
    Explicit {
        /// The column.
        column: String,
        /// The param; the column's name when absent.
        param: Option<String>,
    },
}

/// A declared change of a mutation.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ChangeConfig {
    /// The table.
    pub table: String,
    /// Changed columns; empty or absent: any.
    #[serde(default)]
    pub columns: Vec<String>,
    /// A returned column holding the row id.
    pub id: Option<String>,
    /// Returned columns holding the row's route values, which the write
    /// does not change (an insert, a delete, or an update leaving them).
    #[serde(default)]
    pub routes: Vec<String>,
}

/// One `[[mutations]]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MutationConfig {
    /// Name clients call it by.
    pub name: String,
    /// Shown by Describe.
    #[serde(default)]
    pub description: String,
    /// Statements run in one transaction (a string or a list).
    pub sql: SqlList,
    /// Parameters.
    #[serde(default)]
    pub params: BTreeMap<String, ParamConfig>,
    /// Changes fed into invalidation after commit.
    #[serde(default)]
    pub changes: Vec<ChangeConfig>,
    /// Permissions needed.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// How many rows the statements must touch together (returned, or
    /// affected when a statement returns none): `one`, `some` (at least
    /// one) or `any` (default). Otherwise the mutation rolls back and
    /// answers NOT_FOUND.
    #[serde(default)]
    pub expect: Expect,
}

/// One statement or several.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SqlList {
    /// A single statement.
    One(String),
    /// Several, in order.
    Many(Vec<String>),
}

impl Config {
    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Key columns of tables as the graphs declare them (main and nested).
    pub fn table_keys(&self) -> std::collections::HashMap<String, Vec<String>> {
        let mut out = std::collections::HashMap::new();
        for g in &self.graphs {
            out.insert(g.table.clone(), g.key.clone());
            for n in g.nested.values() {
                out.insert(n.table.clone(), n.key.clone());
            }
        }
        out
    }

    /// Builds the registry of SQL graphs and mutations on `pool`.
    ///
    /// Every statement is prepared against the database first, so a broken
    /// query, an unreadable column type or a missing key column stops
    /// startup with a message naming the graph or mutation.
    pub async fn registry(&self, pool: &Pool) -> Result<Registry, String> {
        let client = pool.get().await.map_err(|e| {
            format!(
                "connecting to the database: {}",
                crate::postgres::tls::error_chain(&e)
            )
        })?;
        let ctx = self.database.tx_context();
        if let Some(role) = &ctx.eval_role {
            check_role(&client, role).await?;
        }
        let mut reg = Registry::new();
        for g in &self.graphs {
            let named = |e: String| format!("graph `{}`: {e}", g.name);
            let (mut def, sql) = graph(g, pool, &ctx).map_err(named)?;
            def.fields = sql.shape(&client).await.map_err(named)?;
            check_key(&client, &g.table, &g.key).await.map_err(named)?;
            for (name, n) in &g.nested {
                check_key(&client, &n.table, &n.key)
                    .await
                    .map_err(|e| named(format!("nested ref `{name}`: {e}")))?;
            }
            reg.register(def)?;
        }
        // A mutation runs for one workspace: its changes to tables with a
        // workspace column concern only that workspace's views.
        let scoped =
            crate::postgres::catalog::tables_with_column(&client, &self.rls.workspace_column)
                .await?;
        for m in &self.mutations {
            let named = |e: String| format!("mutation `{}`: {e}", m.name);
            let (mut def, sql) = mutation(m, pool, &ctx, &scoped).map_err(named)?;
            def.fields = sql.check(&client).await.map_err(named)?;
            reg.register_mutation(def)?;
        }
        Ok(reg)
    }
}

/// Checks that the server's role may switch to `database.eval_role`.
async fn check_role(client: &tokio_postgres::Client, role: &str) -> Result<(), String> {
    let r = client
        .query_one(
            "SELECT pg_has_role(current_user, r.oid, 'MEMBER'), r.rolsuper OR r.rolbypassrls \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await;
    match r {
        Ok(row) if !row.get::<_, bool>(0) => Err(format!(
            "database.eval_role: the server's role is not a member of role `{role}`: GRANT \"{role}\" TO the server's role"
        )),
        Ok(row) if row.get::<_, bool>(1) => Err(format!(
            "database.eval_role: role `{role}` is a superuser or has BYPASSRLS, so row-level security would not apply"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("database.eval_role: role `{role}` does not exist")),
    }
}

fn schema(params: &BTreeMap<String, ParamConfig>) -> Result<ParamSchema, String> {
    let mut out = ParamSchema::new();
    for (name, p) in params {
        if name == WORKSPACE_PARAM || name == USER_PARAM {
            return Err(format!(
                "param `{name}` is reserved: it always holds the caller's identity"
            ));
        }
        let conv = |v: &toml::Value| value_of(p.ty, v).map_err(|e| format!("param `{name}`: {e}"));
        let mut spec = ParamSpec::new(p.ty);
        spec.required = p.required;
        spec.default = p.default.as_ref().map(conv).transpose()?;
        spec.one_of = p.one_of.iter().map(conv).collect::<Result<_, _>>()?;
        spec.description = p.description.clone();
        out.insert(name.clone(), spec);
    }
    Ok(out)
}

fn value_of(ty: ParamType, v: &toml::Value) -> Result<Value, String> {
    Ok(match (ty, v) {
        (ParamType::String, toml::Value::String(s)) => Value::String(s.clone()),
        (ParamType::Uuid, toml::Value::String(s)) => Value::Uuid(
            crate::engine::params::parse_uuid(s).ok_or_else(|| format!("{s:?} is not a UUID"))?,
        ),
        (ParamType::Int, toml::Value::Integer(i)) => Value::Int(*i),
        (ParamType::Float, toml::Value::Float(f)) => Value::Float(*f),
        (ParamType::Float, toml::Value::Integer(i)) => Value::Float(*i as f64),
        (ParamType::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (ty, other) => return Err(format!("{other} is not a valid {} value", ty.name())),
    })
}

fn deps(map: &BTreeMap<String, Vec<String>>) -> Vec<TableDep> {
    map.iter()
        .map(|(t, cols)| {
            if cols.is_empty() || cols.iter().any(|c| c == "*") {
                TableDep::all(t)
            } else {
                TableDep {
                    table: t.clone(),
                    columns: Some(cols.iter().cloned().collect::<BTreeSet<_>>()),
                }
            }
        })
        .collect()
}

fn graph(
    g: &GraphConfig,
    pool: &Pool,
    ctx: &TxContext,
) -> Result<(GraphDef, Arc<SqlGraph>), String> {
    let params = schema(&g.params)?;
    let declared: Vec<&str> = params.keys().map(String::as_str).collect();
    let query = Statement::parse(&g.sql, &declared).map_err(|e| format!("sql: {e}"))?;
    let total = g
        .total_sql
        .as_deref()
        .map(|s| Statement::parse(s, &declared))
        .transpose()
        .map_err(|e| format!("total_sql: {e}"))?;
    let uses_user = query.uses_user() || total.as_ref().is_some_and(Statement::uses_user);
    if uses_user && !g.per_user {
        return Err(
            "the SQL uses :user_id, so set per_user = true (otherwise users would share one view)"
                .into(),
        );
    }
    if g.key.is_empty() {
        return Err("key must name at least one column".into());
    }
    if g.deps.is_empty() {
        return Err(
            "deps must name the tables the query reads, e.g. deps = { tasks = [\"*\"] }".into(),
        );
    }
    let nested: Vec<NestedSpec> = g
        .nested
        .iter()
        .map(|(name, n)| NestedSpec {
            name: name.clone(),
            table: n.table.clone(),
            key: n.key.clone(),
        })
        .collect();
    let window = g.window.as_ref().map(window_order).transpose()?;
    if let Some(w) = &window {
        if !w.order.ends_with(&g.key) {
            return Err(format!(
                "window.order must end with the key column(s) {:?}, so that rows never tie",
                g.key
            ));
        }
    }
    let factory = Arc::new(SqlGraph {
        window: window.clone(),
        name: g.name.clone(),
        pool: pool.clone(),
        query,
        total,
        table: g.table.clone(),
        key: g.key.clone(),
        nested,
        lateral: std::sync::OnceLock::new(),
        ctx: ctx.clone(),
    });
    let mut def = GraphDef::new(&g.name, factory.clone());
    def.description = g.description.clone();
    def.params = params;
    def.deps = deps(&g.deps);
    def.permissions = g.permissions.clone();
    def.per_user = g.per_user;
    def.routes = g
        .route
        .iter()
        .map(|(table, r)| {
            let (column, param) = match r {
                RouteConfig::Column(c) => (c.clone(), c.clone()),
                RouteConfig::Explicit { column, param } => (
                    column.clone(),
                    param.clone().unwrap_or_else(|| column.clone()),
                ),
            };
            Route {
                table: table.clone(),
                column,
                param,
            }
        })
        .collect();
    def.patchable = g
        .patch
        .iter()
        .map(|(t, cols)| (t.clone(), cols.iter().cloned().collect()))
        .collect();
    def.table = Some(g.table.clone());
    def.window = window;
    def.nested = g
        .nested
        .iter()
        .map(|(k, v)| (k.clone(), v.table.clone()))
        .collect();
    Ok((def, factory))
}

fn window_order(w: &WindowConfig) -> Result<crate::engine::WindowOrder, String> {
    if w.order.is_empty() {
        return Err("window.order must name at least one column".into());
    }
    if w.default_limit == 0 || w.default_limit > w.max_limit {
        return Err(format!(
            "window.default_limit must be between 1 and max_limit ({})",
            w.max_limit
        ));
    }
    Ok(crate::engine::WindowOrder {
        order: w.order.clone(),
        descending: w.descending,
        default_limit: w.default_limit,
        max_limit: w.max_limit,
    })
}

fn mutation(
    m: &MutationConfig,
    pool: &Pool,
    ctx: &TxContext,
    scoped: &BTreeSet<String>,
) -> Result<(MutationDef, Arc<SqlMutation>), String> {
    let params = schema(&m.params)?;
    let declared: Vec<&str> = params.keys().map(String::as_str).collect();
    let sqls = match &m.sql {
        SqlList::One(s) => vec![s.clone()],
        SqlList::Many(v) => v.clone(),
    };
    if sqls.is_empty() {
        return Err("sql must hold at least one statement".into());
    }
    let statements = sqls
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Statement::parse(s, &declared).map_err(|e| format!("statement {}: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let changes: Vec<ChangeSpec> = m
        .changes
        .iter()
        .map(|c| ChangeSpec {
            table: c.table.clone(),
            columns: c.columns.clone(),
            id_from: c.id.clone(),
            scoped: scoped.contains(&c.table),
            route_from: c.routes.clone(),
        })
        .collect();
    let handler = Arc::new(SqlMutation {
        name: m.name.clone(),
        pool: pool.clone(),
        statements,
        changes,
        expect: m.expect,
        ctx: ctx.clone(),
    });
    let mut def = MutationDef::new(&m.name, handler.clone());
    def.description = m.description.clone();
    def.params = params;
    def.permissions = m.permissions.clone();
    def.changes = m
        .changes
        .iter()
        .map(|c| {
            if c.columns.is_empty() {
                TableDep::all(&c.table)
            } else {
                TableDep::columns(&c.table, c.columns.clone())
            }
        })
        .collect();
    Ok((def, handler))
}
