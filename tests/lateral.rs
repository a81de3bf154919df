//! Many views of a SQL graph answered by one query: the lateral form gives
//! each view exactly what its own query gives, and the engine uses it when
//! several views of a graph are due at once.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use arcana::engine::params::validate;
use arcana::engine::{Change, Factory, ParamSchema, ParamSpec, ParamType, Params, Scope, Value};
use arcana::postgres::sql::Statement;
use arcana::postgres::sql_graph::{NestedSpec, SqlGraph};
use common::*;

const SQL: &str = r#"
SELECT t.id, t.title, t.status, t.position, u.id AS "assignee.id", u.name AS "assignee.name"
FROM tasks t LEFT JOIN users u ON u.id = t.assignee_id
WHERE t.workspace_id = :workspace_id AND t.project_id = :project_id
  AND (:status::text IS NULL OR t.status = :status)
ORDER BY t.position DESC, t.id
LIMIT :limit;
"#;
const TOTAL: &str = "SELECT count(*) FROM tasks t WHERE t.workspace_id = :workspace_id \
                     AND t.project_id = :project_id AND (:status::text IS NULL OR t.status = :status)";

fn schema() -> ParamSchema {
    let mut s = ParamSchema::new();
    let mut project = ParamSpec::new(ParamType::Int);
    project.required = true;
    s.insert("project_id".into(), project);
    s.insert("status".into(), ParamSpec::new(ParamType::String));
    let mut limit = ParamSpec::new(ParamType::Int);
    limit.default = Some(Value::Int(50));
    s.insert("limit".into(), limit);
    s
}

fn item(workspace: &str, pairs: &[(&str, Value)]) -> (Scope, Params) {
    let raw: HashMap<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    (
        Scope {
            workspace_id: workspace.into(),
            user_id: None,
            role: None,
        },
        validate("lateral", &schema(), raw, true).unwrap(),
    )
}

async fn graph(h: &Harness) -> SqlGraph {
    let names = ["project_id", "status", "limit"];
    let g = SqlGraph {
        name: "lateral".into(),
        pool: arcana::postgres::pool(&h.db_url, 4).unwrap(),
        query: Statement::parse(SQL, &names).unwrap(),
        total: Some(Statement::parse(TOTAL, &names).unwrap()),
        table: "tasks".into(),
        key: vec!["id".into()],
        nested: vec![NestedSpec {
            name: "assignee".into(),
            table: "users".into(),
            key: vec!["id".into()],
        }],
        lateral: OnceLock::new(),
        ctx: Default::default(),
        window: None,
    };
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    g.shape(&c).await.unwrap();
    g
}

#[tokio::test]
async fn one_lateral_query_answers_each_view_exactly_as_its_own_query() {
    let h = Harness::start().await;
    // More rows, so limits, filters and ties matter.
    h.sql(
        "INSERT INTO tasks (workspace_id, project_id, title, status, position, assignee_id)
         SELECT 'acme', 1 + g % 2, 'extra ' || g, (ARRAY['todo','doing','done'])[1 + g % 3], g % 4,
                CASE WHEN g % 5 = 0 THEN NULL ELSE 'bob' END
         FROM generate_series(1, 40) g",
    )
    .await;
    let g = std::sync::Arc::new(graph(&h).await);
    assert!(
        matches!(g.lateral.get(), Some(Some(_))),
        "the graph's statements have a lateral form"
    );
    let items = vec![
        item("acme", &[("project_id", Value::Int(1))]),
        item(
            "acme",
            &[("project_id", Value::Int(2)), ("limit", Value::Int(3))],
        ),
        item(
            "acme",
            &[
                ("project_id", Value::Int(1)),
                ("status", Value::String("done".into())),
            ],
        ),
        item("globex", &[("project_id", Value::Int(3))]),
        item("acme", &[("project_id", Value::Int(3))]), // another workspace's: empty
        item("acme", &[("project_id", Value::Int(1))]), // twice in one round
    ];
    let many = g.evaluate_lateral(&items).await.expect("one lateral query");
    assert_eq!(many.len(), items.len());
    for ((scope, params), got) in items.into_iter().zip(many) {
        let want = g.evaluate(scope, params).await.unwrap();
        let got = got.unwrap();
        assert_eq!(got.total, want.total);
        assert_eq!(got.refs, want.refs, "refs in the query's order");
        assert_eq!(
            got.referenced_rows().unwrap().1,
            want.referenced_rows().unwrap().1
        );
    }
}

#[tokio::test]
async fn views_due_together_refresh_in_one_round() {
    let h = Harness::with(|c| c.engine.eval_concurrency = 1).await;
    let mut l = h.live("dev-alice").await;
    let mut views = Vec::new();
    for (p, status) in [(1, None), (2, None), (1, Some("todo")), (2, Some("doing"))] {
        let mut ps = vec![("project_id", int(p))];
        if let Some(s) = status {
            ps.push(("status", text(s)));
        }
        views.push((
            l.subscribe("project_tasks", params(&ps))
                .await
                .unwrap()
                .view_id,
            params(&ps),
        ));
    }
    let before = h.app().engine.stats();
    h.sql("UPDATE tasks SET status = 'doing', title = title || '!' WHERE project_id IN (1, 2)")
        .await;
    // No route values: every view of the graph is due at once.
    h.app()
        .engine
        .notify(vec![Change::table("tasks")])
        .await
        .unwrap();
    let after = h.app().engine.stats();
    assert_eq!(after.evaluations - before.evaluations, 4);
    assert_eq!(
        after.evaluation_rounds - before.evaluation_rounds,
        1,
        "one round (one query) for the four views"
    );
    for (v, ps) in views {
        let fresh = h.fresh("dev-alice", "project_tasks", ps).await;
        l.wait_until(&v, |s| s.content() == fresh.content()).await;
    }
}
