//! Graphs and mutations by name, and the indexes invalidation needs:
//! table -> graphs that read it (with the columns they care about), and the
//! representation table (table -> every column any graph reads).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::error::EvalError;
use super::identity::Scope;
use super::params::{ParamSchema, Params};
use super::result::GraphResult;
use super::value::{Fields, Value};

/// Runs a graph's query for one scope and parameter set.
pub trait Factory: Send + Sync + 'static {
    /// Evaluates the graph.
    fn evaluate(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<GraphResult, EvalError>>;

    /// Evaluates several views of the graph at once; the results are in
    /// `items` order. Invalidation hands over every view of the graph that
    /// is due when an evaluation slot frees up. The default evaluates each
    /// on its own, concurrently; a factory that can answer many parameter
    /// sets with one query (SQL graphs do) overrides it.
    fn evaluate_many(
        &self,
        items: Vec<(Scope, Params)>,
    ) -> BoxFuture<'static, Vec<Result<GraphResult, EvalError>>> {
        let each: Vec<_> = items
            .into_iter()
            .map(|(s, p)| self.evaluate(s, p))
            .collect();
        Box::pin(futures_util::future::join_all(each))
    }
}

impl<F, Fut> Factory for F
where
    F: Fn(Scope, Params) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<GraphResult, EvalError>> + Send + 'static,
{
    fn evaluate(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<GraphResult, EvalError>> {
        Box::pin(self(scope, params))
    }
}

/// A table a graph reads and the columns whose changes concern it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDep {
    /// The table.
    pub table: String,
    /// `None`: every column.
    pub columns: Option<BTreeSet<String>>,
}

impl TableDep {
    /// A dependency on some columns of `table`.
    pub fn columns<S: Into<String>>(table: &str, cols: impl IntoIterator<Item = S>) -> Self {
        TableDep {
            table: table.to_owned(),
            columns: Some(cols.into_iter().map(Into::into).collect()),
        }
    }
    /// A dependency on every column of `table`.
    pub fn all(table: &str) -> Self {
        TableDep {
            table: table.to_owned(),
            columns: None,
        }
    }
}

/// A promise about a graph's query that lets invalidation skip views: every
/// row of `table` the query can use has `column` equal to the view's
/// `param` (for example `WHERE t.project_id = :project_id`). A change to a
/// row whose `column` held value `v` before or after it then affects only
/// the views whose `param` is `v`. `param` names a required param of the
/// graph, or `workspace_id` / `user_id` for the caller's scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The table.
    pub table: String,
    /// Its column.
    pub column: String,
    /// The param (or scope name) the column equals.
    pub param: String,
}

/// The scope name a route may use for the view's workspace.
pub const SCOPE_WORKSPACE: &str = "workspace_id";
/// The scope name a route may use for the view's user (per-user graphs).
pub const SCOPE_USER: &str = "user_id";

pub use super::value::FieldShape;

/// A named, parameterized graph.
#[derive(Clone)]
pub struct GraphDef {
    /// The name clients subscribe by.
    pub name: String,
    /// Shown by Describe.
    pub description: String,
    /// Accepted parameters.
    pub params: ParamSchema,
    /// Tables and columns whose changes re-evaluate the graph's views.
    pub deps: Vec<TableDep>,
    /// Permissions needed to subscribe.
    pub permissions: Vec<String>,
    /// One view per user rather than per workspace.
    pub per_user: bool,
    /// The table of the top-level refs (informational).
    pub table: Option<String>,
    /// Nested ref names and their tables (informational).
    pub nested: BTreeMap<String, String>,
    /// The fields of the rows, when known (for Describe and codegen).
    pub fields: Vec<FieldShape>,
    /// Routes narrowing which views of the graph a change affects.
    pub routes: Vec<Route>,
    /// table -> columns that the graph's rows carry as plain fields of the
    /// same name and that decide nothing else (no filter, order, join or
    /// computed field uses them). A single-row update touching only these
    /// columns is applied to the views holding the row from the change's
    /// new values, without running the query.
    pub patchable: BTreeMap<String, BTreeSet<String>>,
    /// For graphs kept live through windows: their total order.
    pub window: Option<super::window::WindowOrder>,
    /// Produces the result.
    pub factory: Arc<dyn Factory>,
}

