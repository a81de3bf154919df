//! The SQL of a window over an ordered graph's query.
//!
//! A window is the graph's query wrapped in keyset parts: rows past the
//! cursor in list order, `LIMIT limit + 1` (the extra row says whether the
//! window has a neighbour on that side), plus a one-row probe on the other
//! side of the cursor. Each part is `WHERE (order keys) > (cursor) ORDER BY
//! order keys LIMIT n`, which PostgreSQL pushes into the query and answers
//! from an index on the order keys, so the cost follows the window's size,
//! never the cursor's depth. There is no OFFSET anywhere.

use tokio_postgres::Row;

use crate::engine::{Direction, EvalError, Value, Window, WindowEdges, WindowOrder};

/// The alias of the graph's query inside a window statement.
const INNER: &str = "arcana_w";

/// One keyset part: which side of the cursor, how many rows.
struct Part {
    /// Comparison with the cursor (`>`, `>=`, `<`, `<=`), none for a list edge.
    cmp: Option<&'static str>,
    /// Ascending key order.
    ascending: bool,
    /// The bind parameter holding the part's limit.
    limit_param: usize,
}

/// How the rows of a window statement come back, and what to make of them.
pub struct WindowQuery {
    /// The statement.
    pub sql: String,
    /// Values for the placeholders after the graph's own: the cursor, then
    /// each part's limit.
    pub binds: Vec<Value>,
    shape: Shape,
}

