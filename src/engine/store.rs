//! The normalized row store: one entry per (workspace, table, id) with the
//! live views holding it. Views keep `Arc`s of the rows they last sent;
//! equal rows share one allocation through the store. A row leaves the store
//! when its last view lets go of it. The holders let a change that can be
//! patched in go straight to the views holding its row.
//!
//! Entries are indexed by row key first (then workspace), so a patch can find
//! every view holding a row without knowing its workspace.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::result::RowKey;
use super::value::{Fields, SharedFields};

struct Entry<H> {
    workspace: Arc<str>,
    row: SharedFields,
    /// One per reference taken (a view holds a row once).
    holders: Vec<Weak<H>>,
}

/// Rows of all workspaces with the holders (views) holding them. Generic
/// over the holder, which the store only counts, compares and hands back,
/// so it needs nothing of views.
pub struct Store<H> {
    rows: HashMap<RowKey, Vec<Entry<H>>>,
    len: usize,
}

impl<H> Default for Store<H> {
    fn default() -> Self {
        Store {
            rows: HashMap::new(),
            len: 0,
        }
    }
}

impl<H> Store<H> {
    fn entry(&mut self, ws: &Arc<str>, key: &RowKey) -> Option<&mut Entry<H>> {
        self.rows
            .get_mut(key)?
            .iter_mut()
            .find(|e| e.workspace == *ws)
    }

    /// Takes a reference on a row for `holder` and returns the shared copy
    /// (reusing the stored allocation when the fields are equal).
    pub fn acquire(
        &mut self,
        ws: &Arc<str>,
        key: &RowKey,
        fields: Fields,
        holder: &Weak<H>,
    ) -> SharedFields {
        if let Some(e) = self.entry(ws, key) {
            e.holders.push(holder.clone());
            if *e.row != fields {
                e.row = Arc::new(fields);
            }
            return e.row.clone();
        }
        let row = Arc::new(fields);
        self.rows.entry(key.clone()).or_default().push(Entry {
            workspace: ws.clone(),
            row: row.clone(),
            holders: vec![holder.clone()],
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

    /// Drops `holder`'s reference; the row leaves when none remain.
    pub fn release(&mut self, ws: &Arc<str>, key: &RowKey, holder: &Weak<H>) {
        let Some(list) = self.rows.get_mut(key) else {
            return;
        };
        if let Some(i) = list.iter().position(|e| e.workspace == *ws) {
            let holders = &mut list[i].holders;
            if let Some(h) = holders.iter().position(|h| h.ptr_eq(holder)) {
                holders.swap_remove(h);
            }
            if holders.is_empty() {
                list.swap_remove(i);
                self.len -= 1;
                if list.is_empty() {
                    self.rows.remove(key);
                }
            }
        }
    }

    /// The live views holding `key`, in any workspace.
    pub fn holders(&self, key: &RowKey) -> Vec<Arc<H>> {
        self.rows
            .get(key)
            .into_iter()
            .flatten()
            .flat_map(|e| e.holders.iter().filter_map(Weak::upgrade))
            .collect()
    }

    /// Number of rows held, all workspaces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of rows held for one workspace.
    pub fn len_in(&self, workspace: &str) -> usize {
        self.rows
            .values()
            .flatten()
            .filter(|e| &*e.workspace == workspace)
            .count()
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
            .map_or(0, |e| e.holders.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::value::Value;

    #[test]
    fn rows_live_while_referenced_and_equal_rows_share_memory() {
        let mut s = Store::<()>::default();
        let ws: Arc<str> = "w".into();
        let other: Arc<str> = "v".into();
        let k = RowKey::new("tasks", "1");
        let mut f = Fields::new();
        f.insert("title".into(), Value::from("a"));
        // Stand-ins for views: the store only compares them.
        let (h1, h2, h3) = (Weak::new(), Weak::new(), Weak::new());
        let a = s.acquire(&ws, &k, f.clone(), &h1);
        let b = s.acquire(&ws, &k, f.clone(), &h2);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(s.ref_count("w", &k), 2);
        s.acquire(&other, &k, Fields::new(), &h3);
        assert_eq!(s.ref_count("v", &k), 1);
        assert_eq!(s.len(), 2);
        s.release(&ws, &k, &h1);
        assert_eq!(s.len(), 2);
        s.release(&ws, &k, &h2);
        s.release(&other, &k, &h3);
        assert!(s.is_empty());
        assert_eq!(s.ref_count("w", &k), 0);
    }

    #[test]
    fn holders_are_the_live_ones_of_every_workspace() {
        let mut s = Store::<&str>::default();
        let k = RowKey::new("tasks", "1");
        let (a, b) = (Arc::new("a"), Arc::new("b"));
        let gone = Arc::new("gone");
        let (w, v): (Arc<str>, Arc<str>) = ("w".into(), "v".into());
        s.acquire(&w, &k, Fields::new(), &Arc::downgrade(&a));
        s.acquire(&v, &k, Fields::new(), &Arc::downgrade(&b));
        s.acquire(&w, &k, Fields::new(), &Arc::downgrade(&gone));
        drop(gone);
        let mut names: Vec<&str> = s.holders(&k).iter().map(|h| **h).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        // Releasing one holder leaves the other's reference in place.
        s.release(&w, &k, &Arc::downgrade(&a));
        assert_eq!(s.ref_count("w", &k), 1);
        assert_eq!(s.ref_count("v", &k), 1);
        assert!(s.holders(&RowKey::new("tasks", "2")).is_empty());
    }
}
