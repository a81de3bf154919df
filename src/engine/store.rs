//! The normalized row store: one entry per (workspace, table, id) with the
//! number of live views referencing it. Views keep `Arc`s of the rows they
//! last sent; equal rows share one allocation through the store. A row leaves
//! the store when its last view lets go of it.

use std::collections::HashMap;
use std::sync::Arc;

use super::result::RowKey;
use super::value::{Fields, SharedFields};

#[derive(Debug)]
struct Entry {
    row: SharedFields,
    refs: u32,
}

/// Rows of all workspaces with reference counts.
#[derive(Debug, Default)]
pub struct Store {
    rows: HashMap<(Arc<str>, RowKey), Entry>,
}

impl Store {
    /// Takes a reference on a row for one view and returns the shared copy
    /// (reusing the stored allocation when the fields are equal).
    pub fn acquire(&mut self, ws: &Arc<str>, key: &RowKey, fields: Fields) -> SharedFields {
        let e = self
            .rows
            .entry((ws.clone(), key.clone()))
            .or_insert_with(|| Entry {
                row: Arc::new(Fields::new()),
                refs: 0,
            });
        e.refs += 1;
        if *e.row != fields {
            e.row = Arc::new(fields);
        }
        e.row.clone()
    }

    /// Records new fields for a row a view already holds; returns the shared copy.
    pub fn update(&mut self, ws: &Arc<str>, key: &RowKey, fields: Fields) -> SharedFields {
        match self.rows.get_mut(&(ws.clone(), key.clone())) {
            Some(e) => {
                if *e.row != fields {
                    e.row = Arc::new(fields);
                }
                e.row.clone()
            }
            None => {
                debug_assert!(false, "update of a row no view holds");
                Arc::new(fields)
            }
        }
    }

    /// Drops one view's reference; the row leaves when none remain.
    pub fn release(&mut self, ws: &Arc<str>, key: &RowKey) {
        let k = (ws.clone(), key.clone());
        if let Some(e) = self.rows.get_mut(&k) {
            e.refs -= 1;
            if e.refs == 0 {
                self.rows.remove(&k);
            }
        }
    }

    /// Number of rows held, all workspaces.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The reference count of a row (0 when absent).
    pub fn ref_count(&self, ws: &str, key: &RowKey) -> u32 {
        self.rows
            .get(&(Arc::from(ws), key.clone()))
            .map_or(0, |e| e.refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::value::Value;

    #[test]
    fn rows_live_while_referenced_and_equal_rows_share_memory() {
        let mut s = Store::default();
        let ws: Arc<str> = "w".into();
        let k = RowKey::new("tasks", "1");
        let mut f = Fields::new();
        f.insert("title".into(), Value::from("a"));
        let a = s.acquire(&ws, &k, f.clone());
        let b = s.acquire(&ws, &k, f.clone());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(s.ref_count("w", &k), 2);
        s.release(&ws, &k);
        assert_eq!(s.len(), 1);
        s.release(&ws, &k);
        assert!(s.is_empty());
    }
}
