//! The order a bundle's row intents are applied in. Devices write rows in
//! whatever order their app did; foreign keys that are not deferrable
//! check each statement at once, so a child written before its parent, or
//! a parent deleted before its child, would fail the bundle. Rows are so
//! applied parents first when they end up existing, and children first
//! when they end up deleted; tables in a foreign-key cycle keep the
//! device's order among themselves, as do all intents of one row.

use std::collections::{BTreeMap, HashMap};

use crate::postgres::wal::quote_table;
use crate::proto::{self as pb, IntentOp};

/// Each table's rank among the synced tables: a table referencing another
/// ranks after it; tables in one foreign-key cycle share a rank.
pub async fn ranks(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<HashMap<String, usize>, String> {
    let quoted: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    let rows = client
        .query(
            "WITH t AS (SELECT n, q::regclass AS oid FROM unnest($1::text[], $2::text[]) AS u(n, q)) \
             SELECT DISTINCT child.n, parent.n FROM pg_constraint c \
             JOIN t child ON child.oid = c.conrelid JOIN t parent ON parent.oid = c.confrelid \
             WHERE c.contype = 'f' AND NOT c.condeferrable",
            &[&tables, &quoted],
        )
        .await
        .map_err(|e| format!("reading the synced tables' foreign keys: {e}"))?;
    let edges: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(rank_tables(tables, &edges))
}

/// Ranks `tables` given `(child, parent)` edges: the components of the
/// reference graph (strongly connected, so a cycle is one), numbered so
/// that parents come first. Deterministic for a given input.
pub fn rank_tables(tables: &[String], edges: &[(String, String)]) -> HashMap<String, usize> {
    let at: HashMap<&str, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let n = tables.len();
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, p) in edges {
        if let (Some(&c), Some(&p)) = (at.get(c.as_str()), at.get(p.as_str())) {
            parents[c].push(p);
        }
    }
    // Reachability by repeated search is fine for the few tables a
    // deployment syncs; components are the tables that reach each other.
    let reach: Vec<Vec<bool>> = (0..n)
        .map(|s| {
            let mut seen = vec![false; n];
            let mut stack = vec![s];
            while let Some(v) = stack.pop() {
                for &p in &parents[v] {
                    if !seen[p] {
                        seen[p] = true;
                        stack.push(p);
                    }
                }
            }
            seen
        })
        .collect();
    let mut component = vec![usize::MAX; n];
    let mut members: Vec<Vec<usize>> = Vec::new();
    for v in 0..n {
        if component[v] != usize::MAX {
            continue;
        }
        let id = members.len();
        let group: Vec<usize> = (0..n)
            .filter(|&w| w == v || (reach[v][w] && reach[w][v]))
            .collect();
        for &w in &group {
            component[w] = id;
        }
        members.push(group);
    }
    // A component's rank: one more than the highest rank of a component it
    // references (parents first), found by depth over the acyclic graph of
    // components.
    let mut rank: Vec<Option<usize>> = vec![None; members.len()];
    fn rank_of(
        c: usize,
        members: &[Vec<usize>],
        parents: &[Vec<usize>],
        component: &[usize],
        rank: &mut Vec<Option<usize>>,
    ) -> usize {
        if let Some(r) = rank[c] {
            return r;
        }
        let mut r = 0;
        for &v in &members[c] {
            for &p in &parents[v] {
                let pc = component[p];
                if pc != c {
                    r = r.max(rank_of(pc, members, parents, component, rank) + 1);
                }
            }
        }
        rank[c] = Some(r);
        r
    }
    (0..n)
        .map(|v| {
            let r = rank_of(component[v], &members, &parents, &component, &mut rank);
            (tables[v].clone(), r)
        })
        .collect()
}

