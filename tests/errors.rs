//! Authentication, isolation, permissions and bad input: each gets a precise
//! status and the server keeps serving everyone else.

mod common;

use arcana::proto::{self as pb};
use common::*;
use tonic::Code;

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let h = Harness::start().await;
    let e = h
        .client("")
        .await
        .describe(pb::DescribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("authorization"), "{}", e.message());
    let e = h
        .client("wrong")
        .await
        .describe(pb::DescribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = Live::connect(h.client("wrong").await).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(h
        .client("dev-bob")
        .await
        .describe(pb::DescribeRequest {})
        .await
        .is_ok());
}

#[tokio::test]
async fn hs256_tokens_are_accepted_when_configured() {
    let h = Harness::with(|c| {
        c.auth.jwt = Some(arcana::config::JwtConfig {
            secret: Some("a-long-test-secret-value".into()),
            ..Default::default()
        })
    })
    .await;
    let token = arcana::auth::sign_hs256(
        b"a-long-test-secret-value",
        &serde_json::json!({"sub": "alice", "workspace": "acme", "permissions": ["tasks:read"], "exp": 4_000_000_000i64}),
    );
    let mut l = Live::connect(h.client(&token).await).await.unwrap();
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    assert_eq!(l.view(&s.view_id).refs.len(), 4);
    let forged = arcana::auth::sign_hs256(
        b"some-other-secret-value",
        &serde_json::json!({"sub": "alice", "workspace": "acme"}),
    );
    let e = h
        .client(&forged)
        .await
        .describe(pb::DescribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_workspace_never_sees_another_workspaces_rows() {
    let h = Harness::start().await;
    let mut acme = h.live("dev-alice").await;
    let mut globex = h.live("dev-carol").await;
    // Same graph, same params: different workspaces, different views.
    let a = acme.subscribe("project_tasks", project(1)).await.unwrap();
    let g = globex.subscribe("project_tasks", project(1)).await.unwrap();
    assert_eq!(
        a.view_id, g.view_id,
        "same graph and params give the same view id"
    );
    assert_eq!(h.app().engine.stats().views, 2, "but not the same view");
    assert!(globex.view(&g.view_id).refs.is_empty());
    assert_eq!(globex.view(&g.view_id).total, Some(0));
    let gp = globex.subscribe("project_tasks", project(3)).await.unwrap();
    acme.mutate(
        "update_task",
        params(&[("id", int(1)), ("title", text("acme only"))]),
    )
    .await
    .unwrap();
    acme.mutate(
        "create_task",
        params(&[("project_id", int(1)), ("title", text("acme new"))]),
    )
    .await
    .unwrap();
    globex.ping().await;
    let acme_ids = ["1", "2", "3", "4", "5", "6", "8"];
    for f in &globex.frames {
        let text = format!("{f:?}");
        assert!(!text.contains("acme"), "globex received acme data: {text}");
    }
    for k in globex.view(&gp.view_id).rows.keys() {
        assert!(!(k.table.as_ref() == "tasks" && acme_ids.contains(&k.id.as_ref())));
    }
    // Carol cannot write into acme's project either: the SQL scopes by
    // workspace, and the mutation expects one row, so it answers NOT_FOUND.
    let e = globex
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("hijack"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32, "{}", e.message);
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title = 'hijack'")
            .await,
        0
    );
}

#[tokio::test]
async fn permissions_are_enforced_for_graphs_mutations_and_admin_calls() {
    let h = Harness::start().await;
    let mut bob = h.live("dev-bob").await;
    let e = bob
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("x"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied as i32);
    assert!(e.message.contains("tasks:write"), "{}", e.message);
    let e = h
        .client("dev-alice")
        .await
        .stats(pb::StatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = h
        .client("dev-alice")
        .await
        .notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: "tasks".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let stats = h
        .client("dev-service")
        .await
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.sessions, 1);
}

#[tokio::test]
async fn bad_requests_get_precise_statuses_and_nothing_else_breaks() {
    let h = Harness::with(|c| {
        c.engine.max_subscriptions_per_session = 2;
        c.server.max_message_bytes = 4096;
    })
    .await;
    let mut l = h.live("dev-alice").await;
    let mut other = h.live("dev-bob").await;
    let ov = other.subscribe("project_tasks", project(1)).await.unwrap();

    let e = l.subscribe("nope", project(1)).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32);
    assert!(
        e.message.contains("unknown graph `nope`") && e.message.contains("project_tasks"),
        "{}",
        e.message
    );

    let e = l
        .subscribe("project_tasks", params(&[("project_id", text("one"))]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(
        e.message
            .contains("`project_id` must be an int, got string"),
        "{}",
        e.message
    );

    let e = l.subscribe("project_tasks", params(&[])).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(
        e.message.contains("`project_id` is required"),
        "{}",
        e.message
    );

    let e = l
        .subscribe(
            "project_tasks",
            params(&[("project_id", int(1)), ("colour", text("red"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(
        e.message.contains("unknown param `colour`"),
        "{}",
        e.message
    );

    let e = l
        .subscribe(
            "project_tasks",
            params(&[("project_id", int(1)), ("status", text("lost"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);

    l.subscribe("project_tasks", project(1)).await.unwrap();
    l.subscribe("project_tasks", project(2)).await.unwrap();
    let e = l.subscribe("projects", params(&[])).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted as i32);
    assert!(e.message.contains("limit"), "{}", e.message);
    // Subscribing again to a view already held is not a new subscription.
    l.subscribe("project_tasks", project(2)).await.unwrap();

    let e = l
        .request(pb::client_message::Kind::Ping(pb::PingRequest {}))
        .await;
    assert!(e.is_ok());

    // An oversized unary request.
    let big = "x".repeat(10_000);
    let e = h
        .client("dev-alice")
        .await
        .mutate(pb::MutateRequest {
            session_id: String::new(),
            mutation: "create_task".into(),
            params: params(&[("project_id", int(1)), ("title", text(&big))]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_message_bytes"), "{}", e.message());

    // An oversized message on a stream ends that stream with the same status.
    let mut s = h.live("dev-alice").await;
    s.send(pb::client_message::Kind::Mutate(pb::MutateRequest {
        session_id: String::new(),
        mutation: "create_task".into(),
        params: params(&[("title", text(&big))]),
    }))
    .await;
    let e = loop {
        if let Err(e) = s.read_one().await {
            break e;
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Nothing was written, and everyone else is still served.
    assert_eq!(h.query_i64("SELECT count(*) FROM tasks").await, 7);
    other
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("still here"))]),
        )
        .await
        .unwrap_err(); // bob: read only
    let mut alice = h.live("dev-alice").await;
    alice
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("still here"))]),
        )
        .await
        .unwrap();
    other.ping().await;
    assert_eq!(
        other.view(&ov.view_id).content(),
        h.fresh("dev-bob", "project_tasks", project(1))
            .await
            .content()
    );
}

#[tokio::test]
async fn mutations_validate_params_and_write_nothing_on_error() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .mutate(
            "create_task",
            params(&[("project_id", text("1")), ("title", text("x"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    let e = l
        .mutate("create_task", params(&[("project_id", int(1))]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("`title` is required"), "{}", e.message);
    // A check constraint fails inside the transaction: rolled back.
    let e = l
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text(""))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition as i32, "{}", e.message);
    assert!(e.message.contains("23514"), "{}", e.message);
    let e = l.mutate("nope", params(&[])).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32);
    assert_eq!(h.query_i64("SELECT count(*) FROM tasks").await, 7);
    let ok = l
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("fine"))]),
        )
        .await
        .unwrap();
    assert!(ok.data.contains_key("id"));
    assert_eq!(ok.changes[0].table, "tasks");
    assert_eq!(h.query_i64("SELECT count(*) FROM tasks").await, 8);
}

#[tokio::test]
async fn grpc_web_style_sessions_use_one_stream_and_unary_calls() {
    let h = Harness::start().await;
    let mut c = h.client("dev-alice").await;
    let mut stream = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let opened = match stream.message().await.unwrap().unwrap().kind {
        Some(pb::server_message::Kind::Opened(o)) => o,
        other => panic!("{other:?}"),
    };
    let e = c
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: String::new(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: "nope".into(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = h
        .client("dev-bob")
        .await
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: opened.session_id.clone(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "another identity cannot use this session"
    );

    let r = c
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: opened.session_id.clone(),
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut state = arcana::client::ViewState::default();
    let next_frame = |m: Option<pb::ServerMessage>| match m.and_then(|m| m.kind) {
        Some(pb::server_message::Kind::Frame(f)) => f,
        other => panic!("{other:?}"),
    };
    let f = next_frame(stream.message().await.unwrap());
    assert_eq!(f.view_id, r.view_id);
    state.apply(&f).unwrap();
    // With the session named, the response says which version shows the write.
    let m = c
        .mutate(pb::MutateRequest {
            mutation: "update_task".into(),
            params: params(&[("id", int(2)), ("title", text("web"))]),
            session_id: opened.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let f = next_frame(stream.message().await.unwrap());
    state.apply(&f).unwrap();
    assert_eq!(m.view_versions.get(&r.view_id), Some(&f.version), "{m:?}");
    assert_eq!(
        state.content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
    c.unsubscribe(pb::UnsubscribeRequest {
        view_id: r.view_id.clone(),
        session_id: opened.session_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(h.app().engine.stats().views, 0);
}

#[tokio::test]
async fn describe_and_health_answer() {
    let h = Harness::start().await;
    let d = h
        .client("dev-bob")
        .await
        .describe(pb::DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.protocol_version, 1);
    let g = d.graphs.iter().find(|g| g.name == "project_tasks").unwrap();
    let p = g.params.iter().find(|p| p.name == "project_id").unwrap();
    assert!(p.required);
    assert_eq!(p.r#type, pb::ParamType::Int as i32);
    assert_eq!(g.nested["assignee"], "users");
    assert!(d.mutations.iter().any(|m| m.name == "create_task"));
    let kind = |nested: &str, name: &str| {
        g.fields
            .iter()
            .find(|f| f.nested == nested && f.name == name)
            .map(|f| f.kind.clone())
    };
    assert_eq!(kind("", "points").as_deref(), Some("int"));
    assert_eq!(kind("", "estimate").as_deref(), Some("numeric"));
    assert_eq!(kind("", "meta").as_deref(), Some("json"));
    assert_eq!(kind("assignee", "name").as_deref(), Some("string"));
    assert!(d
        .tables
        .iter()
        .any(|t| t.name == "users" && t.columns == vec!["name".to_string()]));

    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel().await);
    let s = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "arcana.v1.ArcanaService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_broken_graph_stops_startup_with_the_reason() {
    let url = fresh_database().await;
    let cases = [
        (
            "SELECT id, nope FROM tasks",
            "column \"nope\" does not exist",
        ),
        ("SELECT title FROM tasks", "no `id` column"),
        ("SELECT id, ctid FROM tasks", "type tid is not supported"),
    ];
    for (sql, why) in cases {
        let toml = format!(
            "[[auth.tokens]]\ntoken = \"t\"\nuser = \"u\"\nworkspace = \"w\"\n[[graphs]]\nname = \"broken\"\ntable = \"tasks\"\nsql = {sql:?}\ndeps = {{ tasks = [\"*\"] }}\n[changes]\nmode = \"none\"\n"
        );
        let config = arcana::config::Config::parse(&toml).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = arcana::app::App::start(&config, &url, listener)
            .await
            .err()
            .expect("startup fails");
        assert!(err.contains("graph `broken`") && err.contains(why), "{err}");
    }
}

/// Two statements that lock two rows in the order given, with a pause in
/// between: run at once with the rows swapped, they deadlock.
const CROSSED: &str = r#"
[[mutations]]
name = "crossed"
permissions = ["tasks:write"]
sql = [
  "UPDATE tasks SET position = position + 1 WHERE id = :a AND workspace_id = :workspace_id",
  "SELECT pg_sleep(0.3)",
  "UPDATE tasks SET position = position + 1 WHERE id = :b AND workspace_id = :workspace_id RETURNING id",
]
[mutations.params.a]
type = "int"
required = true
[mutations.params.b]
type = "int"
required = true
"#;

/// Runs `crossed` twice at once, rows swapped; the outcomes.
async fn crossed_pair(h: &Harness) -> Vec<Result<(), (Code, String)>> {
    let run = |a: i64, b: i64| {
        let client = h.client("dev-alice");
        async move {
            let mut c = client.await;
            c.mutate(pb::MutateRequest {
                mutation: "crossed".into(),
                params: params(&[("a", int(a)), ("b", int(b))]),
                session_id: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|e| (e.code(), e.message().to_owned()))
        }
    };
    let (x, y) = tokio::join!(run(1, 2), run(2, 1));
    vec![x, y]
}

/// A mutation that deadlocks is run again and succeeds; with no retries
/// left it answers ABORTED (retryable), never FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_mutation_is_retried_then_aborted() {
    let h = Harness::with_extra("", CROSSED, |_| {}).await;
    let sum = "SELECT sum(position)::int8 FROM tasks WHERE id IN (1, 2)";
    let before = h.query_i64(sum).await;
    for r in crossed_pair(&h).await {
        r.expect("both succeed, the deadlock's loser on a retry");
    }
    assert_eq!(h.query_i64(sum).await, before + 4, "each ran exactly once");
    let h = Harness::with_extra("", CROSSED, |c| c.database.mutation_retries = 0).await;
    let out = crossed_pair(&h).await;
    let lost: Vec<_> = out.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(lost.len(), 1, "{out:?}");
    assert_eq!(lost[0].0, Code::Aborted, "{}", lost[0].1);
    assert!(lost[0].1.contains("deadlock"), "{}", lost[0].1);
    assert!(
        lost[0].1.contains("database.mutation_retries"),
        "{}",
        lost[0].1
    );
}