impl GraphDef {
    /// A graph with no params, deps or permissions yet.
    pub fn new(name: &str, factory: impl Factory) -> Self {
        GraphDef {
            name: name.to_owned(),
            description: String::new(),
            params: ParamSchema::new(),
            deps: Vec::new(),
            permissions: Vec::new(),
            per_user: false,
            table: None,
            nested: BTreeMap::new(),
            fields: Vec::new(),
            routes: Vec::new(),
            patchable: BTreeMap::new(),
            window: None,
            factory: Arc::new(factory),
        }
    }
}

/// A data change: a row of a table, and the columns that changed (empty: any).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Change {
    /// The table.
    pub table: String,
    /// The row id, when known.
    pub id: String,
    /// Changed columns; empty means any.
    pub columns: Vec<String>,
    /// For columns graphs route on (see [`Route`]): every value, as key
    /// text, the changed rows held in the column before or after the
    /// change. A column missing here is unknown, and every view of a graph
    /// routed on it is affected.
    pub route_values: BTreeMap<String, BTreeSet<String>>,
    /// For a single-row update: the new values of every changed column,
    /// when the change source knows them (see [`GraphDef::patchable`]).
    pub values: Option<Fields>,
    /// The workspace every changed row belongs to, when the source knows
    /// it: the change then reaches only that workspace's views. A view of
    /// one workspace reads only its own rows of a table with a workspace
    /// column (row-level security enforces it), so no other can be touched.
    /// `None`: any workspace.
    pub workspace: Option<String>,
    /// For windowed graphs' order columns (the names joined with `,`): the
    /// order keys of the changed rows, before and after. Missing: unknown,
    /// and every window of such a graph is affected.
    pub order_keys: BTreeMap<String, Vec<Vec<Value>>>,
}

impl Change {
    /// A change to any column of `table`.
    pub fn table(table: &str) -> Self {
        Change {
            table: table.to_owned(),
            ..Change::default()
        }
    }
    /// A change to some columns of one row.
    pub fn row<S: Into<String>>(
        table: &str,
        id: &str,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        Change {
            table: table.to_owned(),
            id: id.to_owned(),
            columns: columns.into_iter().map(Into::into).collect(),
            route_values: BTreeMap::new(),
            values: None,
            workspace: None,
            order_keys: BTreeMap::new(),
        }
    }

    /// The same change, limited to one workspace's views.
    pub fn in_workspace(mut self, workspace: &str) -> Self {
        self.workspace = Some(workspace.to_owned());
        self
    }
}

/// What a mutation returns.
#[derive(Clone, Debug, Default)]
pub struct MutationOutput {
    /// Data for the caller (for example the new row's id).
    pub data: Fields,
    /// Changes to feed into invalidation.
    pub changes: Vec<Change>,
}

/// Runs a mutation's writes.
pub trait MutationHandler: Send + Sync + 'static {
    /// Performs the mutation for `scope` (which carries the user).
    fn run(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<MutationOutput, EvalError>>;
}

impl<F, Fut> MutationHandler for F
where
    F: Fn(Scope, Params) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<MutationOutput, EvalError>> + Send + 'static,
{
    fn run(
        &self,
        scope: Scope,
        params: Params,
    ) -> BoxFuture<'static, Result<MutationOutput, EvalError>> {
        Box::pin(self(scope, params))
    }
}

/// A named write.
#[derive(Clone)]
pub struct MutationDef {
    /// The name clients call it by.
    pub name: String,
    /// Shown by Describe.
    pub description: String,
    /// Accepted parameters.
    pub params: ParamSchema,
    /// Permissions needed to call it.
    pub permissions: Vec<String>,
    /// Tables it declares it changes (informational; the handler's output counts).
    pub changes: Vec<TableDep>,
    /// The fields of the row it returns, when known (for Describe and codegen).
    pub fields: Vec<FieldShape>,
    /// Performs the writes.
    pub handler: Arc<dyn MutationHandler>,
}

