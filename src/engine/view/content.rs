//! The diff between two contents of a view, as a pure function: a new
//! evaluation against the view's state, and a re-anchoring subscriber's
//! old view against its new one, are diffed by the same rules.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::diff::{diff_fields, diff_refs};
use crate::engine::frame::ViewDiff;
use crate::engine::result::{Ref, RowKey};
use crate::engine::value::SharedFields;
use crate::engine::window::WindowEdges;

/// What a client holds of a view.
pub(crate) struct Content<'a> {
    pub(crate) refs: &'a [Ref],
    pub(crate) rows: &'a HashMap<RowKey, SharedFields>,
    pub(crate) total: Option<i64>,
    pub(crate) window: Option<WindowEdges>,
}

/// What takes a client holding `old` to `new`: the refs' moves; the rows
/// `new` has that `old` lacks, whole; field patches of rows in both that
/// differ; the total and the window edges when they changed. Rows only
/// `old` has need nothing: no ref reaches them any more. Rows and patches
/// are in key order.
pub(crate) fn diff(old: &Content<'_>, new: &Content<'_>) -> ViewDiff {
    let mut d = ViewDiff {
        refs: diff_refs(old.refs, new.refs),
        total: (new.total != old.total).then_some(new.total).flatten(),
        window: (new.window != old.window).then_some(new.window).flatten(),
        ..ViewDiff::default()
    };
    for (k, now) in new.rows {
        match old.rows.get(k) {
            None => d.rows.push((k.clone(), now.clone())),
            // Rows that did not change share one allocation.
            Some(was) if Arc::ptr_eq(was, now) || **was == **now => {}
            Some(was) => d.patches.push((k.clone(), diff_fields(was, now))),
        }
    }
    d.rows.sort_by(|a, b| a.0.cmp(&b.0));
    d.patches.sort_by(|a, b| a.0.cmp(&b.0));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::value::{Fields, Value};

    fn row(title: &str) -> SharedFields {
        Arc::new(Fields::from([("title".to_owned(), Value::from(title))]))
    }

    fn rows(items: &[(&str, &SharedFields)]) -> HashMap<RowKey, SharedFields> {
        items
            .iter()
            .map(|(id, r)| (RowKey::new("t", id), (*r).clone()))
            .collect()
    }

    fn refs(ids: &[&str]) -> Vec<Ref> {
        ids.iter().map(|id| Ref::new("t", id)).collect()
    }

    #[test]
    fn equal_contents_make_an_empty_diff() {
        let (a, b) = (row("a"), row("b"));
        let (r, m) = (refs(&["1", "2"]), rows(&[("1", &a), ("2", &b)]));
        let c = Content {
            refs: &r,
            rows: &m,
            total: Some(2),
            window: None,
        };
        let copy = rows(&[("1", &row("a")), ("2", &row("b"))]);
        let same = Content {
            rows: &copy,
            ..Content { ..c }
        };
        assert!(diff(&c, &same).is_empty());
    }

    #[test]
    fn new_rows_go_whole_changed_ones_as_patches_and_gone_ones_by_refs() {
        let (a, b, c) = (row("a"), row("b"), row("c"));
        let (r0, m0) = (refs(&["1", "2"]), rows(&[("1", &a), ("2", &b)]));
        let b2 = row("b2");
        let (r1, m1) = (refs(&["3", "2"]), rows(&[("3", &c), ("2", &b2)]));
        let d = diff(
            &Content {
                refs: &r0,
                rows: &m0,
                total: Some(2),
                window: None,
            },
            &Content {
                refs: &r1,
                rows: &m1,
                total: Some(2),
                window: Some(WindowEdges::default()),
            },
        );
        assert_eq!(d.rows, vec![(RowKey::new("t", "3"), c.clone())]);
        assert_eq!(d.patches.len(), 1);
        assert_eq!(d.patches[0].0, RowKey::new("t", "2"));
        assert!(!d.refs.is_empty());
        assert_eq!(d.total, None, "the total did not change");
        assert_eq!(d.window, Some(WindowEdges::default()));
        // Applying the ref ops to the old refs gives the new ones.
        let mut applied = r0.clone();
        crate::engine::diff::apply_refs(&mut applied, &d.refs).unwrap();
        assert_eq!(applied, r1);
    }
}
