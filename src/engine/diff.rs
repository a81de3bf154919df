//! Minimal diffs as RFC 6902 JSON Patch.
//!
//! Row fields diff key by key (`add`, `remove`, `replace` at `/<field>`, keys
//! escaped per RFC 6901). Refs diff as a sequential patch over the refs array:
//! removals first (from the end, so indices stay valid), then each ref in new
//! order is either left alone (it is on a longest increasing run of kept refs,
//! so it is already in place), moved once, or added. Reorders therefore cost
//! one `move` per ref that actually changed its relative position.

use std::collections::HashMap;

use super::result::{Ref, RowKey};
use super::value::{Fields, Value};

/// The kind of a patch step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert at a path.
    Add,
    /// Delete at a path.
    Remove,
    /// Overwrite at a path.
    Replace,
    /// Take from `from` and insert at `path`.
    Move,
}

/// One JSON Patch step carrying values of type `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch<T> {
    /// The operation.
    pub op: Op,
    /// An RFC 6901 pointer.
    pub path: String,
    /// The source pointer of a move.
    pub from: Option<String>,
    /// The value of an add or replace.
    pub value: Option<T>,
}

/// A step on a row's fields.
pub type FieldOp = Patch<Value>;
/// A step on a view's refs.
pub type RefOp = Patch<Ref>;