impl MutationDef {
    /// A mutation with no params or permissions yet.
    pub fn new(name: &str, handler: impl MutationHandler) -> Self {
        MutationDef {
            name: name.to_owned(),
            description: String::new(),
            params: ParamSchema::new(),
            permissions: Vec::new(),
            changes: Vec::new(),
            fields: Vec::new(),
            handler: Arc::new(handler),
        }
    }
}

/// A graph reading a table, with the columns it reads (`None`: all).
type TableReader = (Arc<str>, Option<BTreeSet<String>>);

/// All graphs and mutations, with the indexes built once at registration.
#[derive(Default)]
pub struct Registry {
    graphs: BTreeMap<String, Arc<GraphDef>>,
    mutations: BTreeMap<String, Arc<MutationDef>>,
    /// table -> (graph, columns or None for all)
    by_table: HashMap<String, Vec<TableReader>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a graph. Names must be unique.
    pub fn register(&mut self, graph: GraphDef) -> Result<(), String> {
        if self.graphs.contains_key(&graph.name) {
            return Err(format!("graph `{}` is registered twice", graph.name));
        }
        if graph.deps.is_empty() {
            return Err(format!(
                "graph `{}` declares no deps, so no change would ever update it",
                graph.name
            ));
        }
        for r in &graph.routes {
            check_route(&graph, r)?;
        }
        check_patchable(&graph)?;
        let name: Arc<str> = graph.name.as_str().into();
        for dep in &graph.deps {
            self.by_table
                .entry(dep.table.clone())
                .or_default()
                .push((name.clone(), dep.columns.clone()));
        }
        self.graphs.insert(graph.name.clone(), Arc::new(graph));
        Ok(())
    }

    /// Adds a mutation. Names must be unique.
    pub fn register_mutation(&mut self, m: MutationDef) -> Result<(), String> {
        if self.mutations.contains_key(&m.name) {
            return Err(format!("mutation `{}` is registered twice", m.name));
        }
        self.mutations.insert(m.name.clone(), Arc::new(m));
        Ok(())
    }

    /// A graph by name.
    pub fn graph(&self, name: &str) -> Option<&Arc<GraphDef>> {
        self.graphs.get(name)
    }
    /// A mutation by name.
    pub fn mutation(&self, name: &str) -> Option<&Arc<MutationDef>> {
        self.mutations.get(name)
    }
    /// All graphs, by name.
    pub fn graphs(&self) -> impl Iterator<Item = &Arc<GraphDef>> {
        self.graphs.values()
    }
    /// All mutations, by name.
    pub fn mutations(&self) -> impl Iterator<Item = &Arc<MutationDef>> {
        self.mutations.values()
    }

    /// The graphs a change concerns: those that read its table and either
    /// read every column, or read one of the changed columns, or the change
    /// names no columns.
    pub fn graphs_for<'a>(&'a self, change: &'a Change) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        self.by_table
            .get(&change.table)
            .into_iter()
            .flatten()
            .filter_map(move |(g, cols)| {
                let hit = match cols {
                    None => true,
                    Some(_) if change.columns.is_empty() => true,
                    Some(cols) => change.columns.iter().any(|c| cols.contains(c)),
                };
                hit.then_some(g)
            })
    }

    /// The columns any graph routes `table` on; a change source reports
    /// their values in [`Change::route_values`].
    pub fn route_columns(&self, table: &str) -> BTreeSet<String> {
        self.graphs
            .values()
            .flat_map(|g| g.routes.iter())
            .filter(|r| r.table == table)
            .map(|r| r.column.clone())
            .collect()
    }

    /// Every table any graph reads, with the union of columns (`None`: all),
    /// and the graphs reading it.
    pub fn representation(&self) -> BTreeMap<String, (Option<BTreeSet<String>>, Vec<String>)> {
        let mut out: BTreeMap<String, (Option<BTreeSet<String>>, Vec<String>)> = BTreeMap::new();
        for (table, users) in &self.by_table {
            let mut cols: Option<BTreeSet<String>> = Some(BTreeSet::new());
            let mut graphs = Vec::new();
            for (g, c) in users {
                graphs.push(g.to_string());
                cols = match (cols, c) {
                    (Some(mut acc), Some(c)) => {
                        acc.extend(c.iter().cloned());
                        Some(acc)
                    }
                    _ => None,
                };
            }
            graphs.sort();
            graphs.dedup();
            out.insert(table.clone(), (cols, graphs));
        }
        out
    }
}

