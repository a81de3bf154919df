//! From pgoutput row messages to engine changes.
//!
//! Each Insert, Update, Delete or Truncate becomes a [`RowChange`]: the
//! table and the images of the row the WAL carried before and after it.
//! Which columns changed, which route values the row had, and the new values
//! a patch may use are all derived from those images here, and from nothing
//! else: no comparison with what views happen to hold, which can be older or
//! newer than the change. What the WAL does not say counts as changed (or, for
//! a route value, as unknown, which sends the change to every view of the
//! graph); that costs evaluations, never exactness.
//!
//! The images depend on the table's replica identity. With `FULL` an update
//! or delete carries the whole old row. Otherwise a delete carries only the
//! old key (`K`; the other columns arrive as NULL and mean nothing), and an
//! update carries no old row unless its key changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use postgres_types::{FromSql, Type};

use super::pgoutput::{Datum, Message, Relation};
use super::values::SqlValue;
use super::wal::Tracking;
use crate::engine::{row_id, Change, Fields, Value};

/// A column value as the listener sees it.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Known(Value),
    /// Not in the image, or a value we cannot decode: counts as changed.
    Unknown,
    /// An unchanged TOASTed value: never counts as changed.
    Unchanged,
}

fn cell(d: &Datum, oid: u32) -> Cell {
    match d {
        Datum::Null => Cell::Known(Value::Null),
        Datum::Unchanged => Cell::Unchanged,
        Datum::Text(_) => Cell::Unknown,
        Datum::Binary(b) => match Type::from_oid(oid) {
            Some(ty) => SqlValue::from_sql(&ty, b)
                .map(|v| Cell::Known(v.0))
                .unwrap_or(Cell::Unknown),
            None => Cell::Unknown,
        },
    }
}

/// One image of a row as the WAL carried it.
#[derive(Clone, Copy)]
struct Image<'a> {
    rel: &'a Relation,
    tuple: &'a [Datum],
    /// Only the replica identity's key columns are meaningful (`K`).
    key_only: bool,
}

impl<'a> Image<'a> {
    fn new(rel: &'a Relation, tuple: &'a [Datum], tag: u8) -> Self {
        Image {
            rel,
            tuple,
            key_only: tag == b'K',
        }
    }

    fn cell(&self, col: &str) -> Cell {
        let Some(i) = self.rel.columns.iter().position(|c| c.name == col) else {
            return Cell::Unknown;
        };
        let column = &self.rel.columns[i];
        if self.key_only && !column.key {
            return Cell::Unknown;
        }
        self.tuple
            .get(i)
            .map_or(Cell::Unknown, |d| cell(d, column.type_oid))
    }

    /// The row id, from the configured key columns (else the table's
    /// replica identity key); `None` when a key value is not in the image.
    fn id(&self, tracking: &Tracking, table: &str) -> Option<String> {
        let names: Vec<&str> = match tracking.keys.get(table).filter(|k| !k.is_empty()) {
            Some(k) => k.iter().map(String::as_str).collect(),
            None => self
                .rel
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.as_str())
                .collect(),
        };
        let mut parts = Vec::with_capacity(names.len());
        for n in names {
            match self.cell(n) {
                Cell::Known(v) => parts.push(v),
                _ => return None,
            }
        }
        (!parts.is_empty()).then(|| row_id(&parts))
    }
}

/// One row's change: the images the WAL carried before and after it.
struct RowChange<'a> {
    table: String,
    rel: &'a Relation,
    /// The row before: `None` for an insert, or for an update whose table's
    /// replica identity is not `FULL` and whose key did not change.
    old: Option<Image<'a>>,
    /// The row after: `None` for a delete.
    new: Option<Image<'a>>,
    /// An update (an insert has no old row either).
    update: bool,
}

