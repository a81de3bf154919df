//! Windows over ordered graphs: which slice of a long list a view keeps live.
//!
//! A graph that declares an order (a total order ending in a unique key) is
//! subscribed through a window: up to `limit` rows next to a cursor (the
//! order-key values of an anchor row). The window is part of the view's
//! params, so windows with the same graph, params, cursor and limit share
//! one view, and a factory reads it from [`super::Params::window`].

use serde_json::json;

use super::error::EngineError;
use super::value::FieldShape;
use super::value::Value;

/// A graph's total order, as declared in its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOrder {
    /// The fields rows sort by; the last ones form a unique key.
    pub order: Vec<String>,
    /// Whether the list runs from the highest key to the lowest.
    pub descending: bool,
    /// The limit of a subscription that gives no window.
    pub default_limit: u32,
    /// The largest limit a window may ask for.
    pub max_limit: u32,
}

/// Where a window sits relative to its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The first `limit` rows after the cursor (from the start without one).
    After,
    /// The last `limit` rows before the cursor (the end without one).
    Before,
    /// The anchor row and the rows after it fill `limit - limit / 2`
    /// places, the rows before it `limit / 2`.
    Around,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::After => "after",
            Direction::Before => "before",
            Direction::Around => "around",
        }
    }
}

/// One window: a limit, a cursor and a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Most rows the window holds.
    pub limit: u32,
    /// The anchor row's order-key values; empty for a list edge.
    pub cursor: Vec<Value>,
    /// Which side of the cursor.
    pub direction: Direction,
    /// Whether the anchor row belongs to an After or Before window.
    pub inclusive: bool,
}

/// Whether rows exist past a window's edges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowEdges {
    /// Rows come before the window's first row.
    pub has_before: bool,
    /// Rows come after the window's last row.
    pub has_after: bool,
}

/// The order keys a window's last evaluation read, outermost first: a
/// row whose key lies outside `[lo, hi]` before and after a change cannot
/// change the window or its edges (`None`: the window reached that end of
/// the list, so the range is open there). Bounds are in key order, not list
/// order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reach {
    /// The lowest key read, unless the window reached the low end.
    pub lo: Option<Vec<Value>>,
    /// The highest key read, unless the window reached the high end.
    pub hi: Option<Vec<Value>>,
}

impl Reach {
    /// Whether a row with order key `key` lies in the range. Keys of kinds
    /// whose order here may differ from PostgreSQL's (text under a
    /// collation, numerics as text) always count as inside.
    pub fn touches(&self, key: &[Value]) -> bool {
        let above_lo = self
            .lo
            .as_ref()
            .is_none_or(|lo| compare(key, lo).is_none_or(|o| o.is_ge()));
        let below_hi = self
            .hi
            .as_ref()
            .is_none_or(|hi| compare(key, hi).is_none_or(|o| o.is_le()));
        above_lo && below_hi
    }
}

/// Compares two order keys the way PostgreSQL would, when this side can
/// tell for sure (integers, floats, timestamps, booleans); `None` otherwise.
fn compare(a: &[Value], b: &[Value]) -> Option<std::cmp::Ordering> {
    if a.len() != b.len() {
        return None;
    }
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Float(x), Value::Float(y)) => x.partial_cmp(y)?,
            _ => return None,
        };
        if o.is_ne() {
            return Some(o);
        }
    }
    Some(std::cmp::Ordering::Equal)
}

impl Window {
    /// The window of a subscription that names none: the list's first rows.
    pub fn first(limit: u32) -> Window {
        Window {
            limit,
            cursor: Vec::new(),
            direction: Direction::After,
            inclusive: false,
        }
    }

    /// The canonical JSON form, part of the view's params text.
    pub fn canonical(&self) -> serde_json::Value {
        let cursor: Vec<serde_json::Value> = self.cursor.iter().map(Value::to_json).collect();
        json!({
            "limit": self.limit,
            "cursor": cursor,
            "direction": self.direction.name(),
            // Around always holds its anchor: one canonical form for both.
            "inclusive": self.inclusive && self.direction != Direction::Around,
        })
    }

