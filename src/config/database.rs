//! `[database]` and `[rls]`.

use std::collections::BTreeMap;

use serde::Deserialize;

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