impl RowChange<'_> {
    fn is_update(&self) -> bool {
        self.update
    }

    /// An update whose row id did not change.
    fn is_update_in_place(&self, tracking: &Tracking) -> bool {
        match (&self.old, &self.new) {
            (None, Some(_)) => true,
            (Some(o), Some(n)) => {
                !o.key_only && o.id(tracking, &self.table) == n.id(tracking, &self.table)
            }
            _ => false,
        }
    }

    /// The tracked columns an in-place update changed. Without the old row
    /// every tracked column counts as changed, except unchanged TOASTed ones.
    fn changed_columns(&self, tracking: &Tracking) -> BTreeSet<String> {
        let tracked = tracking.columns.get(&self.table).cloned().flatten();
        let Some(new) = self.new else {
            return BTreeSet::new();
        };
        self.rel
            .columns
            .iter()
            .filter(|c| tracked.as_ref().is_none_or(|t| t.contains(&c.name)))
            .filter(
                |c| match (self.old.map(|o| o.cell(&c.name)), new.cell(&c.name)) {
                    (_, Cell::Unchanged) => false,
                    (Some(Cell::Known(a)), Cell::Known(b)) => a != b,
                    _ => true,
                },
            )
            .map(|c| c.name.clone())
            .collect()
    }

    /// The values the route columns held before and after. A value neither
    /// image carries is unknown; for an update in place without the old
    /// row, a key column's old value is its new one.
    fn route_cells(&self, tracking: &Tracking) -> RouteCells {
        let mut out = RouteCells::default();
        let Some(cols) = tracking.routes.get(&self.table) else {
            return out;
        };
        let in_place_without_old = self.old.is_none() && self.new.is_some();
        for col in cols {
            let is_key = self.rel.columns.iter().any(|c| &c.name == col && c.key);
            let mut images: Vec<Option<Image>> = vec![self.old, self.new];
            if in_place_without_old && !is_key {
                images[0] = None;
                out.unknown.push(col.clone());
            } else if self.old.is_none() {
                images.remove(0);
            }
            for image in images.into_iter().flatten() {
                match image.cell(col) {
                    Cell::Known(v) => out.known.push((col.clone(), v.key_text())),
                    _ => out.unknown.push(col.clone()),
                }
            }
        }
        out
    }

    /// The workspace the row belonged to before and after, when both images
    /// it has name the same one (an update without the old row keeps its
    /// workspace only if the column is part of the key).
    fn workspace(&self, tracking: &Tracking) -> Option<String> {
        let col = tracking.workspace_column.as_deref()?;
        let is_key = self.rel.columns.iter().any(|c| c.name == col && c.key);
        if self.old.is_none() && self.new.is_some() && !is_key && self.is_update() {
            return None;
        }
        let mut seen: Option<String> = None;
        for image in [self.old, self.new].into_iter().flatten() {
            let Cell::Known(Value::String(w)) = image.cell(col) else {
                return None;
            };
            if seen.as_ref().is_some_and(|s| *s != w) {
                return None;
            }
            seen = Some(w);
        }
        seen
    }

    /// The order keys of the row before and after, per order-column list
    /// of the table's windowed graphs. A key is unknown when an image lacks
    /// one of its values, or when an update carries no old row.
    fn order_cells(&self, tracking: &Tracking) -> OrderCells {
        let Some(lists) = tracking.orders.get(&self.table) else {
            return Vec::new();
        };
        lists
            .iter()
            .map(|cols| {
                let known = !(self.update && self.old.is_none());
                let keys = known
                    .then(|| {
                        [self.old, self.new]
                            .into_iter()
                            .flatten()
                            .map(|image| {
                                cols.iter()
                                    .map(|c| match image.cell(c) {
                                        Cell::Known(v) => Some(v),
                                        _ => None,
                                    })
                                    .collect::<Option<Vec<Value>>>()
                            })
                            .collect::<Option<Vec<Vec<Value>>>>()
                    })
                    .flatten();
                (cols.join(","), keys)
            })
            .collect()
    }

    /// The new values of `columns`, when every one of them is known.
    fn new_values(&self, columns: &BTreeSet<String>) -> Option<Fields> {
        let new = self.new?;
        columns
            .iter()
            .map(|name| match new.cell(name) {
                Cell::Known(v) => Some((name.clone(), v)),
                _ => None,
            })
            .collect()
    }
}

/// What one transaction changed in one table.
#[derive(Default)]
struct TableChanges {
    /// Some change touched every column (insert, delete, truncate, new key).
    all: bool,
    columns: BTreeSet<String>,
    /// The row id while exactly one row changed.
    id: Option<String>,
    rows: usize,
    /// Route column -> values seen before and after, for the routed tables.
    route_values: BTreeMap<String, BTreeSet<String>>,
    /// Route columns with a value the WAL did not carry.
    route_unknown: BTreeSet<String>,
    /// The changed columns' new values, while exactly one row was updated.
    values: Option<Fields>,
    /// The workspace of every changed row.
    workspace: Workspace,
    /// Order columns (joined with `,`) -> the order keys of the changed
    /// rows, before and after; `None` once one was not in the WAL.
    order_keys: BTreeMap<String, Option<Vec<Vec<Value>>>>,
}

/// Order keys kept per table and transaction; past this many, a change
/// counts as touching every window.
const MAX_ORDER_KEYS: usize = 64;

/// One row change's order keys per order-column list (`None`: unknown).
type OrderCells = Vec<(String, Option<Vec<Vec<Value>>>)>;

/// The workspace of the rows a transaction changed in one table.
#[derive(Default, PartialEq)]
enum Workspace {
    /// No row yet.
    #[default]
    None,
    /// Every row so far, before and after, had this one.
    One(String),
    /// Rows of several workspaces, or a row whose workspace is unknown.
    Any,
}