/// Patchable columns must belong to a table the graph reads, and cannot be
/// route columns (those decide which views hold a row).
fn check_patchable(graph: &GraphDef) -> Result<(), String> {
    for (table, cols) in &graph.patchable {
        if !graph.deps.iter().any(|d| &d.table == table) {
            return Err(format!(
                "graph `{}` patches table `{table}`, which is not among its deps",
                graph.name
            ));
        }
        if let Some(r) = graph
            .routes
            .iter()
            .find(|r| &r.table == table && cols.contains(&r.column))
        {
            return Err(format!(
                "graph `{}`: `{table}.{}` is its route column, which decides the views a row is in, so it cannot be patched",
                graph.name, r.column
            ));
        }
    }
    Ok(())
}

impl GraphDef {
    /// Whether a change can be applied by patching held rows: one row, an
    /// update of known new values, every changed column patchable.
    /// Changed columns the graph does not read are ignored.
    pub fn can_patch(&self, c: &Change) -> bool {
        let Some(patchable) = self.patchable.get(&c.table) else {
            return false;
        };
        let reads = |col: &String| {
            self.deps.iter().any(|d| {
                d.table == c.table && d.columns.as_ref().is_none_or(|cols| cols.contains(col))
            })
        };
        !c.id.is_empty()
            && !c.columns.is_empty()
            && c.values.is_some()
            && c.columns
                .iter()
                .filter(|col| reads(col))
                .all(|col| patchable.contains(col))
    }
}

