//! A cluster of three `arcana serve` processes on one PostgreSQL and one
//! real nats-server: writes reach every node, one node reads the WAL, the
//! leader's death and a NATS restart lose nothing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arcana::app::DEMO_CONFIG;
use arcana::client::ViewState;
use arcana::engine::Value;
use arcana::proto::arcana_service_client::ArcanaServiceClient;
use common::nats::Nats;
use common::*;
use tonic::transport::Channel;

/// One `arcana serve` child process.
struct NodeProc {
    id: String,
    port: u16,
    child: Child,
    /// Not killed or stopped by the test.
    alive: bool,
    config: std::path::PathBuf,
    db_url: String,
    log: std::path::PathBuf,
    /// Extra environment (fault injection) for the next start.
    env: Vec<(String, String)>,
}

impl NodeProc {
    fn spawn(config: &std::path::Path, db_url: &str, port: u16, log: &std::path::Path) -> Child {
        Self::spawn_with(config, db_url, port, log, &[])
    }

    fn spawn_with(
        config: &std::path::Path,
        db_url: &str,
        port: u16,
        log: &std::path::Path,
        env: &[(String, String)],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_arcana"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--database-url", db_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env(
                "RUST_LOG",
                std::env::var("ARCANA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start arcana serve")
    }

    /// Starts the node again, on the same port and config.
    fn start_again(&mut self) {
        assert!(!self.alive);
        self.child = Self::spawn_with(&self.config, &self.db_url, self.port, &self.log, &self.env);
        self.alive = true;
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.alive = false;
    }

    /// Kills the process with SIGKILL: no lease is handed back.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.alive = false;
    }