/// Which parts a statement has, in list terms.
enum Shape {
    /// Part 0 runs forward from the start or cursor; part 1 (optional)
    /// probes one row behind the cursor.
    Forward { limit: usize, probe: bool },
    /// Part 0 runs backward from the end or cursor; part 1 (optional)
    /// probes one row ahead of it.
    Backward { limit: usize, probe: bool },
    /// Part 0 runs backward (rows before), part 1 forward (anchor on).
    Around { before: usize, after: usize },
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Builds the window statement around `inner` (the graph's query with its
/// `params` positional placeholders).
pub fn build(inner: &str, params: usize, order: &WindowOrder, w: &Window) -> WindowQuery {
    let inner = inner.trim_end().trim_end_matches(';');
    let keys: Vec<String> = order
        .order
        .iter()
        .map(|c| format!("{INNER}.{}", quote(c)))
        .collect();
    let k = w.cursor.len();
    let cursor: Vec<String> = (0..k).map(|i| format!("${}", params + 1 + i)).collect();
    // Keys grow along the list unless it is descending.
    let forward_asc = !order.descending;
    let (gt, ge, lt, le) = if forward_asc {
        (">", ">=", "<", "<=")
    } else {
        ("<", "<=", ">", ">=")
    };
    let limit = w.limit as usize;
    let mut binds = w.cursor.clone();
    let mut parts = Vec::new();
    let mut part = |cmp, ascending, n: usize, binds: &mut Vec<Value>| {
        binds.push(Value::Int(n as i64));
        parts.push(Part {
            cmp,
            ascending,
            limit_param: params + binds.len(),
        });
    };
    let has_cursor = k > 0;
    let shape = match w.direction {
        Direction::After => {
            let (main, probe) = if w.inclusive { (ge, lt) } else { (gt, le) };
            part(
                has_cursor.then_some(main),
                forward_asc,
                limit + 1,
                &mut binds,
            );
            if has_cursor {
                part(Some(probe), !forward_asc, 1, &mut binds);
            }
            Shape::Forward {
                limit,
                probe: has_cursor,
            }
        }
        Direction::Before => {
            let (main, probe) = if w.inclusive { (le, gt) } else { (lt, ge) };
            part(
                has_cursor.then_some(main),
                !forward_asc,
                limit + 1,
                &mut binds,
            );
            if has_cursor {
                part(Some(probe), forward_asc, 1, &mut binds);
            }
            Shape::Backward {
                limit,
                probe: has_cursor,
            }
        }
        Direction::Around => {
            let before = limit / 2;
            let after = limit - before;
            part(Some(lt), !forward_asc, before + 1, &mut binds);
            part(Some(ge), forward_asc, after + 1, &mut binds);
            Shape::Around { before, after }
        }
    };
    let key_list = format!("({})", keys.join(", "));
    let cursor_list = format!("({})", cursor.join(", "));
    let sql = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let filter = p
                .cmp
                .map(|c| format!(" WHERE {key_list} {c} {cursor_list}"))
                .unwrap_or_default();
            let dir = if p.ascending { "ASC" } else { "DESC" };
            let order_by: Vec<String> = keys.iter().map(|c| format!("{c} {dir}")).collect();
            format!(
                "(SELECT {i}::int4 AS arcana_part, {INNER}.* FROM ({inner}) AS {INNER}{filter} ORDER BY {} LIMIT ${})",
                order_by.join(", "),
                p.limit_param
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    WindowQuery { sql, binds, shape }
}

impl WindowQuery {
    /// Splits the statement's rows into the window's rows, in list order,
    /// and its edges. Each row keeps its leading part column.
    pub fn settle(&self, rows: Vec<Row>) -> Result<(Vec<Row>, WindowEdges), EvalError> {
        let mut parts: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
        for row in rows {
            let at: i32 = row
                .try_get(0)
                .map_err(|e| EvalError::internal(format!("window part: {e}")))?;
            match parts.get_mut(at as usize) {
                Some(p) => p.push(row),
                None => return Err(EvalError::internal("a window row names no part")),
            }
        }
        let [first, second] = parts;
        Ok(match self.shape {
            Shape::Forward { limit, probe } => {
                let mut rows = first;
                let has_after = rows.len() > limit;
                rows.truncate(limit);
                let has_before = probe && !second.is_empty();
                (
                    rows,
                    WindowEdges {
                        has_before,
                        has_after,
                    },
                )
            }
            Shape::Backward { limit, probe } => {
                let mut rows = first;
                let has_before = rows.len() > limit;
                rows.truncate(limit);
                rows.reverse();
                let has_after = probe && !second.is_empty();
                (
                    rows,
                    WindowEdges {
                        has_before,
                        has_after,
                    },
                )
            }
            Shape::Around { before, after } => {
                let mut head = first;
                let has_before = head.len() > before;
                head.truncate(before);
                head.reverse();
                let mut tail = second;
                let has_after = tail.len() > after;
                tail.truncate(after);
                head.extend(tail);
                (
                    head,
                    WindowEdges {
                        has_before,
                        has_after,
                    },
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(descending: bool) -> WindowOrder {
        WindowOrder {
            order: vec!["position".into(), "id".into()],
            descending,
            default_limit: 50,
            max_limit: 1000,
        }
    }

    #[test]
    fn a_cursor_window_is_a_keyset_part_and_a_probe() {
        let w = Window {
            limit: 10,
            cursor: vec![Value::Int(5), Value::Int(7)],
            direction: Direction::After,
            inclusive: false,
        };
        let q = build("SELECT * FROM t WHERE a = $1;", 1, &order(false), &w);
        let main = r#"WHERE (arcana_w."position", arcana_w."id") > ($2, $3) ORDER BY arcana_w."position" ASC"#;
        assert!(q.sql.contains(main), "{}", q.sql);
        assert!(q.sql.contains("<= ($2, $3)"), "{}", q.sql);
        assert!(
            q.sql.contains("LIMIT $4") && q.sql.contains("LIMIT $5"),
            "{}",
            q.sql
        );
        assert!(!q.sql.to_uppercase().contains("OFFSET"));
        assert_eq!(q.binds.len(), 4);
        assert_eq!(q.binds[2], Value::Int(11));
        assert_eq!(q.binds[3], Value::Int(1));
    }

    #[test]
    fn a_descending_list_runs_forward_down_the_keys() {
        let w = Window {
            limit: 3,
            cursor: vec![Value::Int(5), Value::Int(7)],
            direction: Direction::After,
            inclusive: true,
        };
        let q = build("SELECT * FROM t", 0, &order(true), &w);
        assert!(q.sql.contains("<= ($1, $2) ORDER BY"), "{}", q.sql);
        assert!(q.sql.contains("DESC"), "{}", q.sql);
        assert!(q.sql.contains("> ($1, $2)"), "{}", q.sql);
    }
}