/// A route must name a table the graph reads and a param every view has.
fn check_route(graph: &GraphDef, r: &Route) -> Result<(), String> {
    let g = &graph.name;
    if !graph.deps.iter().any(|d| d.table == r.table) {
        return Err(format!(
            "graph `{g}` routes table `{}`, which is not among its deps",
            r.table
        ));
    }
    match graph.params.get(&r.param) {
        Some(spec)
            if spec.required || spec.default.as_ref().is_some_and(|d| *d != Value::Null) =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "graph `{g}` routes `{}.{}` on param `{}`, which is optional: a view without it would be skipped; make it required or drop the route",
            r.table, r.column, r.param
        )),
        None if r.param == SCOPE_WORKSPACE => Ok(()),
        None if r.param == SCOPE_USER && graph.per_user => Ok(()),
        None if r.param == SCOPE_USER => Err(format!(
            "graph `{g}` routes on `{SCOPE_USER}` but is not per_user"
        )),
        None => Err(format!(
            "graph `{g}` routes `{}.{}` on `{}`, which is neither a declared param nor `{SCOPE_WORKSPACE}` / `{SCOPE_USER}`",
            r.table, r.column, r.param
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(name: &str, deps: Vec<TableDep>) -> GraphDef {
        let mut g = GraphDef::new(name, |_s: Scope, _p: Params| async {
            Ok(GraphResult::new())
        });
        g.deps = deps;
        g
    }

    #[test]
    fn changes_reach_only_graphs_reading_the_changed_columns() {
        let mut r = Registry::new();
        r.register(graph(
            "titles",
            vec![TableDep::columns("tasks", ["id", "title"])],
        ))
        .unwrap();
        r.register(graph("all", vec![TableDep::all("tasks")]))
            .unwrap();
        r.register(graph("users", vec![TableDep::columns("users", ["name"])]))
            .unwrap();
        let hit = |c: Change| {
            let mut v: Vec<String> = r.graphs_for(&c).map(|g| g.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(
            hit(Change::row("tasks", "1", ["title"])),
            vec!["all", "titles"]
        );
        assert_eq!(hit(Change::row("tasks", "1", ["notes"])), vec!["all"]);
        assert_eq!(hit(Change::table("tasks")), vec!["all", "titles"]);
        assert_eq!(
            hit(Change::row("users", "1", ["email"])),
            Vec::<String>::new()
        );
        let rep = r.representation();
        assert_eq!(rep["tasks"].0, None);
        assert_eq!(rep["users"].0.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn routes_must_name_a_dep_and_a_param_every_view_has() {
        use crate::engine::{ParamSpec, ParamType};
        let route = |table: &str, column: &str, param: &str| Route {
            table: table.into(),
            column: column.into(),
            param: param.into(),
        };
        let try_route = |r: Route, per_user: bool| {
            let mut g = graph("routed", vec![TableDep::all("tasks")]);
            g.per_user = per_user;
            let mut required = ParamSpec::new(ParamType::Int);
            required.required = true;
            let mut defaulted = ParamSpec::new(ParamType::Int);
            defaulted.default = Some(Value::Int(50));
            g.params.insert("project_id".into(), required);
            g.params.insert("limit".into(), defaulted);
            g.params
                .insert("status".into(), ParamSpec::new(ParamType::String));
            g.routes = vec![r];
            Registry::new().register(g)
        };
        assert!(try_route(route("tasks", "project_id", "project_id"), false).is_ok());
        assert!(try_route(route("tasks", "n", "limit"), false).is_ok());
        assert!(try_route(route("tasks", "workspace_id", SCOPE_WORKSPACE), false).is_ok());
        assert!(try_route(route("tasks", "assignee_id", SCOPE_USER), true).is_ok());
        let err = |r: Route, per_user: bool| try_route(r, per_user).unwrap_err();
        assert!(err(route("users", "id", "project_id"), false).contains("not among its deps"));
        assert!(err(route("tasks", "status", "status"), false).contains("optional"));
        assert!(err(route("tasks", "assignee_id", SCOPE_USER), false).contains("not per_user"));
        assert!(err(route("tasks", "x", "nope"), false).contains("neither a declared param"));
    }

    #[test]
    fn patchable_columns_are_checked_and_decide_the_fast_path() {
        let mut g = graph("p", vec![TableDep::columns("tasks", ["title", "position"])]);
        g.patchable = BTreeMap::from([("users".to_string(), BTreeSet::from(["name".into()]))]);
        assert!(Registry::new()
            .register(g.clone())
            .unwrap_err()
            .contains("not among its deps"));
        g.patchable = BTreeMap::from([("tasks".to_string(), BTreeSet::from(["title".into()]))]);
        g.routes = vec![Route {
            table: "tasks".into(),
            column: "title".into(),
            param: SCOPE_WORKSPACE.into(),
        }];
        assert!(Registry::new()
            .register(g.clone())
            .unwrap_err()
            .contains("route column"));
        g.routes.clear();
        let mut c = Change::row("tasks", "1", ["title", "notes"]);
        assert!(!g.can_patch(&c), "no values");
        c.values = Some(Fields::new());
        assert!(g.can_patch(&c), "notes is not read by the graph");
        c.columns.push("position".into());
        assert!(!g.can_patch(&c), "position is read and not patchable");
        let mut multi = Change::row("tasks", "", ["title"]);
        multi.values = Some(Fields::new());
        assert!(!g.can_patch(&multi), "no single row");
    }

    #[test]
    fn duplicate_names_and_missing_deps_are_rejected() {
        let mut r = Registry::new();
        r.register(graph("a", vec![TableDep::all("t")])).unwrap();
        assert!(r.register(graph("a", vec![TableDep::all("t")])).is_err());
        assert!(r.register(graph("b", vec![])).is_err());
    }
}
