//! `[[graphs]]` and `[[mutations]]`: what clients may read and write, as SQL.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::engine::ParamType;

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

/// How many rows a mutation's statements must touch together: rows
/// returned, or rows affected for a statement that returns none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Any number, none included.
    #[default]
    Any,
    /// Exactly one.
    One,
    /// At least one.
    Some,
}
