//! A view's two sources of rows, evaluations and patches, kept in commit
//! order by the snapshot an evaluation read.

use std::sync::{Arc, Mutex};

use super::{Refresh, Store};
use crate::engine::result::{GraphResult, Ref, RowKey};
use crate::engine::schedule::Patch;
use crate::engine::seen::Seen;
use crate::engine::stats::Stats;
use crate::engine::testing::view;
use crate::engine::value::{Fields, Value};

fn title(t: &str) -> Fields {
    Fields::from([("title".to_owned(), Value::from(t))])
}

/// A result holding task 1 titled `t`, read in snapshot `snapshot`.
fn result(t: &str, snapshot: Option<&str>) -> GraphResult {
    let mut r = GraphResult::new();
    r.add_row("tasks", "1", title(t));
    r.add_ref(Ref::new("tasks", "1"));
    r.seen = snapshot.map(|s| Seen::parse(s).expect("a snapshot"));
    r
}

fn patch(t: &str, xid: Option<u32>) -> Patch {
    Patch {
        key: RowKey::new("tasks", "1"),
        values: Arc::new(title(t)),
        xid,
    }
}

struct Parts {
    store: Mutex<Store>,
    stats: Stats,
}

impl Parts {
    fn new() -> Self {
        Parts {
            store: Mutex::default(),
            stats: Stats::default(),
        }
    }
}

fn held_title(v: &super::View) -> Value {
    v.lock().rows[&RowKey::new("tasks", "1")]["title"].clone()
}

#[test]
fn a_patch_of_a_commit_the_last_evaluation_read_is_dropped() {
    let (v, p) = (view("g"), Parts::new());
    let first = v.settle(Ok(result("a", Some("10:20:"))), &p.store, &p.stats, 8);
    assert_eq!(first, Refresh::Changed);
    // Transaction 12 finished before the evaluation: its values are old.
    let r = v.apply_patches(vec![patch("old", Some(12))], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Unchanged);
    assert_eq!(held_title(&v), Value::from("a"));
    // 15 was still running when the evaluation read: its values are new.
    let v2 = view("g");
    v2.settle(Ok(result("a", Some("10:20:15"))), &p.store, &p.stats, 8);
    let r = v2.apply_patches(vec![patch("b", Some(15))], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Changed);
    assert_eq!(held_title(&v2), Value::from("b"));
}

#[test]
fn a_patch_of_a_later_commit_or_of_an_unknown_one_is_applied() {
    let (v, p) = (view("g"), Parts::new());
    v.settle(Ok(result("a", Some("10:20:"))), &p.store, &p.stats, 8);
    let r = v.apply_patches(vec![patch("b", Some(20))], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Changed);
    assert_eq!(held_title(&v), Value::from("b"));
    let r = v.apply_patches(vec![patch("c", None)], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Changed);
    assert_eq!(held_title(&v), Value::from("c"));
    // An evaluation that knows no snapshot drops nothing.
    let v2 = view("g");
    v2.settle(Ok(result("a", None)), &p.store, &p.stats, 8);
    let r = v2.apply_patches(vec![patch("b", Some(12))], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Changed);
}

#[test]
fn the_newest_evaluation_decides() {
    let (v, p) = (view("g"), Parts::new());
    v.settle(Ok(result("a", Some("10:20:"))), &p.store, &p.stats, 8);
    v.settle(Ok(result("z", Some("30:40:"))), &p.store, &p.stats, 8);
    let r = v.apply_patches(vec![patch("b", Some(25))], &p.store, &p.stats, 8);
    assert_eq!(r, Refresh::Unchanged, "25 finished before the second read");
    assert_eq!(held_title(&v), Value::from("z"));
}
