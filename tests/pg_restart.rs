//! PostgreSQL restarted under a running server: the server recovers by
//! itself (pool, WAL listener, failed views) and subscribers converge.

mod common;

use arcana::app::{App, DEMO_CONFIG, DEMO_SCHEMA};
use arcana::config::{ChangeMode, Config};

use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use common::*;

async fn restart_and_converge(mode: ChangeMode) {
    let OwnCluster {
        mut pg,
        url,
        app,
        channel,
    } = OwnCluster::start(mode).await;
    let client = |t: &str| {
        arcana::proto::arcana_service_client::ArcanaServiceClient::with_interceptor(
            channel.clone(),
            Bearer(t.into()),
        )
    };
    let mut l = Live::connect(client("dev-alice")).await.unwrap();
    let v = l
        .subscribe("project_tasks", params(&[("project_id", int(1))]))
        .await
        .unwrap()
        .view_id;

    tokio::task::block_in_place(|| pg.restart()).unwrap();

    // A write right after the restart reaches the subscriber without any help.
    let mut done = false;
    for _ in 0..100 {
        if arcana::postgres::execute_script(
            &url,
            "UPDATE tasks SET title = 'after pg restart' WHERE id = 1",
        )
        .await
        .is_ok()
        {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "PostgreSQL came back");
    l.wait_field(&v, "tasks", "1", "title", "after pg restart")
        .await;

    // And the view equals a fresh snapshot.
    let mut fresh = Live::connect(client("dev-bob")).await.unwrap();
    let f = fresh
        .subscribe("project_tasks", params(&[("project_id", int(1))]))
        .await
        .unwrap()
        .view_id;
    assert_eq!(l.view(&v).content(), fresh.view(&f).content());
    app.stop().await.unwrap();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_mode_recovers_from_a_postgres_restart() {
    restart_and_converge(ChangeMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_mode_recovers_from_a_postgres_restart() {
    restart_and_converge(ChangeMode::Notify).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_mode_on_a_server_without_logical_decoding_says_what_to_change() {
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        fast: true,
        settings: vec![("wal_level".into(), "replica".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = pg.url("postgres");
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    let config = Config::parse(DEMO_CONFIG).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = App::start(&config, &url, listener)
        .await
        .err()
        .expect("startup fails");
    assert!(
        err.contains("wal_level is `replica`")
            && err.contains("wal_level = logical")
            && err.contains("notify"),
        "{err}"
    );
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}