/// The positions of `intents` in the order to apply them. `rank` gives a
/// table's rank, `row` an intent's row identity (its table and key). A
/// row's intents stay together, in the device's order, placed by where the
/// row ends: rows that end existing go first, parents before children;
/// rows that end deleted go last, children before parents. Ties keep the
/// device's order.
pub fn order(
    intents: &[pb::RowIntent],
    rank: impl Fn(&str) -> usize,
    row: impl Fn(&pb::RowIntent) -> Vec<u8>,
) -> Vec<usize> {
    // Row -> its intents, rows in order of first appearance.
    let mut rows: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, intent) in intents.iter().enumerate() {
        let g = *rows.entry(row(intent)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let key = |g: &Vec<usize>| {
        let last = &intents[*g.last().expect("a group has an intent")];
        let r = rank(&last.table);
        if last.op == IntentOp::Delete as i32 {
            (1, usize::MAX - r)
        } else {
            (0, r)
        }
    };
    let mut sorted: Vec<&Vec<usize>> = groups.iter().collect();
    // Stable: equal keys keep the order of first appearance.
    sorted.sort_by_key(|g| key(g));
    sorted.into_iter().flatten().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| t.to_string()).collect()
    }

    fn edge(c: &str, p: &str) -> (String, String) {
        (c.into(), p.into())
    }

    #[test]
    fn parents_rank_before_children_and_cycles_share_a_rank() {
        let t = names(&["comments", "posts", "users", "a", "b"]);
        let r = rank_tables(
            &t,
            &[
                edge("comments", "posts"),
                edge("posts", "users"),
                edge("comments", "users"),
                edge("a", "b"),
                edge("b", "a"),
                edge("a", "users"),
            ],
        );
        assert_eq!(r["users"], 0);
        assert_eq!(r["posts"], 1);
        assert_eq!(r["comments"], 2);
        assert_eq!(r["a"], r["b"]);
        assert!(r["a"] > r["users"]);
        // A table referencing itself is its own component.
        let r = rank_tables(&names(&["tree"]), &[edge("tree", "tree")]);
        assert_eq!(r["tree"], 0);
    }

    fn w(table: &str, op: IntentOp, id: &str) -> pb::RowIntent {
        let id = pb::Value {
            kind: Some(pb::value::Kind::String(id.into())),
        };
        pb::RowIntent {
            table: table.into(),
            op: op as i32,
            values: [("id".to_owned(), id)].into(),
            base_version: 0,
            client_time_unix_ms: 0,
        }
    }

    fn order_of(intents: &[pb::RowIntent]) -> Vec<usize> {
        let rank = |t: &str| match t {
            "users" => 0,
            "posts" => 1,
            _ => 2,
        };
        order(intents, rank, |i| {
            format!("{}/{:?}", i.table, i.values.get("id")).into_bytes()
        })
    }

    #[test]
    fn writes_go_parents_first_and_deletes_children_first() {
        use IntentOp::{Delete, Insert, Update};
        let intents = [
            w("comments", Insert, "1"),
            w("posts", Insert, "1"),
            w("users", Update, "1"),
            w("comments", Delete, "2"),
            w("posts", Delete, "2"),
            w("comments", Insert, "3"),
        ];
        assert_eq!(order_of(&intents), vec![2, 1, 0, 5, 3, 4]);
        // Deletes of children run before deletes of parents.
        let intents = [w("posts", Delete, "2"), w("comments", Delete, "2")];
        assert_eq!(order_of(&intents), vec![1, 0]);
    }

    #[test]
    fn a_rows_intents_stay_together_in_the_devices_order() {
        use IntentOp::{Delete, Insert, Update};
        // Deleted, then created again: the row ends existing.
        let intents = [
            w("comments", Delete, "1"),
            w("posts", Insert, "9"),
            w("comments", Insert, "1"),
            w("comments", Update, "1"),
        ];
        assert_eq!(order_of(&intents), vec![1, 0, 2, 3]);
        // Created, then deleted: it ends deleted, after the writes.
        let intents = [
            w("posts", Insert, "4"),
            w("posts", Delete, "4"),
            w("users", Insert, "5"),
        ];
        assert_eq!(order_of(&intents), vec![2, 0, 1]);
    }
}
