//! The standalone server's TOML config, as plain data with its defaults:
//! one file per section. Building anything from it (the registry against
//! the database, the listener's limits) belongs to the layer that uses it.
//! See README.md for the reference.

mod auth;
mod cluster;
mod database;
mod graphs;
pub mod offline;
mod ops;
mod server;

pub use auth::*;
pub use cluster::*;
pub use database::*;
pub use graphs::*;
pub use offline::OfflineConfig;
pub use ops::*;
pub use server::*;

use serde::Deserialize;

use crate::engine::EngineConfig;

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
    pub offline: OfflineConfig,
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
}
