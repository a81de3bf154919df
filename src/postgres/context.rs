//! What every graph and mutation transaction sets up before its queries:
//! the caller's identity as transaction-local settings (for row-level
//! security policies), the statement time limit, and optionally the role
//! the queries run as.
//!
//! The settings are `arcana.workspace_id`, `arcana.user_id` (per-user graphs
//! and mutations; empty otherwise) and `arcana.role` (mutations; empty
//! otherwise). They are set with `set_config(..., true)`, so they end with
//! the transaction and never leak to the next user of a pooled connection.

use deadpool_postgres::Transaction;

use super::sql::db_error;
use crate::engine::{EvalError, Scope};

/// The identity settings and the statement time limit.
const SETTINGS: &str = "SELECT set_config('arcana.workspace_id', $1, true), \
     set_config('arcana.user_id', $2, true), set_config('arcana.role', $3, true), \
     set_config('statement_timeout', $4, true)";

/// The same, and the role to switch to (as `SET LOCAL ROLE` does).
const SETTINGS_AND_ROLE: &str = "SELECT set_config('arcana.workspace_id', $1, true), \
     set_config('arcana.user_id', $2, true), set_config('arcana.role', $3, true), \
     set_config('statement_timeout', $4, true), set_config('role', $5, true)";

/// How graph and mutation transactions are set up (`[database]`).
#[derive(Debug, Clone, Default)]
pub struct TxContext {
    /// The role switched to for the transaction, if any.
    pub eval_role: Option<String>,
    /// The statement time limit in milliseconds; 0: none.
    pub statement_timeout_ms: u64,
    /// The pool wait limit in milliseconds (the pool enforces it; here for
    /// messages).
    pub pool_timeout_ms: u64,
    /// How many times a mutation whose transaction lost to a concurrent
    /// one (deadlock, serialization failure) is run again.
    pub mutation_retries: u32,
}

impl TxContext {
    /// What `[database]` sets up for every graph and mutation transaction.
    pub fn from_config(db: &crate::config::DatabaseConfig) -> TxContext {
        TxContext {
            eval_role: db.eval_role.clone(),
            statement_timeout_ms: db.statement_timeout_ms,
            pool_timeout_ms: db.pool_timeout_ms,
            mutation_retries: db.mutation_retries,
        }
    }

    /// Sets the caller's identity, the time limit and the role for the rest
    /// of `tx`, in one round trip.
    pub async fn enter(&self, tx: &Transaction<'_>, scope: &Scope) -> Result<(), EvalError> {
        let workspace: &str = &scope.workspace_id;
        let user: &str = scope.user_id.as_deref().unwrap_or("");
        let role: &str = scope.role.as_deref().unwrap_or("");
        let timeout = self.statement_timeout_ms.to_string();
        match &self.eval_role {
            None => {
                let stmt = tx.prepare_cached(SETTINGS).await.map_err(db_error)?;
                tx.query(&stmt, &[&workspace, &user, &role, &timeout])
                    .await
                    .map_err(db_error)?;
            }
            Some(eval_role) => {
                let stmt = tx
                    .prepare_cached(SETTINGS_AND_ROLE)
                    .await
                    .map_err(db_error)?;
                tx.query(&stmt, &[&workspace, &user, &role, &timeout, eval_role])
                    .await
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }

    /// The limit as people read it in messages.
    pub fn timeout_text(&self) -> String {
        format!(
            "{} ms (database.statement_timeout_ms)",
            self.statement_timeout_ms
        )
    }
}
