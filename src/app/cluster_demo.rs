//! `arcana demo --cluster N`: the task-board demo on N cluster nodes in one
//! process, sharing a throwaway PostgreSQL and a local nats-server.

use std::path::PathBuf;
use std::time::Duration;

use super::{App, DEMO_CONFIG, DEMO_SCHEMA};
use crate::config::{ClusterConfig, Config};
use crate::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// Where nats-server may be: on the PATH, or where Debian puts it.
fn nats_server() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server is not installed: run scripts/nats.sh install (or apt-get install nats-server), \
             or pass --nats-url"
                .into()
        })
}

/// A nats-server child with JetStream, killed with the demo.
struct LocalNats {
    url: String,
    _child: tokio::process::Child,
    dir: PathBuf,
}

impl LocalNats {
    async fn start() -> Result<LocalNats, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port for NATS: {e}"))?
            .port();
        let dir =
            std::env::temp_dir().join(format!("arcana-demo-nats-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let child = tokio::process::Command::new(nats_server()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting nats-server: {e}"))?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(LocalNats {
                    url: format!("nats://127.0.0.1:{port}"),
                    _child: child,
                    dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("nats-server did not start listening".into())
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `n` nodes until Ctrl-C or SIGTERM.
pub async fn run(
    n: u16,
    database_url: Option<String>,
    listen: String,
    nats_url: Option<String>,
) -> Result<(), String> {
    let base: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e} (the cluster demo needs an IP:port)"))?;
    let (pg, url) = match database_url {
        Some(url) => (None, url),
        None => {
            eprintln!("starting a throwaway PostgreSQL...");
            let pg = EmbeddedPostgres::start(EmbeddedOptions::default()).await?;
            let url = pg.url("postgres");
            (Some(pg), url)
        }
    };
    let r = run_nodes(n, &url, base, nats_url).await;
    if let Some(pg) = pg {
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("throwaway PostgreSQL stopped and removed");
    }
    r
}

async fn run_nodes(
    n: u16,
    url: &str,
    base: std::net::SocketAddr,
    nats_url: Option<String>,
) -> Result<(), String> {
    crate::postgres::execute_script(url, DEMO_SCHEMA)
        .await
        .map_err(|e| format!("loading the demo schema: {e} (an existing database must not already hold the demo tables)"))?;
    let (nats, nats_url) = match nats_url {
        Some(u) => (None, u),
        None => {
            let nats = LocalNats::start().await?;
            let u = nats.url.clone();
            (Some(nats), u)
        }
    };
    let mut apps = Vec::new();
    for i in 0..n {
        let mut config = Config::parse(DEMO_CONFIG)?;
        config.server.admin_listen = Some("127.0.0.1:0".into());
        config.cluster = Some(ClusterConfig {
            nats_url: nats_url.clone(),
            node_id: format!("node-{}", i + 1),
            ..ClusterConfig::default()
        });
        let mut addr = base;
        addr.set_port(base.port().checked_add(i).ok_or("--listen port too high")?);
        // Each node's port opens once that node is ready.
        let socket = super::bind(&addr.to_string()).await?;
        apps.push(App::start_bound(&config, url, socket).await?);
    }
    // The tour is printed once every node's port accepts connections.
    for a in &apps {
        a.opened().await;
    }
    println!("\nArcana cluster demo: {n} nodes sharing one PostgreSQL and NATS at {nats_url}   (Ctrl-C to stop)\n");
    for (i, a) in apps.iter().enumerate() {
        let admin = a.admin_addr.map(|a| a.to_string()).unwrap_or_default();
        println!("  node-{}  gRPC {}   admin http://{admin}", i + 1, a.addr);
    }
    let first = apps[0].addr;
    let last = apps[apps.len() - 1].addr;
    println!(
        r#"
Subscribe on one node:
  grpcurl -plaintext -H 'authorization: Bearer dev-alice' -d '{{"request_id": 1, "subscribe": {{"graph": "project_tasks", "params": {{"project_id": {{"int": 1}}}}}}}}' {last} arcana.v1.ArcanaService/Connect

Write through another node, or with psql; every node's subscribers see it:
  grpcurl -plaintext -H 'authorization: Bearer dev-alice' -d '{{"mutation": "create_task", "params": {{"project_id": {{"int": 1}}, "title": {{"string": "Hello cluster"}}}}}}' {first} arcana.v1.ArcanaService/Mutate
  psql '{url}' -c "UPDATE tasks SET title = 'Renamed' WHERE id = 2"

The node reading the WAL:
  psql '{url}' -c "SELECT application_name FROM pg_stat_replication"
"#
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    for a in apps {
        a.stop().await?;
    }
    drop(nats);
    Ok(())
}