/// Escapes one reference token per RFC 6901.
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Reverses [`escape_token`].
pub fn unescape_token(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// The field-level patch turning `old` into `new`.
pub fn diff_fields(old: &Fields, new: &Fields) -> Vec<FieldOp> {
    let mut ops = Vec::new();
    for k in old.keys() {
        if !new.contains_key(k) {
            ops.push(Patch {
                op: Op::Remove,
                path: format!("/{}", escape_token(k)),
                from: None,
                value: None,
            });
        }
    }
    for (k, v) in new {
        match old.get(k) {
            None => ops.push(Patch {
                op: Op::Add,
                path: format!("/{}", escape_token(k)),
                from: None,
                value: Some(v.clone()),
            }),
            Some(o) if o != v => ops.push(Patch {
                op: Op::Replace,
                path: format!("/{}", escape_token(k)),
                from: None,
                value: Some(v.clone()),
            }),
            Some(_) => {}
        }
    }
    ops
}

/// Applies a field patch in place.
pub fn apply_fields(fields: &mut Fields, ops: &[FieldOp]) -> Result<(), String> {
    for op in ops {
        let key = op
            .path
            .strip_prefix('/')
            .map(unescape_token)
            .ok_or_else(|| format!("bad field path {:?}", op.path))?;
        match op.op {
            Op::Add | Op::Replace => {
                let v = op.value.clone().ok_or("add/replace without a value")?;
                if op.op == Op::Replace && !fields.contains_key(&key) {
                    return Err(format!("replace of missing field {key}"));
                }
                fields.insert(key, v);
            }
            Op::Remove => {
                fields
                    .remove(&key)
                    .ok_or_else(|| format!("remove of missing field {key}"))?;
            }
            Op::Move => return Err("move is not used on fields".into()),
        }
    }
    Ok(())
}

/// Identity of a ref within a list: its row, and which occurrence of that row
/// it is (a list may name the same row twice).
type Slot = (RowKey, usize);

fn slots(refs: &[Ref]) -> Vec<Slot> {
    let mut seen: HashMap<&RowKey, usize> = HashMap::new();
    refs.iter()
        .map(|r| {
            let n = seen.entry(&r.key).or_insert(0);
            *n += 1;
            (r.key.clone(), *n - 1)
        })
        .collect()
}

/// The sequential patch turning refs `old` into `new`.
pub fn diff_refs(old: &[Ref], new: &[Ref]) -> Vec<RefOp> {
    let old_slots = slots(old);
    let new_slots = slots(new);
    let new_pos: HashMap<&Slot, usize> =
        new_slots.iter().enumerate().map(|(i, s)| (s, i)).collect();
    let old_pos: HashMap<&Slot, usize> =
        old_slots.iter().enumerate().map(|(i, s)| (s, i)).collect();
    let mut ops = Vec::new();

    // 1. Removals, from the end so earlier indices stay valid.
    let mut current: Vec<&Slot> = Vec::with_capacity(old.len());
    for (i, s) in old_slots.iter().enumerate().rev() {
        if !new_pos.contains_key(s) {
            ops.push(Patch {
                op: Op::Remove,
                path: format!("/{i}"),
                from: None,
                value: None,
            });
        }
    }
    for s in &old_slots {
        if new_pos.contains_key(s) {
            current.push(s);
        }
    }

    // 2. Kept refs on a longest increasing run (by new position) stay put.
    let seq: Vec<usize> = current.iter().map(|s| new_pos[*s]).collect();
    let stay: std::collections::HashSet<usize> = longest_increasing(&seq)
        .into_iter()
        .map(|i| seq[i])
        .collect();

    // 3. Walk the new order, placing each ref right after its predecessor.
    //    Positions come from an order-statistics tree (see `Ranks`), so a
    //    diff with many adds or moves stays O(n log n).
    let kept_index: HashMap<&Slot, usize> =
        current.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let placed = placement_keys(&new_slots, &kept_index, &stay);
    let mut ranks = Ranks::new(
        (0..current.len())
            .map(|i| (i as i64, 0))
            .chain(placed.iter().copied()),
    );
    for i in 0..current.len() {
        ranks.insert((i as i64, 0));
    }
    for (j, s) in new_slots.iter().enumerate() {
        if stay.contains(&j) {
            continue;
        }
        let to_key = placed[j];
        match kept_index.get(s) {
            Some(&i) => {
                let from_key = (i as i64, 0);
                let from = ranks.rank(from_key);
                ranks.remove(from_key);
                let to = ranks.rank(to_key);
                ranks.insert(to_key);
                if from != to {
                    ops.push(Patch {
                        op: Op::Move,
                        path: format!("/{to}"),
                        from: Some(format!("/{from}")),
                        value: None,
                    });
                }
            }
            None => {
                let to = ranks.rank(to_key);
                ranks.insert(to_key);
                ops.push(Patch {
                    op: Op::Add,
                    path: format!("/{to}"),
                    from: None,
                    value: Some(new[j].clone()),
                });
            }
        }
    }

    // 4. Same row, different nested refs or fields: replace in place.
    for (j, s) in new_slots.iter().enumerate() {
        if let Some(&i) = old_pos.get(s) {
            if old[i] != new[j] {
                ops.push(Patch {
                    op: Op::Replace,
                    path: format!("/{j}"),
                    from: None,
                    value: Some(new[j].clone()),
                });
            }
        }
    }
    ops
}

/// A sort key for every position a ref takes while the patch is applied.
///
/// Kept refs start at `(i, 0)`, `i` being their index among the kept refs.
/// Refs that stay never move; every other ref of the new list is placed
/// right after its predecessor, so it lands in the run that follows the
/// nearest staying ref before it (or the start): key `(anchor, distance)`.
/// Sorting the present keys gives the list's order at every step.
fn placement_keys(
    new_slots: &[Slot],
    kept_index: &HashMap<&Slot, usize>,
    stay: &std::collections::HashSet<usize>,
) -> Vec<(i64, usize)> {
    let mut anchor: (i64, usize) = (-1, 0);
    let mut anchor_at: i64 = -1;
    new_slots
        .iter()
        .enumerate()
        .map(|(j, s)| {
            if stay.contains(&j) {
                anchor = (kept_index[s] as i64, 0);
                anchor_at = j as i64;
                anchor
            } else {
                (anchor.0, (j as i64 - anchor_at) as usize)
            }
        })
        .collect()
}

/// Which of a fixed set of keys are present, with the rank (number of
/// present keys below) of any key: a Fenwick tree over the sorted keys.
struct Ranks {
    keys: Vec<(i64, usize)>,
    tree: Vec<usize>,
}

impl Ranks {
    fn new(keys: impl Iterator<Item = (i64, usize)>) -> Self {
        let mut keys: Vec<(i64, usize)> = keys.collect();
        keys.sort_unstable();
        keys.dedup();
        let tree = vec![0; keys.len() + 1];
        Ranks { keys, tree }
    }

    fn slot(&self, key: (i64, usize)) -> usize {
        self.keys.binary_search(&key).expect("a known key") + 1
    }

    fn add(&mut self, key: (i64, usize), delta: isize) {
        let mut i = self.slot(key);
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    fn insert(&mut self, key: (i64, usize)) {
        self.add(key, 1);
    }

    fn remove(&mut self, key: (i64, usize)) {
        self.add(key, -1);
    }

    /// Present keys strictly below `key`.
    fn rank(&self, key: (i64, usize)) -> usize {
        let mut i = self.slot(key) - 1;
        let mut n = 0;
        while i > 0 {
            n += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        n
    }
}

/// Indices into `seq` of one longest strictly increasing subsequence.
fn longest_increasing(seq: &[usize]) -> Vec<usize> {
    let mut tails: Vec<usize> = Vec::new(); // indices into seq
    let mut prev: Vec<Option<usize>> = vec![None; seq.len()];
    for i in 0..seq.len() {
        let pos = tails.partition_point(|&t| seq[t] < seq[i]);
        prev[i] = if pos > 0 { Some(tails[pos - 1]) } else { None };
        if pos == tails.len() {
            tails.push(i);
        } else {
            tails[pos] = i;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        out.push(i);
        cur = prev[i];
    }
    out.reverse();
    out
}

fn index_of(path: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    let tok = path
        .strip_prefix('/')
        .ok_or_else(|| format!("bad index path {path:?}"))?;
    let i = if tok == "-" {
        len
    } else {
        tok.parse::<usize>()
            .map_err(|_| format!("bad index path {path:?}"))?
    };
    if i > len || (!allow_end && i == len) {
        return Err(format!("index {i} out of range for {len} refs"));
    }
    Ok(i)
}

/// Applies a refs patch in place.
pub fn apply_refs(refs: &mut Vec<Ref>, ops: &[RefOp]) -> Result<(), String> {
    for op in ops {
        match op.op {
            Op::Add => {
                let i = index_of(&op.path, refs.len(), true)?;
                refs.insert(i, op.value.clone().ok_or("add without a value")?);
            }
            Op::Remove => {
                let i = index_of(&op.path, refs.len(), false)?;
                refs.remove(i);
            }
            Op::Replace => {
                let i = index_of(&op.path, refs.len(), false)?;
                refs[i] = op.value.clone().ok_or("replace without a value")?;
            }
            Op::Move => {
                let from = index_of(
                    op.from.as_deref().ok_or("move without from")?,
                    refs.len(),
                    false,
                )?;
                let item = refs.remove(from);
                let to = index_of(&op.path, refs.len(), true)?;
                refs.insert(to, item);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(ids: &[&str]) -> Vec<Ref> {
        ids.iter().map(|i| Ref::new("t", i)).collect()
    }

    #[test]
    fn rotating_a_list_is_one_move() {
        let old = refs(&["a", "b", "c", "d"]);
        let new = refs(&["b", "c", "d", "a"]);
        let ops = diff_refs(&old, &new);
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!(ops[0].op, Op::Move);
        let mut got = old.clone();
        apply_refs(&mut got, &ops).unwrap();
        assert_eq!(got, new);
    }

    #[test]
    fn swaps_adds_and_removes_apply_in_order() {
        let old = refs(&["a", "b", "c", "d", "e"]);
        let new = refs(&["e", "x", "c", "b", "y"]);
        let ops = diff_refs(&old, &new);
        let mut got = old.clone();
        apply_refs(&mut got, &ops).unwrap();
        assert_eq!(got, new);
        assert_eq!(ops.iter().filter(|o| o.op == Op::Remove).count(), 2);
        assert_eq!(ops.iter().filter(|o| o.op == Op::Add).count(), 2);
    }

    #[test]
    fn changed_nested_refs_are_replaced() {
        let old = vec![Ref::new("t", "1").with_nested("owner", Ref::new("u", "1"))];
        let new = vec![Ref::new("t", "1").with_nested("owner", Ref::new("u", "2"))];
        let ops = diff_refs(&old, &new);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, Op::Replace);
    }

    #[test]
    fn field_keys_are_escaped() {
        let mut old = Fields::new();
        old.insert("a/b".into(), Value::Int(1));
        let mut new = Fields::new();
        new.insert("a/b".into(), Value::Int(2));
        new.insert("c~d".into(), Value::Null);
        let ops = diff_fields(&old, &new);
        assert_eq!(ops[0].path, "/a~1b");
        assert_eq!(ops[1].path, "/c~0d");
        let mut got = old.clone();
        apply_fields(&mut got, &ops).unwrap();
        assert_eq!(got, new);
    }
}

#[cfg(test)]
mod properties {
    //! For random old/new rows and ref lists: applying the diff to old gives
    //! new, both with our applier and with an independent RFC 6902
    //! implementation on the JSON rendering.
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value as Json};

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            "[a-z~/]{0,6}".prop_map(Value::String),
        ]
    }

    fn fields() -> impl Strategy<Value = Fields> {
        proptest::collection::btree_map("[a-c~/]{1,3}", value(), 0..6)
    }

    fn refs() -> impl Strategy<Value = Vec<Ref>> {
        proptest::collection::vec((0u8..12, proptest::option::of(0u8..3)), 0..12).prop_map(|v| {
            v.into_iter()
                .map(|(id, owner)| {
                    let r = Ref::new("t", &id.to_string());
                    match owner {
                        Some(o) => r.with_nested("owner", Ref::new("u", &o.to_string())),
                        None => r,
                    }
                })
                .collect()
        })
    }

    fn ref_json(r: &Ref) -> Json {
        let nested: serde_json::Map<String, Json> = r
            .nested
            .iter()
            .map(|(k, v)| (k.clone(), ref_json(v)))
            .collect();
        json!({"t": &*r.key.table, "id": &*r.key.id, "n": nested})
    }

    fn to_patch<T>(ops: &[Patch<T>], render: impl Fn(&T) -> Json) -> json_patch::Patch {
        let ops: Vec<Json> = ops
            .iter()
            .map(|o| {
                let name = match o.op {
                    Op::Add => "add",
                    Op::Remove => "remove",
                    Op::Replace => "replace",
                    Op::Move => "move",
                };
                let mut m = json!({"op": name, "path": o.path});
                if let Some(f) = &o.from {
                    m["from"] = json!(f);
                }
                if let Some(v) = &o.value {
                    m["value"] = render(v);
                }
                m
            })
            .collect();
        serde_json::from_value(Json::Array(ops)).expect("valid RFC 6902 patch")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn field_diffs_turn_old_into_new(old in fields(), new in fields()) {
            let ops = diff_fields(&old, &new);
            let mut mine = old.clone();
            apply_fields(&mut mine, &ops).unwrap();
            prop_assert_eq!(&mine, &new);
            let render = |f: &Fields| Json::Object(f.iter().map(|(k, v)| (k.clone(), v.to_json())).collect());
            let mut theirs = render(&old);
            json_patch::patch(&mut theirs, &to_patch(&ops, Value::to_json)).unwrap();
            prop_assert_eq!(theirs, render(&new));
        }

        #[test]
        fn ref_diffs_turn_old_into_new_with_minimal_moves(old in refs(), new in refs()) {
            let ops = diff_refs(&old, &new);
            let mut mine = old.clone();
            apply_refs(&mut mine, &ops).unwrap();
            prop_assert_eq!(&mine, &new);
            let render = |v: &[Ref]| Json::Array(v.iter().map(ref_json).collect());
            let mut theirs = render(&old);
            json_patch::patch(&mut theirs, &to_patch(&ops, ref_json)).unwrap();
            prop_assert_eq!(theirs, render(&new));
            // Same elements, different order: only moves, never remove+add.
            let mut a: Vec<_> = old.iter().map(|r| r.key.clone()).collect();
            let mut b: Vec<_> = new.iter().map(|r| r.key.clone()).collect();
            a.sort();
            b.sort();
            if a == b {
                prop_assert!(ops.iter().all(|o| o.op == Op::Move || o.op == Op::Replace), "{:?}", ops);
            }
        }
    }
}
