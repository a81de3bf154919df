//! Routing: which live views a batch of changes can touch.
//!
//! A change names a table, maybe a row, the columns that changed, the values
//! routed columns held before and after, the new values of a single-row
//! update, and maybe the workspace its rows belong to. The registry says
//! which graphs read those columns; of each graph, a route narrows the views
//! to those whose param matches a route value, a workspace to that
//! workspace's views, a change the graph can patch goes only to the
//! views holding the row (the store knows them), and a change of a windowed
//! graph's rows goes only to the windows whose last read covered the rows'
//! order keys. Scheduling what it finds
//! is `invalidation.rs`'s job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::batch::ChangeBatch;
use super::in_flight::InFlight;
use super::index::Views;
use super::registry::Registry;
use super::result::RowKey;
use super::schedule::Patch;
use super::stats::Stats;
use super::view::Store;
use super::view::View;

/// The live views any change in `batches` can touch, each once: those to
/// evaluate, and those that only need row values patched in. A graph with a
/// route on the changed table and known values for its column contributes
/// only the views routed to those values; otherwise all its views. A change
/// the graph can patch (see `GraphDef::can_patch`) goes, as a patch, to the
/// views holding its row, which the store knows.
pub(crate) type Affected = (Vec<Arc<View>>, Vec<(Arc<View>, Vec<Patch>)>);

/// What the router reads: the registry, the views and the rows they hold,
/// and the views evaluating now. Nothing else of the engine.
pub(crate) struct Reach<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) views: &'a std::sync::Mutex<Views>,
    pub(crate) store: &'a std::sync::Mutex<Store>,
    pub(crate) in_flight: &'a InFlight,
    pub(crate) stats: &'a Stats,
}

