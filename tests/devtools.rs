//! DevTools on the admin listener: the data endpoints refuse a missing or
//! bad token (401) and a token without `arcana:admin` (403), a workspace
//! admin sees only its workspace, a global admin sees every one, and the
//! live stream pushes a new snapshot when a view's version moves.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use arcana::config::TokenConfig;
use arcana::engine::Change;
use common::*;
use serde_json::Value as Json;
use tokio::io::AsyncReadExt;

fn token(token: &str, workspace: &str, permission: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        user: format!("{token}-user"),
        workspace: workspace.into(),
        role: "admin".into(),
        permissions: vec!["tasks:read".into(), permission.into()],
    }
}

async fn start() -> (Harness, SocketAddr) {
    let h = Harness::with(|c| {
        c.server.admin_listen = Some("127.0.0.1:0".into());
        c.auth
            .tokens
            .push(token("globex-admin", "globex", "arcana:admin"));
        c.auth
            .tokens
            .push(token("root", "acme", "arcana:global-admin"));
    })
    .await;
    let admin = h.app().admin_addr.expect("admin listener on");
    (h, admin)
}

async fn snapshot(addr: SocketAddr, token: &str) -> Json {
    let (code, body) = http_get(addr, "/devtools/api/snapshot", Some(token)).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn workspaces(snap: &Json, list: &str) -> Vec<String> {
    let mut w: Vec<String> = snap[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["workspace"].as_str().unwrap().to_owned())
        .collect();
    w.sort();
    w.dedup();
    w
}

fn version_of(snap: &Json, graph: &str) -> Option<u64> {
    snap["views"]
        .as_array()?
        .iter()
        .find(|v| v["graph"] == graph)?["version"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devtools_data_needs_an_admin_token_and_stays_in_its_workspace() {
    let (h, admin) = start().await;

    let (code, page) = http_get(admin, "/devtools", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("Arcana DevTools"));

    for path in ["/devtools/api/snapshot", "/devtools/api/stream"] {
        assert_eq!(
            http_get(admin, path, None).await.0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            http_get(admin, path, Some("nope")).await.0,
            401,
            "{path} bad token"
        );
        let (code, body) = http_get(admin, path, Some("dev-alice")).await;
        assert_eq!(code, 403, "{path} without arcana:admin: {body}");
        assert!(body.contains("arcana:admin"), "{body}");
    }

    let mut alice = h.live("dev-alice").await;
    alice.subscribe("project_tasks", project(1)).await.unwrap();
    let mut carol = h.live("dev-carol").await;
    carol.subscribe("project_tasks", project(3)).await.unwrap();

    let acme = snapshot(admin, "dev-service").await;
    assert_eq!(workspaces(&acme, "views"), ["acme"], "{acme}");
    assert_eq!(workspaces(&acme, "sessions"), ["acme"], "{acme}");
    assert!(!acme.to_string().contains("Secret plans"));
    assert_eq!(acme["viewer"]["all_workspaces"], false);
    assert_eq!(acme["viewer"]["scope"], "workspace acme", "{acme}");
    // Counters of its workspace only: none of the engine-wide ones, which
    // would read 0 next to a feed with frames.
    let counters = acme["counters"].as_object().unwrap();
    assert_eq!(counters["views"], 1, "{acme}");
    assert_eq!(counters["sessions"], 1, "{acme}");
    for global in [
        "frames",
        "batches",
        "changes",
        "patches",
        "evaluation_rounds",
    ] {
        assert!(!counters.contains_key(global), "{global}: {acme}");
    }
    assert!(acme["graphs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "project_tasks" && !g["deps"].as_array().unwrap().is_empty()));

    let globex = snapshot(admin, "globex-admin").await;
    assert_eq!(workspaces(&globex, "views"), ["globex"], "{globex}");
    assert_eq!(workspaces(&globex, "sessions"), ["globex"], "{globex}");

    let all = snapshot(admin, "root").await;
    assert_eq!(workspaces(&all, "views"), ["acme", "globex"], "{all}");
    assert_eq!(all["viewer"]["all_workspaces"], true);
    assert_eq!(all["viewer"]["scope"], "all workspaces", "{all}");
    let counters = all["counters"].as_object().unwrap();
    assert_eq!(counters["views"], 2, "{all}");
    for global in [
        "frames",
        "batches",
        "changes",
        "patches",
        "evaluation_rounds",
    ] {
        assert!(counters[global].is_u64(), "{global}: {all}");
    }
    // The page says which scope it shows.
    assert!(page.contains("viewer.scope"), "the page shows the scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devtools_stream_pushes_a_new_version_and_its_frame() {
    let (h, admin) = start().await;
    let mut alice = h.live("dev-alice").await;
    alice.subscribe("project_tasks", project(1)).await.unwrap();

    let mut stream = http_request(admin, "/devtools/api/stream", Some("dev-service")).await;
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut snapshots = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut wrote = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "no new version on the stream:\n{text}"
        );
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf))
            .await
            .expect("the stream sent something in time")
            .unwrap();
        assert!(n > 0, "the stream ended early:\n{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Each event is one chunk, so a data line arrives whole.
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(line) = block.lines().find(|l| l.starts_with("data: ")) {
                snapshots.push(serde_json::from_str::<Json>(&line[6..]).unwrap());
            }
        }
        let Some(first) = snapshots
            .first()
            .and_then(|s| version_of(s, "project_tasks"))
        else {
            continue;
        };
        if !wrote {
            h.sql("UPDATE tasks SET title = 'seen in devtools' WHERE id = 1")
                .await;
            h.app()
                .engine
                .notify(vec![Change::table("tasks")])
                .await
                .unwrap();
            wrote = true;
        }
        let last = snapshots.last().unwrap();
        if version_of(last, "project_tasks").is_some_and(|v| v > first) {
            let feed = last["feed"].as_array().unwrap();
            assert!(
                feed.iter().any(|e| e["kind"] == "frame"
                    && e["view"].as_str().unwrap().starts_with("project_tasks/")),
                "{last}"
            );
            // A workspace admin's frames are in its feed, and no engine-wide
            // `frames 0` counter contradicts them.
            assert_eq!(last["viewer"]["scope"], "workspace acme", "{last}");
            assert!(last["counters"].get("frames").is_none(), "{last}");
            break;
        }
    }
}
