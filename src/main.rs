//! The `arcana` command: `serve` a config, or run the `demo`.

use std::path::PathBuf;

use arcana::app::{bind, App, DEMO_CONFIG, DEMO_SCHEMA};
use arcana::config::{Config, TelemetryConfig};
use arcana::ops::logs::LogFormat;
use arcana::ops::telemetry::Telemetry;
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "arcana",
    version,
    about = "Reactive graph sync engine for PostgreSQL, served over gRPC"
)]
struct Cli {
    /// Log lines as `text` or `json` (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Export traces to this OTLP/gRPC collector (`serve` and `demo`);
    /// overrides `telemetry.otlp_endpoint`.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The `service.name` of exported traces; overrides
    /// `telemetry.service_name`.
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME")]
    otel_service_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the graphs and mutations of a config file.
    Serve {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `database.url`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `server.admin_listen` (metrics and health over HTTP).
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Run the task-board demo. Without a database URL, starts a throwaway
    /// PostgreSQL from the local binaries and removes it on exit.
    Demo {
        /// Use this database instead (the demo schema is loaded into it).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = arcana::config::DEFAULT_LISTEN)]
        listen: String,
        /// Address of the admin HTTP listener (metrics, health); port 0
        /// picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        admin_listen: String,
        /// Run this many cluster nodes over NATS JetStream instead of one
        /// server, on consecutive ports from `--listen`'s. Starts a local
        /// nats-server unless `--nats-url` names one.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=16))]
        cluster: Option<u16>,
        /// The NATS server of `--cluster` (with JetStream enabled).
        #[arg(long, requires = "cluster")]
        nats_url: Option<String>,
    },
    /// Typed params and rows for every graph and mutation, in TypeScript,
    /// Go or Swift: from a config and its database (`--config`, which adds
    /// the tables' and offline tables' row types), or from a running
    /// server's Describe (`--server`, `--token`).
    Codegen {
        /// `ts`, `go` or `swift`.
        #[arg(long, value_parser = ["ts", "go", "swift"])]
        lang: String,
        /// Generate from this TOML config, building its registry against
        /// the database as the server would at startup; no server, no token.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// With `--config`: the database (overrides `database.url`).
        /// DATABASE_URL is not read here, so a set environment cannot
        /// clash with `--schema`.
        #[arg(long, requires = "config")]
        database_url: Option<String>,
        /// With `--config` and no database URL: start a throwaway
        /// PostgreSQL, load this SQL file into it, generate, and remove it.
        #[arg(long, requires = "config", conflicts_with = "database_url")]
        schema: Option<PathBuf>,
        /// The server to ask (Describe) [default: http://127.0.0.1:50051].
        #[arg(long, conflicts_with = "config")]
        server: Option<String>,
        /// A bearer token for Describe (not used with `--config`).
        #[arg(long, env = "ARCANA_TOKEN")]
        token: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The Go package name.
        #[arg(long, default_value = "arcanatypes")]
        package: String,
    },
    /// Trigger SQL for LISTEN/NOTIFY change detection (changes.mode = "notify").
    Triggers {
        #[command(subcommand)]
        action: SqlAction,
    },
    /// Row-level security policies for tenancy (the `[rls]` section).
    Rls {
        #[command(subcommand)]
        action: SqlAction,
    },
    /// The change log of two-way offline sync (the `[offline]` section).
    Offline {
        #[command(subcommand)]
        action: SqlAction,
    },
    /// The replication slot of `changes.mode = "wal"`.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
}

#[derive(Subcommand)]
enum SlotAction {
    /// Show the slot: active, WAL it retains, confirmed position.
    Status {
        /// The TOML config (`changes.slot`, `database.url`).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `database.url`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Drop the slot, so the database stops keeping WAL for Arcana.
    /// Refused while a server streams from it.
    Drop {
        /// The TOML config (`changes.slot`, `database.url`).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `database.url`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
}

impl SqlAction {
    /// The config, the database URL (if given) and whether to apply.
    fn parts(self) -> (PathBuf, Option<String>, bool) {
        match self {
            SqlAction::Sql {
                config,
                database_url,
            } => (config, database_url, false),
            SqlAction::Install {
                config,
                database_url,
            } => (config, database_url, true),
        }
    }
}

#[derive(Subcommand)]
enum SqlAction {
    /// Print the SQL.
    Sql {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `database.url` (the SQL is generated from its catalog).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Apply the SQL in one transaction.
    Install {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `database.url`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `serve` reads its config first: it may turn on trace export, which
    // must be in place before anything logs.
    let loaded = match &cli.command {
        Command::Serve { config, .. } => match load(config) {
            Ok(c) => Some(c),
            Err(e) => fail(&e),
        },
        _ => None,
    };
    let telemetry = match &cli.command {
        Command::Serve { .. } | Command::Demo { .. } => {
            let config = loaded
                .as_ref()
                .map(|c| c.telemetry.clone())
                .unwrap_or_default();
            start_telemetry(config, cli.otlp_endpoint, cli.otel_service_name)
                .unwrap_or_else(|e| fail(&e))
        }
        _ => None,
    };
    arcana::ops::logs::init(cli.log_format, telemetry.as_ref());
    let result = match cli.command {
        Command::Serve {
            config: _,
            database_url,
            listen,
            admin_listen,
        } => {
            let config = loaded.expect("loaded above");
            serve(config, database_url, listen, admin_listen).await
        }
        // Each node's admin listener takes a free port.
        Command::Demo {
            database_url,
            listen,
            admin_listen: _,
            cluster: Some(n),
            nats_url,
        } => arcana::app::cluster_demo::run(n, database_url, listen, nats_url).await,
        Command::Demo {
            database_url,
            listen,
            admin_listen,
            ..
        } => demo(database_url, listen, admin_listen).await,
        Command::Slot { action } => slot(action).await,
        Command::Triggers { action } => triggers(action).await,
        Command::Rls { action } => rls(action).await,
        Command::Offline { action } => offline(action).await,
        Command::Codegen {
            lang,
            config,
            database_url,
            schema,
            server,
            token,
            out,
            package,
        } => {
            let from = match config {
                Some(config) => Origin::Config {
                    config,
                    database_url,
                    schema,
                },
                None => Origin::Server {
                    server: server.unwrap_or_else(|| arcana::config::DEFAULT_SERVER_URL.to_owned()),
                    token,
                },
            };
            codegen(&lang, from, out, &package).await
        }
    };
    if let Some(t) = telemetry {
        // Flushing blocks on the exporter, which runs on this runtime.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(e: &str) -> ! {
    eprintln!("arcana: {e}");
    std::process::exit(1);
}

/// Starts trace export if an endpoint is set; the flags (or their standard
/// environment variables) override the config.
fn start_telemetry(
    mut config: TelemetryConfig,
    endpoint: Option<String>,
    service_name: Option<String>,
) -> Result<Option<Telemetry>, String> {
    if let Some(e) = endpoint.filter(|e| !e.trim().is_empty()) {
        config.otlp_endpoint = Some(e);
    }
    if let Some(n) = service_name.filter(|n| !n.trim().is_empty()) {
        config.service_name = n;
    }
    match config.otlp_endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => Telemetry::start(&config, e).map(Some),
        _ => Ok(None),
    }
}

/// Runs `app` until it ends or a signal stops it; `on_open` runs once its
/// gRPC port accepts connections (a stop before that is as clean).
async fn run_until_ctrl_c(mut app: App, on_open: impl FnOnce(&App)) -> Result<(), String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let stop = tokio::select! {
        () = app.opened() => false,
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
    };
    if stop {
        tracing::info!("shutting down before the port opened");
        return app.stop().await;
    }
    on_open(&app);
    tokio::select! {
        r = app.wait() => r,
        _ = term.recv() => {
            tracing::info!("terminated; shutting down");
            app.stop().await
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            app.stop().await
        }
    }
}

/// Where `codegen` reads the graphs and mutations from.
enum Origin {
    /// A config, against a database or a throwaway one loaded with `schema`.
    Config {
        config: PathBuf,
        database_url: Option<String>,
        schema: Option<PathBuf>,
    },
    /// A running server's Describe.
    Server {
        server: String,
        token: Option<String>,
    },
}

async fn codegen(
    lang: &str,
    from: Origin,
    out: Option<PathBuf>,
    package: &str,
) -> Result<(), String> {
    let lang =
        arcana::codegen::Lang::parse(lang).ok_or_else(|| format!("unknown --lang {lang}"))?;
    let source = match from {
        Origin::Config {
            config,
            database_url,
            schema: Some(schema),
        } => {
            debug_assert!(database_url.is_none());
            let config = load(&config)?;
            let sql = std::fs::read_to_string(&schema)
                .map_err(|e| format!("reading {}: {e}", schema.display()))?;
            let pg = EmbeddedPostgres::start(EmbeddedOptions {
                fast: true,
                ..Default::default()
            })
            .await?;
            let url = pg.url("postgres");
            let r = async {
                arcana::postgres::execute_script(&url, &sql)
                    .await
                    .map_err(|e| format!("loading {}: {e}", schema.display()))?;
                arcana::codegen::from_config(&config, &url).await
            }
            .await;
            tokio::task::spawn_blocking(move || pg.stop())
                .await
                .map_err(|e| e.to_string())?;
            r?
        }
        Origin::Config {
            config,
            database_url,
            schema: None,
        } => {
            let config = load(&config)?;
            let url = database_url.or_else(|| config.database.url.clone()).ok_or(
                "no database: set database.url in the config or --database-url, or give --schema FILE to generate against a throwaway PostgreSQL",
            )?;
            arcana::codegen::from_config(&config, &url).await?
        }
        Origin::Server { server, token } => {
            let token = token.ok_or(
                "asking a server needs --token (or ARCANA_TOKEN); or generate from --config",
            )?;
            describe(server, &token).await?.into()
        }
    };
    let text = arcana::codegen::generate(lang, &source, package);
    match out {
        Some(p) => {
            // `--out` may name a folder that does not exist yet.
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// A running server's Describe response.
async fn describe(server: String, token: &str) -> Result<arcana::proto::DescribeResponse, String> {
    let channel = tonic::transport::Endpoint::from_shared(server.clone())
        .map_err(|e| format!("bad --server {server}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    let mut client = arcana::proto::arcana_service_client::ArcanaServiceClient::new(channel);
    let mut req = tonic::Request::new(arcana::proto::DescribeRequest {});
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not valid header text".to_owned())?;
    req.metadata_mut().insert("authorization", value);
    Ok(client
        .describe(req)
        .await
        .map_err(|s| format!("Describe: {:?}: {}", s.code(), s.message()))?
        .into_inner())
}

fn load(path: &PathBuf) -> Result<Config, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn database(config: &Config, url: Option<String>) -> Result<String, String> {
    url.or_else(|| config.database.url.clone()).ok_or_else(|| {
        "no database: set database.url in the config, DATABASE_URL, or --database-url".into()
    })
}

async fn rls(action: SqlAction) -> Result<(), String> {
    let (path, url, apply) = action.parts();
    let config = load(&path)?;
    let url = database(&config, url)?;
    if apply {
        let tables = arcana::postgres::rls::install(&url, &config.rls).await?;
        eprintln!(
            "row-level security on {} tables: {}",
            tables.len(),
            tables.join(", ")
        );
    } else {
        for stmt in arcana::postgres::rls::all_sql(&url, &config.rls).await? {
            println!("{stmt};");
        }
    }
    Ok(())
}

async fn offline(action: SqlAction) -> Result<(), String> {
    let (path, url, apply) = action.parts();
    let config = load(&path)?;
    let url = database(&config, url)?;
    let eval_role = config.database.eval_role.as_deref();
    let pool = arcana::postgres::pool(&url, 1)?;
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tables = arcana::offline::spec::resolve(&client, &config.offline).await?;
    if apply {
        arcana::offline::schema::install(&mut client, &tables, eval_role).await?;
        eprintln!(
            "installed the offline change log for {} tables",
            tables.len()
        );
    } else {
        println!("{}", arcana::offline::schema::script(&tables, eval_role));
    }
    Ok(())
}

async fn triggers(action: SqlAction) -> Result<(), String> {
    let (path, url, apply) = action.parts();
    let config = load(&path)?;
    let url = database(&config, url)?;
    // The registry is only needed for the tracked tables and columns.
    let pool = arcana::postgres::pool(&url, 1)?;
    let engine = arcana::engine::Engine::new(
        arcana::postgres::registry::build(&config, &pool).await?,
        config.engine.clone(),
    );
    let tables = arcana::app::tracked_tables(&engine);
    let channel = &config.changes.channel;
    if apply {
        let n = arcana::postgres::triggers::install(&url, channel, &tables, &config.table_keys())
            .await?;
        eprintln!("installed change triggers on {n} tables (channel `{channel}`)");
    } else {
        for stmt in
            arcana::postgres::triggers::all_sql(&url, channel, &tables, &config.table_keys())
                .await?
        {
            println!("{stmt};\n");
        }
    }
    Ok(())
}

async fn slot(action: SlotAction) -> Result<(), String> {
    let (path, url, drop) = match action {
        SlotAction::Status {
            config,
            database_url,
        } => (config, database_url, false),
        SlotAction::Drop {
            config,
            database_url,
        } => (config, database_url, true),
    };
    let config = load(&path)?;
    let url = database(&config, url)?;
    let name = &config.changes.slot;
    let pool = arcana::postgres::pool(&url, 1)?;
    if drop {
        arcana::ops::slot::drop_slot(&pool, name).await?;
        println!("dropped replication slot {name}");
        return Ok(());
    }
    let Some(s) = arcana::ops::slot::status(&pool, name).await? else {
        println!("slot:             {name} (does not exist)");
        return Ok(());
    };
    let bytes = |b: Option<i64>| match b {
        Some(b) => format!("{} ({b} bytes)", arcana::ops::slot::human(b)),
        None => "unknown".into(),
    };
    println!("slot:             {}", s.name);
    println!(
        "active:           {}",
        match (s.active, s.active_pid) {
            (true, Some(pid)) => format!("yes (PID {pid})"),
            (true, None) => "yes".into(),
            (false, _) => "no".into(),
        }
    );
    println!("retained WAL:     {}", bytes(s.retained_bytes));
    println!("unconfirmed WAL:  {}", bytes(s.lag_bytes));
    println!(
        "confirmed flush:  {}",
        s.confirmed_flush.as_deref().unwrap_or("none")
    );
    Ok(())
}

async fn serve(
    mut config: Config,
    database_url: Option<String>,
    listen_on: Option<String>,
    admin_listen: Option<String>,
) -> Result<(), String> {
    if admin_listen.is_some() {
        config.server.admin_listen = admin_listen;
    }
    let url = database(&config, database_url)?;
    let addr = listen_on.unwrap_or_else(|| config.server.listen.clone());
    // The port is taken now but opens only once the server is ready.
    let app = App::start_bound(&config, &url, bind(&addr).await?).await?;
    run_until_ctrl_c(app, |app| {
        tracing::info!(addr = %app.addr, admin = ?app.admin_addr, "serving");
    })
    .await
}

async fn demo(database_url: Option<String>, addr: String, admin: String) -> Result<(), String> {
    let mut config = Config::parse(DEMO_CONFIG)?;
    config.server.admin_listen = Some(admin);
    // Taken now (a port in use fails before PostgreSQL starts), open only
    // once the server is ready.
    let socket = bind(&addr).await?;
    let (cluster, url) = match database_url {
        Some(url) => (None, url),
        None => {
            eprintln!("starting a throwaway PostgreSQL...");
            let pg = EmbeddedPostgres::start(EmbeddedOptions::default()).await?;
            let url = pg.url("postgres");
            eprintln!("PostgreSQL is up at {url} (data in {})", pg.dir().display());
            (Some(pg), url)
        }
    };
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .map_err(|e| format!("loading the demo schema: {e} (an existing database must not already hold the demo tables)"))?;
    let app = App::start_bound(&config, &url, socket).await?;
    let r = run_until_ctrl_c(app, |app| {
        let admin = app.admin_addr.map(|a| a.to_string()).unwrap_or_default();
        print_tour(&app.addr.to_string(), &admin, &url);
    })
    .await;
    if let Some(pg) = cluster {
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("throwaway PostgreSQL stopped and removed");
    }
    r
}

fn print_tour(addr: &str, admin: &str, url: &str) {
    println!(
        r#"
Arcana demo serving on {addr}   (Ctrl-C to stop)

Metrics (Prometheus):  http://{admin}/metrics
Health:                http://{admin}/healthz (alive), http://{admin}/readyz (ready)
DevTools:              http://{admin}/devtools (sign in with dev-service)

Tokens: dev-alice (acme, read+write), dev-bob (acme, read), dev-carol (globex), dev-service (acme, notify+stats)
Row-level security is on: graphs and mutations run as role arcana_eval with the caller's workspace set.

List services and describe the registry:
  grpcurl -plaintext {addr} list
  grpcurl -plaintext -H 'authorization: Bearer dev-alice' {addr} arcana.v1.ArcanaService/Describe

Subscribe to project 1's tasks (leave it running; it prints a snapshot, then diffs):
  grpcurl -plaintext -H 'authorization: Bearer dev-alice' -d '{{"request_id": 1, "subscribe": {{"graph": "project_tasks", "params": {{"project_id": {{"int": 1}}}}}}}}' {addr} arcana.v1.ArcanaService/Connect

In another terminal, add a task and watch the subscription update:
  grpcurl -plaintext -H 'authorization: Bearer dev-alice' -d '{{"mutation": "create_task", "params": {{"project_id": {{"int": 1}}, "title": {{"string": "Try Arcana"}}}}}}' {addr} arcana.v1.ArcanaService/Mutate

Or write with psql: the demo watches the WAL, so the subscription updates by itself:
  psql '{url}' -c "UPDATE tasks SET title = 'Renamed' WHERE id = 2"

A trusted service can also report changes explicitly:
  grpcurl -plaintext -H 'authorization: Bearer dev-service' -d '{{"changes": [{{"table": "tasks", "id": "2", "columns": ["title"]}}]}}' {addr} arcana.v1.ArcanaService/Notify
"#
    );
}
