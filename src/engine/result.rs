//! What a graph factory returns: normalized rows, ordered refs, a total.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::error::EvalError;
use super::value::Fields;

/// Identifies a row: its table and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    /// The table.
    pub table: Arc<str>,
    /// The row id (see [`crate::engine::row_id`]).
    pub id: Arc<str>,
}

impl RowKey {
    /// A key for `table` / `id`.
    pub fn new(table: &str, id: &str) -> Self {
        RowKey {
            table: table.into(),
            id: id.into(),
        }
    }
}

/// A reference from a view to a row, with named nested references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    /// The referenced row.
    pub key: RowKey,
    /// The fields of the row this reference uses (informational; empty:
    /// all). Shared: the rows of one query have the same field names.
    pub fields: Arc<[String]>,
    /// Nested references by name.
    pub nested: BTreeMap<String, Ref>,
}

impl Ref {
    /// A reference to `table` / `id` with no nested refs.
    pub fn new(table: &str, id: &str) -> Self {
        Ref {
            key: RowKey::new(table, id),
            fields: Arc::from([]),
            nested: BTreeMap::new(),
        }
    }
    /// Adds a nested reference.
    pub fn with_nested(mut self, name: &str, r: Ref) -> Self {
        self.nested.insert(name.to_owned(), r);
        self
    }
    /// Calls `f` for this ref's row and every nested row.
    pub fn visit_keys<'a>(&'a self, f: &mut impl FnMut(&'a RowKey)) {
        f(&self.key);
        for n in self.nested.values() {
            n.visit_keys(f);
        }
    }
}

/// A result reduced to what a view holds: refs, the rows they reach, the
/// total and the window's edges.
pub type ViewContent = (
    Vec<Ref>,
    HashMap<RowKey, Fields>,
    Option<i64>,
    Option<super::window::WindowEdges>,
    Option<super::window::Reach>,
);

/// The output of one evaluation of a graph.
#[derive(Clone, Debug, Default)]
pub struct GraphResult {
    /// Rows by key.
    pub rows: HashMap<RowKey, Fields>,
    /// The view's structure, in order.
    pub refs: Vec<Ref>,
    /// Total matching rows before paging, when the graph pages.
    pub total: Option<i64>,
    /// For a windowed view: whether rows lie past the window's edges.
    pub window: Option<super::window::WindowEdges>,
    /// For a windowed view: the order keys its evaluation read (see
    /// [`super::window::Reach`]); lets invalidation skip changes outside.
    pub reach: Option<super::window::Reach>,
    /// The database snapshot the evaluation read, when the factory knows
    /// it: patches of commits it already shows are then dropped (see
    /// [`super::seen`]).
    pub seen: Option<super::seen::Seen>,
}

impl GraphResult {
    /// An empty result.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a row, or merges `fields` into it when the result already has
    /// it: a row reached through refs that use different fields (a
    /// self-join, say) carries the union of those fields.
    pub fn add_row(&mut self, table: &str, id: &str, fields: Fields) {
        match self.rows.entry(RowKey::new(table, id)) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().extend(fields),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(fields);
            }
        }
    }
    /// Appends a top-level reference.
    pub fn add_ref(&mut self, r: Ref) {
        self.refs.push(r);
    }
    /// Sets the total.
    pub fn set_total(&mut self, total: i64) {
        self.total = Some(total);
    }

    /// Checks that every referenced row is present, and returns the rows the
    /// refs reach (rows no ref reaches are not part of the view).
    pub fn referenced_rows(mut self) -> Result<ViewContent, EvalError> {
        let mut used = HashMap::with_capacity(self.rows.len());
        let mut missing = None;
        for r in &self.refs {
            r.visit_keys(&mut |k| {
                if used.contains_key(k) {
                    return;
                }
                match self.rows.remove(k) {
                    Some(f) => {
                        used.insert(k.clone(), f);
                    }
                    None => {
                        missing.get_or_insert_with(|| k.clone());
                    }
                }
            });
        }
        if let Some(k) = missing {
            return Err(EvalError::internal(format!(
                "the graph references row {}/{} but returned no fields for it",
                k.table, k.id
            )));
        }
        Ok((self.refs, used, self.total, self.window, self.reach))
    }
}