pub(crate) fn affected(inner: &Reach<'_>, batches: &[ChangeBatch]) -> Affected {
    for b in batches {
        inner.stats.changes.add(b.changes.len() as u64);
    }
    let views = inner.views.lock().unwrap_or_else(|e| e.into_inner());
    if batches.iter().any(|b| b.everything) {
        return (views.all().cloned().collect(), Vec::new());
    }
    let mut full: HashMap<*const View, Arc<View>> = HashMap::new();
    let mut patched: HashMap<*const View, (Arc<View>, Vec<Patch>)> = HashMap::new();
    // Graphs all of whose views (in one workspace, or in all: `None`) are
    // already taken.
    let mut whole: HashSet<(&Arc<str>, Option<&str>)> = HashSet::new();
    for (c, xid) in batches
        .iter()
        .flat_map(|b| b.changes.iter().map(|c| (c, b.xid)))
    {
        for g in inner.registry.graphs_for(c) {
            if whole.contains(&(g, None)) || whole.contains(&(g, c.workspace.as_deref())) {
                continue;
            }
            let Some(def) = inner.registry.graph(g) else {
                continue;
            };
            let ws = c.workspace.as_deref();
            let in_scope = |v: &Arc<View>| ws.is_none_or(|w| &*v.key.scope.workspace_id == w);
            if def.can_patch(c) {
                // Only the views holding the row: the store knows them.
                let key = RowKey::new(&c.table, &c.id);
                let values = Arc::new(c.values.clone().unwrap_or_default());
                let mut holders = inner
                    .store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .holders(&key);
                holders.extend(inner.in_flight.of(g));
                for v in holders.iter().filter(|v| v.key.graph == *g && in_scope(v)) {
                    patched
                        .entry(Arc::as_ptr(v))
                        .or_insert_with(|| (v.clone(), Vec::new()))
                        .1
                        .push(Patch {
                            key: key.clone(),
                            values: values.clone(),
                            xid,
                        });
                }
                continue;
            }
            let routed = def
                .routes
                .iter()
                .filter(|r| r.table == c.table)
                .find_map(|r| c.route_values.get(&r.column).map(|vals| (r, vals)));
            // A windowed graph's change of its own table with known order
            // keys reaches only the windows whose last read covered one of
            // them, and any window evaluating now (its reach is not known).
            let keys = def
                .window
                .as_ref()
                .filter(|_| def.table.as_deref() == Some(c.table.as_str()))
                .and_then(|w| c.order_keys.get(&w.order.join(",")));
            let evaluating = keys.map(|_| inner.in_flight.of(g)).unwrap_or_default();
            let reached = |v: &Arc<View>| match keys {
                Some(k) => evaluating.iter().any(|e| Arc::ptr_eq(e, v)) || v.reached_by(k),
                None => true,
            };
            let candidates: Vec<&Arc<View>> = match routed {
                Some((route, values)) => values
                    .iter()
                    .flat_map(|value| views.by_route(g, &route.param, value, ws))
                    .collect(),
                None => {
                    if keys.is_none() {
                        whole.insert((g, ws));
                    }
                    views.by_graph(g, ws).collect()
                }
            };
            for v in candidates.into_iter().filter(|v| reached(v)) {
                full.entry(Arc::as_ptr(v)).or_insert_with(|| v.clone());
            }
        }
    }
    // A view evaluated anyway needs no patches.
    let patched = patched
        .into_iter()
        .filter(|(k, _)| !full.contains_key(k))
        .map(|(_, v)| v)
        .collect();
    (full.into_values().collect(), patched)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::registry::Change;
    use crate::engine::testing::{graph, view_in};

    /// The engine's parts the router reads, with `views` live.
    struct Parts {
        registry: Registry,
        views: Mutex<Views>,
        store: Mutex<Store>,
        in_flight: InFlight,
        stats: Stats,
    }

    impl Parts {
        fn new(views: &[&Arc<View>]) -> Parts {
            let mut registry = Registry::new();
            registry.register(graph("tasks", "tasks")).unwrap();
            registry.register(graph("users", "users")).unwrap();
            let mut index = Views::default();
            for v in views {
                index.insert((*v).clone());
            }
            Parts {
                registry,
                views: Mutex::new(index),
                store: Mutex::default(),
                in_flight: InFlight::default(),
                stats: Stats::default(),
            }
        }

        /// The ids of the views `changes` reach (full evaluations).
        fn reached(&self, batch: ChangeBatch) -> Vec<String> {
            let reach = Reach {
                registry: &self.registry,
                views: &self.views,
                store: &self.store,
                in_flight: &self.in_flight,
                stats: &self.stats,
            };
            let (full, patched) = affected(&reach, &[batch]);
            assert!(patched.is_empty());
            let mut ids: Vec<String> = full
                .iter()
                .map(|v| format!("{}@{}", v.key.graph, v.key.scope.workspace_id))
                .collect();
            ids.sort();
            ids
        }
    }

    fn batch(changes: Vec<Change>) -> ChangeBatch {
        ChangeBatch::new(changes, None)
    }

    #[test]
    fn a_change_reaches_the_views_of_the_graphs_reading_its_table() {
        let (t1, t2, u) = (
            view_in("tasks", "w1"),
            view_in("tasks", "w2"),
            view_in("users", "w1"),
        );
        let parts = Parts::new(&[&t1, &t2, &u]);
        assert_eq!(
            parts.reached(batch(vec![Change::row("tasks", "1", ["title"])])),
            ["tasks@w1", "tasks@w2"]
        );
        assert!(parts
            .reached(batch(vec![Change::table("projects")]))
            .is_empty());
        assert_eq!(parts.stats.changes.get(), 2);
    }

    #[test]
    fn a_change_known_to_one_workspace_reaches_only_its_views() {
        let (t1, t2) = (view_in("tasks", "w1"), view_in("tasks", "w2"));
        let parts = Parts::new(&[&t1, &t2]);
        let mut c = Change::row("tasks", "1", ["title"]);
        c.workspace = Some("w2".into());
        assert_eq!(parts.reached(batch(vec![c])), ["tasks@w2"]);
    }

    #[test]
    fn a_batch_after_an_outage_reaches_every_view() {
        let (t, u) = (view_in("tasks", "w1"), view_in("users", "w2"));
        let parts = Parts::new(&[&t, &u]);
        let mut b = batch(Vec::new());
        b.everything = true;
        assert_eq!(parts.reached(b), ["tasks@w1", "users@w2"]);
    }

    #[test]
    fn a_view_is_reached_once_however_many_changes_touch_it() {
        let t = view_in("tasks", "w1");
        let parts = Parts::new(&[&t]);
        let changes = (0..5)
            .map(|i| Change::row("tasks", &i.to_string(), ["title"]))
            .collect();
        assert_eq!(parts.reached(batch(changes)), ["tasks@w1"]);
    }
}
