//! The views evaluating right now, which changes must reach whatever the
//! router would otherwise decide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::view::View;

/// Views whose evaluation is running, per graph. An evaluation that read
/// the database before a patchable change became visible may bring in the
/// changed row with its old values; such views get the patch too, applied
/// after their evaluation. A window evaluating now may read past the reach
/// of its last evaluation, so changes reach it whatever their order keys.
/// A view can be marked by several holders at once (a round, and a
/// subscribe waiting for its first result), so each mark is counted: one
/// holder letting go must not unmark a view another still evaluates.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<ByGraph>);

/// Graph -> (view address -> (view, marks)).
type ByGraph = HashMap<Arc<str>, HashMap<usize, (Arc<View>, usize)>>;

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByGraph> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `view` as evaluating until the guard drops (its result
    /// applied, or the evaluation abandoned).
    pub(crate) fn enter<'a>(&'a self, view: &'a Arc<View>) -> Evaluating<'a> {
        self.lock()
            .entry(view.key.graph.clone())
            .or_default()
            .entry(Arc::as_ptr(view) as usize)
            .or_insert_with(|| (view.clone(), 0))
            .1 += 1;
        Evaluating { set: self, view }
    }

    fn leave(&self, view: &Arc<View>) {
        let mut map = self.lock();
        if let Some(views) = map.get_mut(&view.key.graph) {
            let at = Arc::as_ptr(view) as usize;
            if let Some(entry) = views.get_mut(&at) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    views.remove(&at);
                }
            }
            if views.is_empty() {
                map.remove(&view.key.graph);
            }
        }
    }

    /// The views of `graph` evaluating now.
    pub(crate) fn of(&self, graph: &str) -> Vec<Arc<View>> {
        self.lock()
            .get(graph)
            .map(|v| v.values().map(|(view, _)| view.clone()).collect())
            .unwrap_or_default()
    }
}

/// A view marked as evaluating; unmarks it when dropped.
pub(crate) struct Evaluating<'a> {
    set: &'a InFlight,
    view: &'a Arc<View>,
}

impl Drop for Evaluating<'_> {
    fn drop(&mut self) {
        self.set.leave(self.view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::view;

    #[test]
    fn a_view_stays_in_flight_until_every_holder_lets_go() {
        let set = InFlight::default();
        let v = view("g");
        let round = set.enter(&v);
        let subscribe = set.enter(&v);
        assert_eq!(set.of("g").len(), 1, "one view, however many holders");
        drop(subscribe);
        assert_eq!(
            set.of("g").len(),
            1,
            "the round still evaluates it after the subscribe let go"
        );
        drop(round);
        assert!(set.of("g").is_empty());
    }

    #[test]
    fn views_in_flight_are_told_apart_by_graph() {
        let set = InFlight::default();
        let (a, b) = (view("a"), view("b"));
        let _a = set.enter(&a);
        let _b = set.enter(&b);
        assert!(Arc::ptr_eq(&set.of("a")[0], &a));
        assert!(Arc::ptr_eq(&set.of("b")[0], &b));
        assert!(set.of("c").is_empty());
    }
}