impl Workspace {
    fn add(&mut self, seen: Option<String>) {
        *self = match (std::mem::take(self), seen) {
            (Workspace::None, Some(w)) => Workspace::One(w),
            (Workspace::One(a), Some(b)) if a == b => Workspace::One(a),
            _ => Workspace::Any,
        };
    }
}

/// The values of a table's route columns in one row change: known values,
/// and columns whose value was not in the WAL.
#[derive(Default)]
struct RouteCells {
    known: Vec<(String, String)>,
    unknown: Vec<String>,
}

/// The changes of one transaction, per table.
#[derive(Default)]
pub(super) struct TxChanges {
    /// The transaction id.
    pub(super) xid: u32,
    tables: HashMap<String, TableChanges>,
}

impl TxChanges {
    /// Changes of transaction `xid`.
    pub(super) fn new(xid: u32) -> Self {
        TxChanges {
            xid,
            tables: HashMap::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        table: &str,
        id: Option<String>,
        columns: Option<BTreeSet<String>>,
        routes: RouteCells,
        values: Option<Fields>,
        workspace: Option<String>,
        orders: OrderCells,
    ) {
        let e = self.tables.entry(table.to_owned()).or_default();
        e.workspace.add(workspace);
        for (name, keys) in orders {
            let slot = e.order_keys.entry(name).or_insert_with(|| Some(Vec::new()));
            *slot = match (slot.take(), keys) {
                (Some(mut held), Some(new)) if held.len() + new.len() <= MAX_ORDER_KEYS => {
                    held.extend(new);
                    Some(held)
                }
                _ => None,
            };
        }
        match columns {
            None => e.all = true,
            Some(c) => e.columns.extend(c),
        }
        e.rows += 1;
        e.id = if e.rows == 1 { id } else { None };
        e.values = if e.rows == 1 { values } else { None };
        for (col, v) in routes.known {
            e.route_values.entry(col).or_default().insert(v);
        }
        e.route_unknown.extend(routes.unknown);
    }

    /// Records one row change.
    fn record(&mut self, change: RowChange, tracking: &Tracking) {
        let routes = change.route_cells(tracking);
        let workspace = change.workspace(tracking);
        let orders = change.order_cells(tracking);
        if change.is_update_in_place(tracking) {
            let changed = change.changed_columns(tracking);
            if changed.is_empty() {
                return;
            }
            let id = change.new.and_then(|n| n.id(tracking, &change.table));
            let values = change.new_values(&changed);
            self.add(
                &change.table,
                id,
                Some(changed),
                routes,
                values,
                workspace,
                orders,
            );
            return;
        }
        // An insert, a delete or a new key: the row left one id and/or
        // took another, which concerns every column.
        let mut ids: Vec<Option<String>> = [change.old, change.new]
            .into_iter()
            .flatten()
            .map(|i| i.id(tracking, &change.table))
            .collect();
        ids.dedup();
        let mut routes = Some(routes);
        let mut orders = Some(orders);
        for id in ids {
            self.add(
                &change.table,
                id,
                None,
                routes.take().unwrap_or_default(),
                None,
                workspace.clone(),
                orders.take().unwrap_or_default(),
            );
        }
    }

    /// Records a pgoutput message of this transaction.
    pub(super) fn apply(
        &mut self,
        msg: &Message,
        relations: &HashMap<u32, Relation>,
        tracking: &Tracking,
    ) {
        let tracked = |rel: &u32| {
            let r = relations.get(rel)?;
            let name = r.qualified();
            tracking.columns.contains_key(&name).then_some((r, name))
        };
        let change = match msg {
            Message::Insert { rel, new } => tracked(rel).map(|(r, table)| RowChange {
                table,
                rel: r,
                old: None,
                new: Some(Image::new(r, new, b'N')),
                update: false,
            }),
            Message::Delete {
                rel,
                old: (tag, old),
            } => tracked(rel).map(|(r, table)| RowChange {
                table,
                rel: r,
                old: Some(Image::new(r, old, *tag)),
                new: None,
                update: false,
            }),
            Message::Update { rel, old, new } => tracked(rel).map(|(r, table)| RowChange {
                table,
                rel: r,
                old: old.as_ref().map(|(tag, t)| Image::new(r, t, *tag)),
                new: Some(Image::new(r, new, b'N')),
                update: true,
            }),
            Message::Truncate { rels } => {
                for rel in rels {
                    if let Some((_, table)) = tracked(rel) {
                        let mut routes = RouteCells::default();
                        if let Some(cols) = tracking.routes.get(&table) {
                            routes.unknown.extend(cols.iter().cloned());
                        }
                        // Every row left: order keys unknown.
                        let orders = tracking
                            .orders
                            .get(&table)
                            .into_iter()
                            .flatten()
                            .map(|cols| (cols.join(","), None))
                            .collect();
                        self.add(&table, None, None, routes, None, None, orders);
                    }
                }
                None
            }
            Message::Relation(_) | Message::Other(_) => None,
        };
        if let Some(c) = change {
            self.record(c, tracking);
        }
    }

    /// The engine's changes, one per table.
    pub(super) fn into_changes(self) -> Vec<Change> {
        self.tables
            .into_iter()
            .map(|(table, mut t)| {
                for col in &t.route_unknown {
                    t.route_values.remove(col);
                }
                Change {
                    table,
                    id: t.id.unwrap_or_default(),
                    columns: if t.all {
                        Vec::new()
                    } else {
                        t.columns.into_iter().collect()
                    },
                    route_values: t.route_values,
                    values: t.values,
                    workspace: match t.workspace {
                        Workspace::One(w) => Some(w),
                        _ => None,
                    },
                    order_keys: t
                        .order_keys
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, v?)))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::Column;
    use super::*;

    fn rel() -> Relation {
        let col = |name: &str, key: bool| Column {
            name: name.into(),
            key,
            type_oid: Type::INT8.oid(),
        };
        Relation {
            id: 1,
            schema: "public".into(),
            name: "tasks".into(),
            replica_identity: b'd',
            columns: vec![
                col("id", true),
                col("project_id", false),
                col("title", false),
            ],
        }
    }

    fn int(i: i64) -> Datum {
        Datum::Binary(i.to_be_bytes().to_vec().into())
    }

    fn tracking() -> Tracking {
        let mut t = Tracking::default();
        t.columns.insert("tasks".into(), None);
        t.routes
            .insert("tasks".into(), BTreeSet::from(["project_id".into()]));
        t.orders
            .insert("tasks".into(), vec![vec!["project_id".into(), "id".into()]]);
        t
    }

    fn changes(msgs: &[Message]) -> Vec<Change> {
        let rels = HashMap::from([(1, rel())]);
        let mut tx = TxChanges::new(1);
        for m in msgs {
            tx.apply(m, &rels, &tracking());
        }
        tx.into_changes()
    }

    #[test]
    fn order_keys_come_from_whole_images_only() {
        let key = |p: i64, id: i64| vec![Value::Int(p), Value::Int(id)];
        // An insert and a full-image update: every key before and after.
        let c = changes(&[
            Message::Insert {
                rel: 1,
                new: vec![int(1), int(10), int(0)],
            },
            Message::Update {
                rel: 1,
                old: Some((b'O', vec![int(2), int(20), int(0)])),
                new: vec![int(2), int(30), int(0)],
            },
        ]);
        assert_eq!(
            c[0].order_keys["project_id,id"],
            vec![key(10, 1), key(20, 2), key(30, 2)]
        );
        // An update without the old row, or a key-only delete: unknown.
        for m in [
            Message::Update {
                rel: 1,
                old: None,
                new: vec![int(2), int(30), int(1)],
            },
            Message::Delete {
                rel: 1,
                old: (b'K', vec![int(7), Datum::Null, Datum::Null]),
            },
        ] {
            let c = changes(&[m]);
            assert!(c[0].order_keys.is_empty(), "{:?}", c[0].order_keys);
        }
    }

    #[test]
    fn a_delete_carrying_only_the_key_leaves_route_values_unknown() {
        // Default replica identity: the old tuple is the key, other columns NULL.
        let c = changes(&[Message::Delete {
            rel: 1,
            old: (b'K', vec![int(7), Datum::Null, Datum::Null]),
        }]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, "7");
        assert!(
            !c[0].route_values.contains_key("project_id"),
            "unknown, so every view of the graph is affected: {:?}",
            c[0].route_values
        );
        // With the whole old row the value is known.
        let c = changes(&[Message::Delete {
            rel: 1,
            old: (b'O', vec![int(7), int(3), int(0)]),
        }]);
        assert_eq!(
            c[0].route_values["project_id"],
            BTreeSet::from(["3".into()])
        );
    }

    #[test]
    fn an_update_without_the_old_row_changes_every_column_it_carries() {
        let c = changes(&[Message::Update {
            rel: 1,
            old: None,
            new: vec![int(7), int(3), Datum::Unchanged],
        }]);
        assert_eq!(c[0].columns, vec!["id".to_string(), "project_id".into()]);
        assert!(!c[0].route_values.contains_key("project_id"));
    }

    #[test]
    fn a_new_key_reports_both_ids_and_leaves_the_old_route_value_unknown() {
        let c = changes(&[Message::Update {
            rel: 1,
            old: Some((b'K', vec![int(7), Datum::Null, Datum::Null])),
            new: vec![int(8), int(3), int(0)],
        }]);
        assert_eq!(c[0].id, "", "two rows");
        assert!(c[0].columns.is_empty(), "every column");
        assert!(!c[0].route_values.contains_key("project_id"));
    }
}
