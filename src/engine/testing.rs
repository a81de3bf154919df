//! Stand-ins the engine's unit tests share: views of a graph that returns
//! nothing, and frames of them.

use std::sync::{Arc, OnceLock};

use super::frame::{Frame, FrameBody, Snapshot, ViewDiff};
use super::identity::Scope;
use super::params::Params;
use super::registry::{GraphDef, TableDep};
use super::result::GraphResult;
use super::view::{View, ViewKey};

/// A view of an empty graph named `graph`, in workspace `w`.
pub(crate) fn view(graph: &str) -> Arc<View> {
    view_in(graph, "w")
}

/// A graph named `graph` that reads every column of `table` and returns
/// nothing.
pub(crate) fn graph(name: &str, table: &str) -> GraphDef {
    let mut g = GraphDef::new(name, |_s: Scope, _p: Params| async {
        Ok(GraphResult::new())
    });
    g.deps = vec![TableDep::all(table)];
    g
}

/// A view of an empty graph named `graph`, in `workspace`.
pub(crate) fn view_in(graph_name: &str, workspace: &str) -> Arc<View> {
    let key = ViewKey {
        graph: graph_name.into(),
        params: String::new(),
        scope: Scope {
            workspace_id: workspace.into(),
            user_id: None,
            role: None,
        },
    };
    View::new(key, Arc::new(graph(graph_name, "t")), Params::default())
}

/// An empty diff of `view` to `version`.
pub(crate) fn diff(view: &View, version: u64) -> Arc<Frame> {
    frame(view, version, FrameBody::Diff(ViewDiff::default()))
}

/// An empty snapshot of `view` at `version`.
pub(crate) fn snapshot(view: &View, version: u64) -> Arc<Frame> {
    let body = FrameBody::Snapshot(Snapshot {
        graph: view.key.graph.clone(),
        params_hash: view.params_hash.clone(),
        refs: Arc::default(),
        rows: Vec::new(),
        total: None,
        window: None,
    });
    frame(view, version, body)
}

fn frame(view: &View, version: u64, body: FrameBody) -> Arc<Frame> {
    Arc::new(Frame {
        view_id: view.id.clone(),
        epoch: 1,
        version,
        prev_version: version.saturating_sub(1),
        prev_epoch: 0,
        body,
        encoded: OnceLock::new(),
    })
}