    /// Checks the window against the graph's order and field kinds, and
    /// normalizes it (`inclusive` means nothing without a cursor).
    pub fn check(
        mut self,
        graph: &str,
        order: &WindowOrder,
        fields: &[FieldShape],
    ) -> Result<Window, EngineError> {
        let bad = |m: String| {
            Err(EngineError::InvalidArgument(format!(
                "graph `{graph}`: {m}"
            )))
        };
        if self.limit == 0 {
            return bad("the window's limit must be at least 1".into());
        }
        if self.limit > order.max_limit {
            return bad(format!(
                "the window's limit {} is over the graph's max_limit of {}",
                self.limit, order.max_limit
            ));
        }
        if self.cursor.is_empty() {
            if self.direction == Direction::Around {
                return bad(
                    "an around window needs a cursor (the anchor row's order values)".into(),
                );
            }
            self.inclusive = false;
            return Ok(self);
        }
        if self.cursor.len() != order.order.len() {
            return bad(format!(
                "the cursor has {} values; it needs one per order field ({})",
                self.cursor.len(),
                order.order.join(", ")
            ));
        }
        for (i, (name, v)) in order.order.iter().zip(&self.cursor).enumerate() {
            if matches!(v, Value::Null) {
                return bad(format!("cursor value {} (`{name}`) is null", i + 1));
            }
            let want = fields
                .iter()
                .find(|f| f.nested.is_empty() && &f.name == name)
                .map(|f| f.kind);
            if let Some(want) = want {
                if v.kind() != want {
                    return bad(format!(
                        "cursor value {} (`{name}`) must be a {want} value, not {}",
                        i + 1,
                        v.kind()
                    ));
                }
            }
        }
        if self.direction == Direction::Around {
            self.inclusive = true;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> WindowOrder {
        WindowOrder {
            order: vec!["position".into(), "id".into()],
            descending: false,
            default_limit: 50,
            max_limit: 1000,
        }
    }

    fn fields() -> Vec<FieldShape> {
        ["position", "id"]
            .iter()
            .map(|n| FieldShape {
                nested: String::new(),
                name: (*n).into(),
                kind: "int",
                not_null: true,
            })
            .collect()
    }

    #[test]
    fn a_cursor_needs_one_value_of_the_right_kind_per_order_field() {
        let w = |cursor: Vec<Value>| Window {
            limit: 10,
            cursor,
            direction: Direction::After,
            inclusive: false,
        };
        assert!(w(vec![Value::Int(1), Value::Int(2)])
            .check("g", &order(), &fields())
            .is_ok());
        let short = w(vec![Value::Int(1)]).check("g", &order(), &fields());
        assert!(
            matches!(short, Err(EngineError::InvalidArgument(m)) if m.contains("one per order field"))
        );
        let kind =
            w(vec![Value::Int(1), Value::String("x".into())]).check("g", &order(), &fields());
        assert!(
            matches!(kind, Err(EngineError::InvalidArgument(m)) if m.contains("must be a int"))
        );
    }

    #[test]
    fn limits_are_bounded_and_around_needs_a_cursor() {
        let mut w = Window::first(0);
        assert!(w.clone().check("g", &order(), &fields()).is_err());
        w.limit = 1001;
        assert!(w.clone().check("g", &order(), &fields()).is_err());
        w.limit = 10;
        w.direction = Direction::Around;
        assert!(w.check("g", &order(), &fields()).is_err());
    }

    #[test]
    fn a_reach_holds_the_keys_between_its_bounds_and_doubts_text() {
        let k = |p: i64, id: i64| vec![Value::Int(p), Value::Int(id)];
        let r = Reach {
            lo: Some(k(10, 1)),
            hi: Some(k(20, 5)),
        };
        assert!(r.touches(&k(10, 1)) && r.touches(&k(15, 0)) && r.touches(&k(20, 5)));
        assert!(!r.touches(&k(10, 0)) && !r.touches(&k(20, 6)) && !r.touches(&k(3, 9)));
        let open = Reach {
            lo: None,
            hi: Some(k(20, 5)),
        };
        assert!(open.touches(&k(-100, 0)) && !open.touches(&k(21, 0)));
        let text = Reach {
            lo: Some(vec![Value::String("b".into())]),
            hi: Some(vec![Value::String("c".into())]),
        };
        assert!(
            text.touches(&[Value::String("a".into())]),
            "collations differ: never skip"
        );
    }

    #[test]
    fn inclusive_without_a_cursor_is_the_same_window() {
        let mut a = Window::first(5);
        a.inclusive = true;
        let a = a.check("g", &order(), &fields()).unwrap();
        let b = Window::first(5).check("g", &order(), &fields()).unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }
}
