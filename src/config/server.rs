//! `[server]`: the listener, its limits and its TLS.

use serde::Deserialize;

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
    /// Most open calls (streams included) of one identity over all its
    /// connections, counted through trusted proxies too.
    pub max_calls_per_identity: usize,
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

/// The default of `server.listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default server address clients and tools ask.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:50051";
/// The default of `server.max_batch_bytes`.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;
/// The default of `server.snapshot_part_bytes`.
pub const DEFAULT_PART_BYTES: usize = 1 << 20;
/// The default of `server.max_message_bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            cors_origins: vec!["*".into()],
            max_batch_bytes: DEFAULT_BATCH_BYTES,
            snapshot_part_bytes: DEFAULT_PART_BYTES,
            handshake_timeout_ms: 10_000,
            max_connections: 512,
            max_streams_per_connection: 128,
            max_sessions_per_identity: 64,
            max_sessions: 65_536,
            max_sync_views: 200,
            stream_window_bytes: 65_535,
            connection_window_bytes: 2 << 20,
            idle_timeout_ms: 60_000,
            max_connections_per_peer: 64,
            max_calls_per_peer: 1024,
            max_connections_per_identity: 64,
            max_calls_per_identity: 256,
            trusted_proxies: Vec::new(),
            admin_listen: None,
            shutdown_grace_ms: 10_000,
            tls: None,
        }
    }
}