    async fn live(&self, token: &str) -> Live {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint())
                .unwrap()
                .connect()
                .await
            {
                let c = ArcanaServiceClient::with_interceptor(ch, Bearer(token.into()));
                if let Ok(l) = Live::connect(c).await {
                    return l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} did not come up",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes, their NATS and their database.
struct Cluster {
    nats: Nats,
    db_url: String,
    slot: String,
    nodes: Vec<NodeProc>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed test shows what each node logged.
        if std::thread::panicking() {
            for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    eprintln!("==== {} ====\n{text}", e.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    async fn start() -> Cluster {
        Self::start_in("wal").await
    }

    /// Three nodes detecting changes with `changes.mode = mode`.
    async fn start_in(mode: &str) -> Cluster {
        Self::start_with(mode, 1500).await
    }

    /// Three nodes with `changes.mode = mode` and a lease TTL of `ttl_ms`.
    async fn start_with(mode: &str, ttl_ms: u64) -> Cluster {
        Self::start_full(mode, ttl_ms, "").await
    }

    /// Three nodes evaluating each view on one node (`view_owners`).
    async fn start_owners() -> Cluster {
        Self::start_full("wal", 1500, "view_owners = true\n").await
    }

    /// Three nodes; `extra` is added to their `[cluster]` section.
    async fn start_full(mode: &str, ttl_ms: u64, extra: &str) -> Cluster {
        Self::start_relayed(mode, ttl_ms, extra, None).await
    }

    /// Three nodes, node `relayed.0` reaching NATS through `relayed.1`.
    async fn start_relayed(
        mode: &str,
        ttl_ms: u64,
        extra: &str,
        relayed: Option<(usize, String)>,
    ) -> Cluster {
        let nats = Nats::start();
        let db_url = fresh_database().await;
        let slot = format!("slot_{:016x}", rand::random::<u64>());
        let dir =
            std::env::temp_dir().join(format!("arcana-cluster-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let id = format!("n{i}");
            let config = format!(
                "{DEMO_CONFIG}\n[changes]\nmode = \"{mode}\"\nslot = \"{slot}\"\n\n\
                 [cluster]\nnats_url = \"{}\"\nnode_id = \"{id}\"\nlease_ttl_ms = {ttl_ms}\n{extra}",
                match &relayed {
                    Some((at, url)) if *at == i - 1 => url.clone(),
                    _ => nats.url(),
                }
            );
            let path = dir.join(format!("{id}.toml"));
            std::fs::write(&path, config).unwrap();
            let port = free_port();
            let log = dir.join(format!("{id}.log"));
            let child = NodeProc::spawn(&path, &db_url, port, &log);
            nodes.push(NodeProc {
                id,
                port,
                child,
                alive: true,
                config: path,
                db_url: db_url.clone(),
                log,
                env: Vec::new(),
            });
        }
        Cluster {
            nats,
            db_url,
            slot,
            nodes,
            _dir: TempDir(dir),
        }
    }

    async fn query(&self, q: &str) -> Vec<tokio_postgres::Row> {
        let (c, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query(q, &[]).await.unwrap()
    }

    async fn sql(&self, q: &str) {
        // A script that changes a table's definition can deadlock with the
        // nodes' own work on it (the victim is rolled back whole); run it
        // again then, as an operator would.
        for attempt in 1.. {
            match arcana::postgres::execute_script(&self.db_url, q).await {
                Ok(()) => return,
                Err(e) if e.contains("40P01") && attempt < 3 => {
                    eprintln!("test script deadlocked, running it again: {e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The `application_name` of every connection streaming from the slot.
    async fn slot_holders(&self) -> Vec<String> {
        self.query(&format!(
            "SELECT a.application_name FROM pg_replication_slots s \
             JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = '{}' AND s.active",
            self.slot
        ))
        .await
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// Waits until a live node streams from the slot (a dead node's
    /// walsender may linger a moment); returns its index.
    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let holders = self.slot_holders().await;
            assert!(holders.len() <= 1, "several holders: {holders:?}");
            if let Some(h) = holders.first() {
                if let Some(i) = self
                    .nodes
                    .iter()
                    .position(|n| n.alive && *h == format!("arcana-{}", n.id))
                {
                    return i;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node took the slot; holders: {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Project 1's task titles in view order, as SQL has them now.
    async fn expected_titles(&self) -> Vec<String> {
        self.query(
            "SELECT title FROM tasks WHERE workspace_id = 'acme' AND project_id = 1 \
             ORDER BY position, id LIMIT 50",
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

/// The titles a `project_tasks` view shows, in order.
fn titles(v: &ViewState) -> Vec<String> {
    v.refs
        .iter()
        .map(|r| match v.rows.get(&r.key).and_then(|f| f.get("title")) {
            Some(Value::String(s)) => s.clone(),
            other => panic!("title of {:?}: {other:?}", r.key),
        })
        .collect()
}

/// A subscriber on one node to project 1's tasks.
async fn subscribe(node: &NodeProc) -> (Live, String) {
    let mut l = node.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", params(&[("project_id", int(1))]))
        .await
        .unwrap()
        .view_id;
    (l, v)
}

/// Waits until every subscriber's view equals what SQL returns.
async fn converge(c: &Cluster, subs: &mut [(Live, String)]) {
    let expected = c.expected_titles().await;
    for (l, v) in subs.iter_mut() {
        l.wait_until(v, |s| titles(s) == expected).await;
    }
}

/// The cluster tests each start three servers; one at a time keeps them
/// within the machine's means.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

#[tokio::test]
async fn writes_reach_every_node_and_one_node_reads_the_wal() {
    let _g = serial().await;
    let c = Cluster::start().await;
    let leader = c.leader().await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    // A write from psql reaches subscribers on every node.
    c.sql("UPDATE tasks SET title = 'Book the big venue' WHERE id = 2")
        .await;
    converge(&c, &mut subs).await;
    assert!(titles(subs[1].0.view(&subs[1].1)).contains(&"Book the big venue".to_owned()));
    // A mutation on a node that does not read the WAL reaches the others.
    let writer = (leader + 1) % 3;
    subs[writer]
        .0
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("Cluster task"))]),
        )
        .await
        .unwrap();
    converge(&c, &mut subs).await;
    for (l, v) in &subs {
        assert!(titles(l.view(v)).contains(&"Cluster task".to_owned()));
    }
    // Still exactly one node streams from the slot.
    assert_eq!(c.slot_holders().await.len(), 1);
    assert_eq!(c.leader().await, leader);
}

#[tokio::test]
async fn the_leader_killed_another_takes_over_and_nothing_is_lost() {
    let _g = serial().await;
    let mut c = Cluster::start().await;
    let leader = c.leader().await;
    let mut subs = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if i != leader {
            subs.push(subscribe(n).await);
        }
    }
    c.sql("UPDATE tasks SET title = 'Before the handover' WHERE id = 1")
        .await;
    converge(&c, &mut subs).await;
    c.nodes[leader].kill();
    let killed = tokio::time::Instant::now();
    // Writes while nobody reads the WAL, then while the new leader starts.
    for i in 0..8 {
        c.sql(&format!(
            "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'During handover {i}', {})",
            100 + i
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let next = c.leader().await;
    assert_ne!(next, leader);
    // The lease lives 1.5 s; the WAL listener retries the slot within 5 s.
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "takeover took {:?}",
        killed.elapsed()
    );
    converge(&c, &mut subs).await;
    c.sql("UPDATE tasks SET title = 'After the handover' WHERE id = 3")
        .await;
    converge(&c, &mut subs).await;
    let expected = c.expected_titles().await;
    assert_eq!(
        expected.iter().filter(|t| t.starts_with("During")).count(),
        8
    );
    for (l, v) in &subs {
        assert_eq!(titles(l.view(v)), expected);
    }
    // In the stream, each inserted row is in exactly one batch, and no
    // transaction (WAL position) was stored twice.
    let batches = stream_batches(&c.nats.url()).await;
    let ids: Vec<&String> = batches.iter().filter_map(|(id, _)| id.as_ref()).collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a transaction stored twice: {ids:?}"
    );
    // Task 1 was updated just before the kill, likely before the old leader
    // confirmed its position: the new leader replays that transaction.
    for r in c
        .query("SELECT id::text FROM tasks WHERE title LIKE 'During handover%' OR id = 1")
        .await
    {
        let row: String = r.get(0);
        let holding = batches
            .iter()
            .filter(|(_, b)| {
                b["changes"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|ch| ch["table"] == "tasks" && ch["id"] == row.as_str())
                })
            })
            .count();
        assert_eq!(holding, 1, "task {row} in {holding} batches");
    }
}

/// Every batch in the change stream: its message id and its JSON.
async fn stream_batches(nats_url: &str) -> Vec<(Option<String>, serde_json::Value)> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    use futures_util::StreamExt;
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("ARCANA_CHANGES").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("stream read in time")
    {
        let m = m.unwrap();
        let seq = m.info().unwrap().stream_sequence;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned());
        out.push((id, serde_json::from_slice(&m.payload).unwrap()));
        if seq >= last {
            break;
        }
    }
    out
}

#[tokio::test]
async fn after_a_nats_restart_writes_arrive_everywhere() {
    let _g = serial().await;
    let mut c = Cluster::start().await;
    let leader = c.leader().await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    c.sql("UPDATE tasks SET title = 'Before the restart' WHERE id = 1")
        .await;
    converge(&c, &mut subs).await;
    c.nats.restart();
    for i in 0..3 {
        c.sql(&format!(
            "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'After restart {i}', {})",
            200 + i
        ))
        .await;
    }
    converge(&c, &mut subs).await;
    // One node reads the WAL again (the same one or another).
    let now = c.leader().await;
    tracing::debug!(before = leader, now, "leaders");
    let expected = c.expected_titles().await;
    for (l, v) in &subs {
        assert_eq!(titles(l.view(v)), expected);
    }
}

#[tokio::test]
async fn a_nats_outage_longer_than_the_lease_loses_nothing() {
    let _g = serial().await;
    let mut c = Cluster::start().await;
    c.leader().await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    c.nats.stop();
    // Past the lease's life, the leader gives up the slot: it cannot
    // publish, so it must not read on.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !c.slot_holders().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader kept the slot without NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        c.sql(&format!(
            "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'During the outage {i}', {})",
            300 + i
        ))
        .await;
    }
    // Longer than a lease for every node: each one sends its clients away.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.nats.start_again();
    c.leader().await;
    // Cut off past a lease, every node sent its clients away; they come
    // back and Sync.
    let mut subs = come_back(&c, subs).await;
    converge(&c, &mut subs).await;
    let expected = c.expected_titles().await;
    assert_eq!(
        expected
            .iter()
            .filter(|t| t.starts_with("During the outage"))
            .count(),
        3
    );
    for (l, v) in &subs {
        assert_eq!(titles(l.view(v)), expected);
    }
}

#[tokio::test]
async fn an_unreachable_nats_stops_startup_with_a_message() {
    let db_url = fresh_database().await;
    let mut config = arcana::config::Config::parse(DEMO_CONFIG).unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    let nats_url = format!("nats://127.0.0.1:{}", free_port());
    config.cluster = Some(arcana::config::ClusterConfig {
        nats_url: nats_url.clone(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = match arcana::app::App::start(&config, &db_url, listener).await {
        Ok(_) => panic!("started without NATS"),
        Err(e) => e,
    };
    assert!(
        e.contains(&format!(
            "cannot reach NATS at {nats_url} (cluster.nats_url)"
        )),
        "{e}"
    );
    // A setting a person can get wrong is named.
    config.cluster = Some(arcana::config::ClusterConfig {
        node_id: "a b".into(),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = match arcana::app::App::start(&config, &db_url, listener).await {
        Ok(_) => panic!("started with a bad node_id"),
        Err(e) => e,
    };
    assert!(e.contains("cluster.node_id `a b`"), "{e}");
}

#[test]
fn the_cluster_section_parses_with_defaults_and_rejects_unknown_keys() {
    let c = arcana::config::Config::parse(DEMO_CONFIG).unwrap();
    assert!(c.cluster.is_none(), "no [cluster]: a standalone server");
    let c = arcana::config::Config::parse(&format!(
        "{DEMO_CONFIG}\n[cluster]\nnats_url = \"nats://10.0.0.1:4222\"\n"
    ))
    .unwrap();
    let k = c.cluster.unwrap();
    assert_eq!(k.nats_url, "nats://10.0.0.1:4222");
    assert!(k.node_id.starts_with("node-"));
    assert_eq!(k.lease_ttl_ms, 5000);
    assert_eq!(k.changes_stream, "ARCANA_CHANGES");
    let e = arcana::config::Config::parse(&format!("{DEMO_CONFIG}\n[cluster]\nlease_ttl = 5\n"))
        .unwrap_err();
    assert!(e.contains("lease_ttl"), "{e}");
}

#[tokio::test]
async fn in_notify_mode_the_leader_listens_and_writes_reach_every_node() {
    let _g = serial().await;
    let mut c = Cluster::start_in("notify").await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    // The leader's LISTEN connection is the only change source; writes
    // count once it listens (it installs the triggers first).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = c
            .query(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE 'LISTEN %' AND datname = current_database()",
            )
            .await[0]
            .get(0);
        assert!(n <= 1, "{n} nodes listen");
        if n == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no node listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.sql("UPDATE tasks SET title = 'Notified everywhere' WHERE id = 2")
        .await;
    converge(&c, &mut subs).await;
    for (l, v) in &subs {
        assert!(titles(l.view(v)).contains(&"Notified everywhere".to_owned()));
    }
    assert!(c.slot_holders().await.is_empty());
    // The listening node dies: what is written before another listens is
    // never notified, and arrives anyway (the new leader refreshes all).
    let holder = lease_holder(&c.nats.url()).await;
    let leader = c.nodes.iter().position(|n| n.id == holder).unwrap();
    c.nodes[leader].kill();
    let mut subs: Vec<_> = subs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, s)| s)
        .collect();
    c.sql("UPDATE tasks SET title = 'Written with nobody listening' WHERE id = 3")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while lease_holder(&c.nats.url()).await == holder {
        assert!(tokio::time::Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converge(&c, &mut subs).await;
    for (l, v) in &subs {
        assert!(titles(l.view(v)).contains(&"Written with nobody listening".to_owned()));
    }
}

/// The node holding the change source lease ("" when none does).
async fn lease_holder(nats_url: &str) -> String {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("arcana_leases").await.unwrap();
    match kv.get("changes").await.unwrap() {
        Some(v) => String::from_utf8(v.to_vec()).unwrap(),
        None => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn nodes_started_together_on_a_new_database_all_start() {
    let _g = serial().await;
    let nats = Nats::start();
    // Startup installs row-level security (DDL) and prepares statements;
    // side by side on three nodes that could deadlock and fail a node.
    for round in 0..4 {
        let db_url = fresh_database().await;
        let db_tag = format!("{:08x}", rand::random::<u32>());
        let starts = (1..=3).map(|i| {
            let db_tag = db_tag.clone();
            let db_url = db_url.clone();
            let nats_url = nats.url();
            async move {
                let mut config = arcana::config::Config::parse(DEMO_CONFIG).unwrap();
                config.changes.mode = arcana::config::ChangeMode::Wal;
                config.changes.slot = format!("slot_{round}_{db_tag}");
                config.cluster = Some(arcana::config::ClusterConfig {
                    nats_url,
                    node_id: format!("r{round}n{i}"),
                    changes_stream: format!("CHANGES_{round}"),
                    changes_subject: format!("changes.{round}"),
                    lease_bucket: format!("leases_{round}"),
                    ..Default::default()
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                arcana::app::App::start(&config, &db_url, listener).await
            }
        });
        let apps = futures_util::future::join_all(starts.map(tokio::spawn)).await;
        for app in apps {
            match app.unwrap() {
                Ok(a) => a.stop().await.unwrap(),
                Err(e) => panic!("round {round}: a node failed to start: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn a_changed_lease_ttl_or_stream_limit_updates_what_nats_holds() {
    let nats = Nats::start();
    let config = |ttl: u64, bytes: i64| arcana::config::ClusterConfig {
        nats_url: nats.url(),
        lease_ttl_ms: ttl,
        stream_max_bytes: bytes,
        ..Default::default()
    };
    arcana::cluster::Bus::connect(&config(1000, 1 << 20))
        .await
        .unwrap();
    let bus = arcana::cluster::Bus::connect(&config(2500, 2 << 20))
        .await
        .unwrap();
    let mut kv = bus.js.get_stream("KV_arcana_leases").await.unwrap();
    let kv = kv.info().await.unwrap().config.clone();
    assert_eq!(kv.max_age, Duration::from_millis(2500));
    let mut changes = bus.js.get_stream("ARCANA_CHANGES").await.unwrap();
    assert_eq!(changes.info().await.unwrap().config.max_bytes, 2 << 20);
}

#[tokio::test]
async fn a_lease_goes_to_one_node_and_passes_on_at_expiry_or_release() {
    use arcana::cluster::{Bus, Lease, Renewal};
    let nats = Nats::start();
    let config = |id: &str| arcana::config::ClusterConfig {
        nats_url: nats.url(),
        node_id: id.into(),
        lease_ttl_ms: 600,
        ..Default::default()
    };
    let a = Bus::connect(&config("a")).await.unwrap();
    let b = Bus::connect(&config("b")).await.unwrap();
    let mut held = Lease::try_take(&a, "view-x").await.unwrap().expect("free");
    assert!(Lease::try_take(&b, "view-x").await.unwrap().is_none());
    assert_eq!(
        Lease::holder(&b, "view-x").await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(held.renew().await, Renewal::Held);
    // Nobody renews: it expires and the other node gets it.
    let started = tokio::time::Instant::now();
    let taken = loop {
        if let Some(l) = Lease::try_take(&b, "view-x").await.unwrap() {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(held.renew().await, Renewal::Lost(_)));
    // Released, it is free at once.
    taken.release().await;
    assert!(Lease::try_take(&a, "view-x").await.unwrap().is_some());
}

#[tokio::test]
async fn a_leader_that_stops_cleanly_hands_over_without_waiting_for_its_lease() {
    let _g = serial().await;
    // A lease that would take 12 s to expire.
    let mut c = Cluster::start_with("wal", 12_000).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut subs = vec![subscribe(&c.nodes[follower]).await];
    let stopped = tokio::time::Instant::now();
    c.nodes[leader].terminate();
    c.sql("UPDATE tasks SET title = 'Written during a clean handover' WHERE id = 2")
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        let holders = c.slot_holders().await;
        // The old walsender may linger a moment after its node exits.
        if let Some(i) = c
            .nodes
            .iter()
            .enumerate()
            .position(|(i, n)| i != leader && holders.contains(&format!("arcana-{}", n.id)))
        {
            break i;
        }
        // Followers look every third of the TTL (4 s): well before it expires.
        assert!(
            tokio::time::Instant::now() < deadline,
            "no takeover after {:?}",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(next, leader);
    converge(&c, &mut subs).await;
    assert_eq!(c.slot_holders().await.len(), 1);
}

/// The evaluations each node's Stats count for the `acme` workspace.
async fn evaluations(node: &NodeProc) -> u64 {
    let ch = Channel::from_shared(node.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ArcanaServiceClient::with_interceptor(ch, Bearer("dev-service".into()))
        .stats(arcana::proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .evaluations
}

#[tokio::test]
async fn with_view_owners_a_view_is_evaluated_on_one_node_and_every_node_shows_its_versions() {
    let _g = serial().await;
    let c = Cluster::start_owners().await;
    c.leader().await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    for i in 0..3 {
        c.sql(&format!(
            "UPDATE tasks SET title = 'Owned {i}' WHERE id = 2"
        ))
        .await;
        converge(&c, &mut subs).await;
    }
    // Every node reaches the same epoch and version.
    let (epoch, version) = {
        let v = subs[0].0.view(&subs[0].1);
        (v.epoch, v.version)
    };
    for (l, v) in subs.iter_mut() {
        l.wait_until(v, |s| s.epoch == epoch && s.version >= version)
            .await;
        assert_eq!((l.view(v).epoch, l.view(v).version), (epoch, version));
    }
    // One node evaluated it: the first subscriber's, which owns it.
    let mut counts = Vec::new();
    for n in &c.nodes {
        counts.push(evaluations(n).await);
    }
    assert!(counts[0] >= 1, "{counts:?}");
    assert_eq!(
        &counts[1..],
        &[0, 0],
        "followers evaluate nothing: {counts:?}"
    );
}

/// Subscribes `l` to the first `limit` tasks of project 1 (`task_window`);
/// returns the view id.
async fn task_window(l: &mut Live, limit: u32) -> String {
    l.subscribe_window(
        "task_window",
        params(&[("project_id", int(1))]),
        Some(arcana::proto::Window {
            limit,
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .view_id
}

/// The publish queue is bounded: past `cluster.publish_queue` an owner's
/// frames go unpublished, and every node still converges on the truth
/// (followers that miss a frame reload from the owner).
#[tokio::test]
async fn with_view_owners_frames_past_the_publish_queue_go_unpublished_and_nodes_converge() {
    let _g = serial().await;
    let c = Cluster::start_full("wal", 1500, "view_owners = true\npublish_queue = 1\n").await;
    c.leader().await;
    // Node 0 owns eight windows of one graph: a change patches them in one
    // round, whose frames come faster than the stream acknowledges one.
    let mut owner = c.nodes[0].live("dev-alice").await;
    let mut windows = Vec::new();
    for limit in 1..=8u32 {
        windows.push(task_window(&mut owner, limit).await);
    }
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    // Followers of some of the same windows on the other nodes.
    let mut followers = Vec::new();
    for n in &c.nodes[1..] {
        let mut l = n.live("dev-alice").await;
        let mut ids = Vec::new();
        for limit in [1u32, 8] {
            ids.push((limit as usize, task_window(&mut l, limit).await));
        }
        followers.push((l, ids));
    }
    let warned = || {
        std::fs::read_to_string(&c.nodes[0].log)
            .unwrap_or_default()
            .contains("cluster.publish_queue")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while !warned() {
        assert!(
            std::time::Instant::now() < deadline,
            "a publish queue of one frame never overflowed"
        );
        round += 1;
        c.sql(&format!(
            "UPDATE tasks SET title = 'Burst {round}' WHERE id = 1"
        ))
        .await;
    }
    // Every node converges, windows included, and goes on after it.
    for last in ["Burst done", "After the burst"] {
        c.sql(&format!("UPDATE tasks SET title = '{last}' WHERE id = 1"))
            .await;
        converge(&c, &mut subs).await;
        let expected = c.expected_titles().await;
        for (l, ids) in followers.iter_mut() {
            for (limit, id) in ids.iter() {
                let want = &expected[..(*limit).min(expected.len())];
                l.wait_until(id, |s| titles(s) == want).await;
            }
        }
    }
    drop(windows);
}

#[tokio::test]
async fn with_view_owners_a_client_moving_to_another_node_catches_up() {
    let _g = serial().await;
    let c = Cluster::start_owners().await;
    c.leader().await;
    // The owner keeps the view alive; the client starts on a follower.
    let mut keeper = subscribe(&c.nodes[0]).await;
    let (away, view_id) = subscribe(&c.nodes[1]).await;
    let before = away.view(&view_id).clone();
    drop(away);
    for i in 0..3 {
        c.sql(&format!(
            "UPDATE tasks SET title = 'Missed {i}' WHERE id = 3"
        ))
        .await;
    }
    converge(&c, std::slice::from_mut(&mut keeper)).await;
    let target = keeper.0.view(&keeper.1).version;
    assert!(target > before.version);
    // Back on the third node, which has not seen the view yet.
    let mut back = c.nodes[2].live("dev-alice").await;
    let r = back
        .resume(
            &view_id,
            &before,
            "project_tasks",
            params(&[("project_id", int(1))]),
        )
        .await;
    let res = &r.results[0];
    assert!(res.error.is_none(), "{res:?}");
    assert_eq!(res.mode, arcana::proto::SyncMode::CatchUp as i32, "{res:?}");
    assert_eq!(res.version, target);
    back.wait_version(&view_id, target).await;
    let expected = c.expected_titles().await;
    assert_eq!(titles(back.view(&view_id)), expected);
    // And it goes on receiving the owner's versions.
    c.sql("UPDATE tasks SET title = 'After the move' WHERE id = 3")
        .await;
    let mut subs = vec![keeper, (back, view_id)];
    converge(&c, &mut subs).await;
}

#[tokio::test]
async fn with_view_owners_killing_the_owner_moves_the_view_without_a_gap() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    // Node 0 owns the view (first subscriber); nodes 1 and 2 follow it.
    let _owner = subscribe(&c.nodes[0]).await;
    let mut subs = vec![subscribe(&c.nodes[1]).await, subscribe(&c.nodes[2]).await];
    c.sql("UPDATE tasks SET title = 'Before the kill' WHERE id = 1")
        .await;
    converge(&c, &mut subs).await;
    let old_epoch = subs[0].0.view(&subs[0].1).epoch;
    let seen: Vec<usize> = subs.iter().map(|(l, _)| l.frames.len()).collect();
    c.nodes[0].kill();
    let killed = tokio::time::Instant::now();
    for i in 0..6 {
        c.sql(&format!(
            "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'Orphaned {i}', {})",
            200 + i
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every frame applied cleanly (the client panics on a misapplied
    // diff), and both converge to SQL in the same epoch: the new owner
    // goes on from the old one's last frame, with diffs only.
    converge(&c, &mut subs).await;
    assert!(killed.elapsed() < Duration::from_secs(15));
    let (epoch, version) = {
        let v = subs[0].0.view(&subs[0].1);
        (v.epoch, v.version)
    };
    assert_eq!(epoch, old_epoch, "the new owner keeps the epoch");
    for ((l, _), from) in subs.iter().zip(&seen) {
        assert_eq!(
            snapshots(&l.frames[*from..]),
            0,
            "no snapshot after the kill"
        );
    }
    let (l, v) = &mut subs[1];
    l.wait_until(v, |s| s.epoch == epoch && s.version >= version)
        .await;
    c.sql("UPDATE tasks SET title = 'After the kill' WHERE id = 1")
        .await;
    converge(&c, &mut subs).await;
    let mut counts = Vec::new();
    for n in &c.nodes[1..] {
        counts.push(evaluations(n).await);
    }
    assert_eq!(
        counts.iter().filter(|&&n| n > 0).count(),
        1,
        "one survivor evaluates: {counts:?}"
    );
}

#[tokio::test]
async fn with_view_owners_an_owner_that_stops_cleanly_hands_its_views_over() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    let _owner = subscribe(&c.nodes[0]).await;
    let mut subs = vec![subscribe(&c.nodes[1]).await];
    let old_epoch = subs[0].0.view(&subs[0].1).epoch;
    let seen = subs[0].0.frames.len();
    // SIGTERM: the node stops within its grace and hands its leases back.
    let n = &mut c.nodes[0];
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while n.child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.alive = false;
    c.sql("UPDATE tasks SET title = 'After the owner left' WHERE id = 4")
        .await;
    converge(&c, &mut subs).await;
    assert_eq!(subs[0].0.view(&subs[0].1).epoch, old_epoch);
    assert_eq!(snapshots(&subs[0].0.frames[seen..]), 0);
}

#[tokio::test]
async fn with_view_owners_a_mutation_on_a_follower_replies_after_its_frames() {
    let _g = serial().await;
    let c = Cluster::start_owners().await;
    c.leader().await;
    let _owner = subscribe(&c.nodes[0]).await;
    let (mut l, v) = subscribe(&c.nodes[1]).await;
    for i in 0..3 {
        let title = format!("Written on a follower {i}");
        l.mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text(&title))]),
        )
        .await
        .unwrap();
        // No wait: the frames came before the reply.
        assert!(
            titles(l.view(&v)).contains(&title),
            "{:?}",
            titles(l.view(&v))
        );
    }
}

#[tokio::test]
async fn with_view_owners_after_a_nats_outage_longer_than_the_lease_one_node_owns_each_view() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    c.nats.stop();
    // Every lease, the view's included, outlives its TTL unrenewed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.sql("UPDATE tasks SET title = 'During the outage' WHERE id = 2")
        .await;
    c.nats.start_again();
    c.leader().await;
    let mut subs = come_back(&c, subs).await;
    converge(&c, &mut subs).await;
    // Settled: one node evaluates the next write, and every node shows
    // the same epoch and version.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut before = Vec::new();
    for n in &c.nodes {
        before.push(evaluations(n).await);
    }
    // An insert, which the update fast path cannot patch in.
    c.sql(
        "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'After the outage', 400)",
    )
    .await;
    converge(&c, &mut subs).await;
    let (epoch, version) = {
        let v = subs[0].0.view(&subs[0].1);
        (v.epoch, v.version)
    };
    for (l, v) in subs.iter_mut() {
        l.wait_until(v, |s| s.epoch == epoch && s.version >= version)
            .await;
    }
    let mut grew = 0;
    for (i, n) in c.nodes.iter().enumerate() {
        if evaluations(n).await > before[i] {
            grew += 1;
        }
    }
    assert_eq!(grew, 1, "one node evaluated the write");
}

/// After every node sent its clients away (a NATS outage longer than a
/// lease), each subscriber reads its stream to the end (UNAVAILABLE) and
/// resumes on the same node with Sync, once the node takes sessions again.
async fn come_back(c: &Cluster, subs: Vec<(Live, String)>) -> Vec<(Live, String)> {
    let mut out = Vec::new();
    for (i, (mut l, v)) in subs.into_iter().enumerate() {
        let status = loop {
            if let Err(s) = l.read_one().await {
                break s;
            }
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let (back, _) = resume_on(&c.nodes[i], &v, l.view(&v)).await;
        out.push((back, v));
    }
    out
}

/// How many of `frames` are snapshots.
fn snapshots(frames: &[arcana::proto::ViewFrame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f.body, Some(arcana::proto::view_frame::Body::Snapshot(_))))
        .count()
}

/// Resumes `state` of project 1's tasks on `node` with Sync; its mode.
async fn resume_on(node: &NodeProc, view_id: &str, state: &ViewState) -> (Live, i32) {
    let mut l = node.live("dev-alice").await;
    let r = l
        .resume(
            view_id,
            state,
            "project_tasks",
            params(&[("project_id", int(1))]),
        )
        .await;
    let res = &r.results[0];
    assert!(res.error.is_none(), "{res:?}");
    let mode = res.mode;
    (l, mode)
}

#[tokio::test]
async fn with_view_owners_a_view_nobody_holds_any_more_goes_on_from_its_checkpoint() {
    let _g = serial().await;
    let c = Cluster::start_owners().await;
    c.leader().await;
    // Only node 0 ever has the view; its last subscriber leaves, so it
    // closes there and its lease is handed back.
    let mut subs = vec![subscribe(&c.nodes[0]).await];
    c.sql("UPDATE tasks SET title = 'Kept 0' WHERE id = 2")
        .await;
    converge(&c, &mut subs).await;
    let (l, view_id) = subs.pop().unwrap();
    let before = l.view(&view_id).clone();
    drop(l);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..4 {
        c.sql(&format!("UPDATE tasks SET title = 'Kept {i}' WHERE id = 2"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Back on another node: the view goes on in the same epoch, and the
    // client gets one diff instead of a snapshot.
    let (mut back, mode) = resume_on(&c.nodes[1], &view_id, &before).await;
    assert_eq!(mode, arcana::proto::SyncMode::CatchUp as i32);
    let expected = c.expected_titles().await;
    back.wait_until(&view_id, |s| titles(s) == expected).await;
    let now = back.view(&view_id);
    assert_eq!(now.epoch, before.epoch);
    assert!(now.version > before.version);
    assert_eq!(snapshots(&back.frames), 0);
}

#[tokio::test]
async fn with_view_owners_a_killed_owners_view_goes_on_from_its_checkpoint_and_kept_frames() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    // Only node 0 has the view.
    let (mut l, view_id) = subscribe(&c.nodes[0]).await;
    // Its first checkpoint is written within a third of the lease TTL.
    wait_for_a_checkpoint(&c).await;
    for i in 0..3 {
        c.sql(&format!(
            "UPDATE tasks SET title = 'Crash {i}' WHERE id = 3"
        ))
        .await;
    }
    let expected = c.expected_titles().await;
    l.wait_until(&view_id, |s| titles(s) == expected).await;
    let before = l.view(&view_id).clone();
    c.nodes[0].kill();
    drop(l);
    c.sql("UPDATE tasks SET title = 'After the crash' WHERE id = 3")
        .await;
    // The checkpoint plus the frames after it rebuild the state the
    // client holds: it gets the diffs it missed.
    let (mut back, mode) = resume_on(&c.nodes[2], &view_id, &before).await;
    assert_eq!(mode, arcana::proto::SyncMode::CatchUp as i32);
    let expected = c.expected_titles().await;
    back.wait_until(&view_id, |s| titles(s) == expected).await;
    assert_eq!(back.view(&view_id).epoch, before.epoch);
    assert_eq!(snapshots(&back.frames), 0);
}

#[tokio::test]
async fn with_view_owners_rolling_every_node_sends_no_snapshot() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    c.sql(
        "INSERT INTO projects (id, workspace_id, name, owner_id) \
         SELECT g, 'acme', 'Roll ' || g, 'alice' FROM generate_series(10, 15) g",
    )
    .await;
    // Six views; each session holds one, on the node of its index, so some
    // views live on one node only and some on several.
    struct Held {
        live: Live,
        view: String,
        project: i64,
        node: usize,
        moved: bool,
    }
    let mut held = Vec::new();
    for i in 0..12usize {
        let project = 10 + (i % 6) as i64;
        let node = (i * 7 / 3) % 3;
        let mut l = c.nodes[node].live("dev-alice").await;
        let view = l
            .subscribe("project_tasks", params(&[("project_id", int(project))]))
            .await
            .unwrap()
            .view_id;
        held.push(Held {
            live: l,
            view,
            project,
            node,
            moved: false,
        });
    }
    let mut n = 0;
    let mut write = async |c: &Cluster| {
        n += 1;
        c.sql(&format!(
            "INSERT INTO tasks (workspace_id, project_id, title, position) \
             SELECT 'acme', g, 'Rolled {n}', {n} FROM generate_series(10, 15) g"
        ))
        .await;
    };
    let mut modes = Vec::new();
    for down in 0..3 {
        write(&c).await;
        c.nodes[down].terminate();
        write(&c).await;
        // Its sessions move to the next node and resume there.
        for h in held.iter_mut().filter(|h| h.node == down) {
            let to = (down + 1) % 3;
            let state = h.live.view(&h.view).clone();
            let mut l = c.nodes[to].live("dev-alice").await;
            let r = l
                .resume(
                    &h.view,
                    &state,
                    "project_tasks",
                    params(&[("project_id", int(h.project))]),
                )
                .await;
            assert!(r.results[0].error.is_none(), "{r:?}");
            modes.push(r.results[0].mode);
            h.live = l;
            h.node = to;
            h.moved = true;
        }
        write(&c).await;
        c.nodes[down].start_again();
        drop(c.nodes[down].live("dev-alice").await);
        c.leader().await;
    }
    write(&c).await;
    for h in held.iter_mut() {
        let expected: Vec<String> = c
            .query(&format!(
                "SELECT title FROM tasks WHERE workspace_id = 'acme' AND project_id = {} \
                 ORDER BY position, id LIMIT 50",
                h.project
            ))
            .await
            .iter()
            .map(|r| r.get(0))
            .collect();
        h.live.wait_until(&h.view, |s| titles(s) == expected).await;
        // Its first subscription's snapshot only; none after a move.
        let expected = usize::from(!h.moved);
        assert_eq!(snapshots(&h.live.frames), expected, "{}", h.view);
    }
    assert!(
        modes
            .iter()
            .all(|m| *m != arcana::proto::SyncMode::Snapshot as i32),
        "{modes:?}"
    );
}

#[tokio::test]
async fn with_view_owners_a_version_the_dead_owner_never_got_out_is_answered_with_a_snapshot() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    let (mut owner, view_id) = subscribe(&c.nodes[0]).await;
    let mut subs = vec![subscribe(&c.nodes[1]).await];
    converge(&c, &mut subs).await;
    // With NATS gone, a write on the owner reaches its own client only.
    c.nats.stop();
    owner
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("Never published"))]),
        )
        .await
        .unwrap();
    let orphan = owner.view(&view_id).clone();
    assert!(titles(&orphan).contains(&"Never published".to_owned()));
    c.nodes[0].kill();
    drop(owner);
    c.nats.start_again();
    // Node 1 takes the view over in the same epoch, past that version.
    let expected = c.expected_titles().await;
    let (l, v) = &mut subs[0];
    l.wait_until(v, |s| titles(s) == expected).await;
    assert_eq!(l.view(v).epoch, orphan.epoch);
    assert!(l.view(v).version > orphan.version);
    // The orphan version is not on the new owner's chain: a diff from it
    // would not apply, so Sync answers with a snapshot.
    let (mut back, mode) = resume_on(&c.nodes[1], &view_id, &orphan).await;
    assert_eq!(mode, arcana::proto::SyncMode::Snapshot as i32);
    back.wait_until(&view_id, |s| titles(s) == expected).await;
}

#[tokio::test]
async fn with_view_owners_a_view_bigger_than_a_nats_message_reaches_a_follower() {
    let _g = serial().await;
    let c = Cluster::start_owners().await;
    c.leader().await;
    // 50 tasks of 40 KB each: about 2 MB, twice NATS's default max_payload.
    c.sql(
        "ALTER TABLE tasks DROP CONSTRAINT tasks_title_check; \
         UPDATE tasks SET title = repeat('x', 40000) || id WHERE project_id = 1; \
         INSERT INTO tasks (workspace_id, project_id, title, position) \
         SELECT 'acme', 1, repeat('y', 40000) || g, 100 + g FROM generate_series(1, 50) g",
    )
    .await;
    let mut subs = vec![subscribe(&c.nodes[0]).await, subscribe(&c.nodes[1]).await];
    converge(&c, &mut subs).await;
    c.sql("UPDATE tasks SET title = 'Small again' WHERE id = 1")
        .await;
    converge(&c, &mut subs).await;
    assert_eq!(
        subs[0].0.view(&subs[0].1).version,
        subs[1].0.view(&subs[1].1).version
    );
}

/// A TCP relay to NATS that the test can cut: one node's link alone.
struct Relay {
    port: u16,
    /// NATS's port; links wait until it is set.
    to: std::sync::Arc<std::sync::atomic::AtomicU16>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let to = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, c, ls) = (to.clone(), cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let t = t.clone();
                let link = tokio::spawn(async move {
                    while t.load(Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let to = t.load(Ordering::SeqCst);
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                ls.lock().unwrap().push(link);
            }
        });
        Relay {
            port,
            to,
            cut,
            links,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn relay_to(&self, nats_url: &str) {
        let port = nats_url.rsplit(':').next().unwrap().parse().unwrap();
        self.to.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every link and refuses new ones until `restore`.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.links.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn with_view_owners_a_node_cut_off_from_nats_sends_its_clients_elsewhere() {
    let _g = serial().await;
    let relay = Relay::start().await;
    let c =
        Cluster::start_relayed("wal", 1500, "view_owners = true\n", Some((0, relay.url()))).await;
    relay.relay_to(&c.nats.url());
    c.leader().await;
    let (mut cut, view_id) = subscribe(&c.nodes[0]).await;
    let mut subs = vec![subscribe(&c.nodes[1]).await];
    converge(&c, &mut subs).await;
    relay.cut();
    // Past a lease TTL without NATS, node 0 ends its sessions.
    let status = loop {
        match cut.read_one().await {
            Ok(()) => continue,
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("another node"), "{status:?}");
    // And refuses new ones while cut off.
    let ch = Channel::from_shared(c.nodes[0].endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = Live::connect(ArcanaServiceClient::with_interceptor(
        ch,
        Bearer("dev-alice".into()),
    ))
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    // Meanwhile the others go on: node 1 owns the view now.
    c.sql("UPDATE tasks SET title = 'While cut off' WHERE id = 2")
        .await;
    converge(&c, &mut subs).await;
    // The client moves to node 2 and catches up.
    let held = cut.view(&view_id).clone();
    let (mut moved, mode) = resume_on(&c.nodes[2], &view_id, &held).await;
    assert_eq!(mode, arcana::proto::SyncMode::CatchUp as i32);
    let expected = c.expected_titles().await;
    moved.wait_until(&view_id, |s| titles(s) == expected).await;
    // Once the link is back, node 0 serves again.
    relay.restore();
    let mut back = c.nodes[0].live("dev-alice").await;
    let v = back
        .subscribe("project_tasks", params(&[("project_id", int(1))]))
        .await
        .unwrap()
        .view_id;
    back.wait_until(&v, |s| titles(s) == expected).await;
}

#[tokio::test]
async fn a_notify_call_on_one_node_reaches_views_owned_and_followed_elsewhere() {
    let _g = serial().await;
    // No change source: only mutations and Notify calls move views.
    let c = Cluster::start_full("none", 1500, "view_owners = true\n").await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        subs.push(subscribe(n).await);
    }
    c.sql("UPDATE tasks SET title = 'Told by Notify' WHERE id = 2")
        .await;
    let ch = Channel::from_shared(c.nodes[2].endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ArcanaServiceClient::with_interceptor(ch, Bearer("dev-service".into()));
    client
        .notify(arcana::proto::NotifyRequest {
            changes: vec![arcana::proto::Change {
                table: "tasks".into(),
                id: "2".into(),
                columns: vec!["title".into()],
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    converge(&c, &mut subs).await;
}

#[tokio::test]
async fn without_a_change_source_a_mutation_reaches_every_node() {
    let _g = serial().await;
    let c = Cluster::start_full("none", 1500, "view_owners = true\n").await;
    // Node 1 owns the view; nodes 0 and 2 follow it; node 0 writes.
    let mut subs = vec![subscribe(&c.nodes[1]).await];
    subs.push(subscribe(&c.nodes[0]).await);
    subs.push(subscribe(&c.nodes[2]).await);
    // A second view, only on node 2: nothing forwards the write to it.
    let mut other = c.nodes[2].live("dev-alice").await;
    let v2 = other
        .subscribe("project_tasks", params(&[("project_id", int(2))]))
        .await
        .unwrap()
        .view_id;
    let before = other.view(&v2).refs.len();
    subs[1]
        .0
        .mutate(
            "create_task",
            params(&[("project_id", int(2)), ("title", text("Heard everywhere"))]),
        )
        .await
        .unwrap();
    other.wait_until(&v2, |s| s.refs.len() == before + 1).await;
}

#[tokio::test]
async fn with_no_room_for_checkpoints_a_view_nobody_holds_starts_a_new_epoch() {
    let _g = serial().await;
    let c = Cluster::start_full("wal", 1500, "view_owners = true\ncheckpoint_queue = 0\n").await;
    c.leader().await;
    let (l, view_id) = subscribe(&c.nodes[0]).await;
    let before = l.view(&view_id).clone();
    drop(l);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.sql("UPDATE tasks SET title = 'Not kept' WHERE id = 2")
        .await;
    // Nothing was kept of the view: the client gets a snapshot of a new
    // life, still exact.
    let (mut back, mode) = resume_on(&c.nodes[1], &view_id, &before).await;
    assert_eq!(mode, arcana::proto::SyncMode::Snapshot as i32);
    let expected = c.expected_titles().await;
    back.wait_until(&view_id, |s| titles(s) == expected).await;
    assert_ne!(back.view(&view_id).epoch, before.epoch);
}

#[tokio::test]
async fn a_lease_handed_back_is_taken_over_at_once_not_at_the_next_check() {
    let _g = serial().await;
    // Followers check leases every 30 s here: only the release itself can
    // wake them within the test's wait.
    let mut c = Cluster::start_full("wal", 90_000, "view_owners = true\n").await;
    let leader = c.leader().await;
    let owner = (leader + 1) % 3;
    let follower = (leader + 2) % 3;
    let _o = subscribe(&c.nodes[owner]).await;
    let mut subs = vec![subscribe(&c.nodes[follower]).await];
    let epoch = subs[0].0.view(&subs[0].1).epoch;
    c.nodes[owner].terminate();
    c.sql("UPDATE tasks SET title = 'Taken over at once' WHERE id = 4")
        .await;
    converge(&c, &mut subs).await;
    assert_eq!(subs[0].0.view(&subs[0].1).epoch, epoch);
}

#[tokio::test]
async fn a_follower_learns_of_a_new_life_its_view_began_on_another_node() {
    let _g = serial().await;
    // No checkpoints, so an owner without a copy of the view starts a new
    // epoch.
    let mut c =
        Cluster::start_full("wal", 1500, "view_owners = true\ncheckpoint_queue = 0\n").await;
    let leader = c.leader().await;
    let (owner, follower) = ((leader + 1) % 3, (leader + 2) % 3);
    let _o = subscribe(&c.nodes[owner]).await;
    let mut subs = vec![subscribe(&c.nodes[follower]).await];
    converge(&c, &mut subs).await;
    // The owner dies and comes straight back under the same node id, so
    // its lease never lapses; meanwhile a write that nobody evaluated.
    c.nodes[owner].kill();
    c.sql("UPDATE tasks SET title = 'While nobody owned it' WHERE id = 2")
        .await;
    c.nodes[owner].start_again();
    // A subscriber there makes it own the view again, in a new life.
    subs.push(subscribe(&c.nodes[owner]).await);
    converge(&c, &mut subs).await;
}

/// Waits until the checkpoint bucket holds a checkpoint.
async fn wait_for_a_checkpoint(c: &Cluster) {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(store) = js.get_object_store("ARCANA_VIEWS").await {
            if let Ok(mut list) = store.list().await {
                if list.next().await.is_some_and(|o| o.is_ok()) {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint was written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key of the only view lease in the lease bucket.
async fn the_view_lease(kv: &async_nats::jetstream::kv::Store) -> String {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let keys: Vec<String> = kv
            .keys()
            .await
            .unwrap()
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        let views: Vec<&String> = keys.iter().filter(|k| k.starts_with("view-")).collect();
        if let [one] = views.as_slice() {
            return one.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "view leases: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_view_owners_a_term_whose_first_frame_never_got_out_is_never_made_again() {
    let _g = serial().await;
    let mut c = Cluster::start_owners().await;
    c.leader().await;
    // Node 0 loses each term's first frame on its way to the stream, as
    // when NATS goes away at that moment; its own clients still get it.
    c.nodes[0].kill();
    c.nodes[0].env = vec![("ARCANA_FAULT_LOSE_TERM_STARTS".into(), "1".into())];
    c.nodes[0].start_again();
    let (mut owner, view_id) = subscribe(&c.nodes[0]).await;
    let mut subs = vec![subscribe(&c.nodes[1]).await];
    converge(&c, &mut subs).await;
    // The lease moves on under node 0 (as after an outage that outlived
    // it): node 0 takes it back and starts a new term.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let leases = js.get_key_value("arcana_leases").await.unwrap();
    let key = the_view_lease(&leases).await;
    let holder = leases.get(&key).await.unwrap().unwrap();
    leases.put(&key, holder).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut k = 0;
    while owner.view(&view_id).version < 1 << 32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 never started a new term"
        );
        // A row the view always shows (new rows would soon pass its limit).
        k += 1;
        let title = format!("Before the new term {k}");
        c.sql(&format!("UPDATE tasks SET title = '{title}' WHERE id = 1"))
            .await;
        owner
            .wait_until(&view_id, |s| titles(s).contains(&title))
            .await;
    }
    // The owner dies right after; the term's first version exists only on
    // its client.
    let orphan = owner.view(&view_id).clone();
    c.nodes[0].kill();
    drop(owner);
    c.sql("INSERT INTO tasks (workspace_id, project_id, title) VALUES ('acme', 1, 'After the owner died')")
        .await;
    // Node 1 takes over in the same epoch, in a term of its own.
    converge(&c, &mut subs).await;
    let (l, v) = &subs[0];
    assert_eq!(l.view(v).epoch, orphan.epoch);
    assert_ne!(
        l.view(v).version >> 32,
        orphan.version >> 32,
        "the new owner made versions of a term another node had used"
    );
    // So the orphan's version is not on its chain: a snapshot, and the
    // client ends with the truth.
    let (mut back, mode) = resume_on(&c.nodes[1], &view_id, &orphan).await;
    assert_eq!(mode, arcana::proto::SyncMode::Snapshot as i32);
    let expected = c.expected_titles().await;
    back.wait_until(&view_id, |s| titles(s) == expected).await;
}
