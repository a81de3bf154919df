//! The normalized row store: one entry per (workspace, table, id) with the
//! number of live views referencing it. Views keep `Arc`s of the rows they
//! last sent; equal rows share one allocation through the store. A row leaves
//! the store when its last view lets go of it.
//!
//! Entries are indexed by row key first (then workspace), so change detection
//! can find every held copy of a row without knowing its workspace.

use std::collections::HashMap;
use std::sync::Arc;

use super::result::RowKey;
use super::value::{Fields, SharedFields};

#[derive(Debug)]
struct Entry {
    workspace: Arc<str>,
    row: SharedFields,
    refs: u32,
}

/// Rows of all workspaces with reference counts.
#[derive(Debug, Default)]
pub struct Store {
    rows: HashMap<RowKey, Vec<Entry>>,
    len: usize,
}

impl Store {
    fn entry(&mut self, ws: &Arc<str>, key: &RowKey) -> Option<&mut Entry> {
        self.rows
            .get_mut(key)?
            .iter_mut()
            .find(|e| e.workspace == *ws)
    }

    /// Takes a reference on a row for one view and returns the shared copy
    /// (reusing the stored allocation when the fields are equal).
    pub fn acquire(&mut self, ws: &Arc<str>, key: &RowKey, fields: Fields) -> SharedFields {
        if let Some(e) = self.entry(ws, key) {
            e.refs += 1;
            if *e.row != fields {
                e.row = Arc::new(fields);
            }
            return e.row.clone();
        }
        let row = Arc::new(fields);
        self.rows.entry(key.clone()).or_default().push(Entry {
            workspace: ws.clone(),
            row: row.clone(),
            refs: 1,
        });
        self.len += 1;
        row
    }

    /// Records new fields for a row a view already holds; returns the shared copy.
    pub fn update(&mut self, ws: &Arc<str>, key: &RowKey, fields: Fields) -> SharedFields {
        match self.entry(ws, key) {
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
        let Some(list) = self.rows.get_mut(key) else {
            return;
        };
        if let Some(i) = list.iter().position(|e| e.workspace == *ws) {
            list[i].refs -= 1;
            if list[i].refs == 0 {
                list.swap_remove(i);
                self.len -= 1;
                if list.is_empty() {
                    self.rows.remove(key);
                }
            }
        }
    }

    /// The fields held for `key` in every workspace that holds it.
    pub fn held(&self, key: &RowKey) -> Vec<SharedFields> {
        self.rows
            .get(key)
            .map(|l| l.iter().map(|e| e.row.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of rows held, all workspaces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The reference count of a row (0 when absent).
    pub fn ref_count(&self, ws: &str, key: &RowKey) -> u32 {
        self.rows
            .get(key)
            .and_then(|l| l.iter().find(|e| &*e.workspace == ws))
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
        let other: Arc<str> = "v".into();
        let k = RowKey::new("tasks", "1");
        let mut f = Fields::new();
        f.insert("title".into(), Value::from("a"));
        let a = s.acquire(&ws, &k, f.clone());
        let b = s.acquire(&ws, &k, f.clone());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(s.ref_count("w", &k), 2);
        s.acquire(&other, &k, Fields::new());
        assert_eq!(s.held(&k).len(), 2);
        assert_eq!(s.len(), 2);
        s.release(&ws, &k);
        assert_eq!(s.len(), 2);
        s.release(&ws, &k);
        s.release(&other, &k);
        assert!(s.is_empty());
        assert!(s.held(&k).is_empty());
    }
}
