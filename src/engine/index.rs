//! The live views, indexed the ways the router looks them up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::view::{View, ViewKey};

/// (graph, route param, value as key text): the views routed there.
type RouteKey = (Arc<str>, String, String);

/// View keys by workspace.
type ByWorkspace = HashMap<Arc<str>, HashSet<ViewKey>>;

/// The live views, indexed the ways invalidation looks them up: by graph
/// and by route value, each split by workspace, so a change known to belong
/// to one workspace never even looks at another's views.
#[derive(Default)]
pub(crate) struct Views {
    by_key: HashMap<ViewKey, Arc<View>>,
    graphs: HashMap<Arc<str>, ByWorkspace>,
    routed: HashMap<RouteKey, ByWorkspace>,
}

/// The view keys of `index` in `workspace`, or in every workspace.
fn in_workspace<'a>(
    index: Option<&'a ByWorkspace>,
    workspace: Option<&'a str>,
) -> Box<dyn Iterator<Item = &'a ViewKey> + 'a> {
    let Some(index) = index else {
        return Box::new(std::iter::empty());
    };
    match workspace {
        Some(w) => Box::new(index.get(w).into_iter().flatten()),
        None => Box::new(index.values().flatten()),
    }
}

fn index_remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, ByWorkspace>, k: &K, view: &ViewKey) {
    if let Some(by_ws) = map.get_mut(k) {
        if let Some(set) = by_ws.get_mut(&view.scope.workspace_id) {
            set.remove(view);
            if set.is_empty() {
                by_ws.remove(&view.scope.workspace_id);
            }
        }
        if by_ws.is_empty() {
            map.remove(k);
        }
    }
}

impl Views {
    /// The views of `graph`, in `workspace` when given.
    pub(crate) fn by_graph<'a>(
        &'a self,
        graph: &str,
        workspace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<View>> + 'a {
        in_workspace(self.graphs.get(graph), workspace).filter_map(|k| self.by_key.get(k))
    }

    /// The view of `key`.
    pub(crate) fn get(&self, key: &ViewKey) -> Option<&Arc<View>> {
        self.by_key.get(key)
    }

    /// Every live view.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<View>> {
        self.by_key.values()
    }

    /// The views of `graph` whose route `param` has `value`, in `workspace`
    /// when given.
    pub(crate) fn by_route<'a>(
        &'a self,
        graph: &Arc<str>,
        param: &str,
        value: &str,
        workspace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<View>> + 'a {
        let index = self
            .routed
            .get(&(graph.clone(), param.to_owned(), value.to_owned()));
        in_workspace(index, workspace).filter_map(|k| self.by_key.get(k))
    }

    fn route_keys(view: &View) -> Vec<RouteKey> {
        let mut keys: Vec<RouteKey> = view
            .graph
            .routes
            .iter()
            .map(|r| {
                (
                    view.key.graph.clone(),
                    r.param.clone(),
                    view.route_value(&r.param),
                )
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    pub(crate) fn insert(&mut self, view: Arc<View>) {
        let ws = view.key.scope.workspace_id.clone();
        self.graphs
            .entry(view.key.graph.clone())
            .or_default()
            .entry(ws.clone())
            .or_default()
            .insert(view.key.clone());
        for rk in Self::route_keys(&view) {
            self.routed
                .entry(rk)
                .or_default()
                .entry(ws.clone())
                .or_default()
                .insert(view.key.clone());
        }
        self.by_key.insert(view.key.clone(), view);
    }

    pub(crate) fn remove(&mut self, view: &Arc<View>) {
        if self
            .by_key
            .get(&view.key)
            .is_some_and(|v| Arc::ptr_eq(v, view))
        {
            self.by_key.remove(&view.key);
            index_remove(&mut self.graphs, &view.key.graph, &view.key);
            for rk in Self::route_keys(view) {
                index_remove(&mut self.routed, &rk, &view.key);
            }
        }
    }
}
