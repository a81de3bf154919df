//! The randomized convergence test: whatever the interleaving of writes and
//! faults, a client that applies the stream ends with what a fresh snapshot
//! gives, and that equals the graph's SQL run directly.
//!
//! Each schedule derives from a seed: a fresh database with its own schema,
//! the real server as a child process, client sessions holding several
//! views, random SQL transactions and mutations, and random faults
//! (PostgreSQL restarts, the server killed and restarted, connections
//! dropped, clients that stop reading). Once writes and faults end and the
//! change stream has drained, every client view is compared with a fresh
//! snapshot and with the SQL. See docs/RELIABILITY.md.
//!
//! `cargo test --test convergence` runs a short set of schedules;
//! `cargo test --release --test convergence -- --schedules 40 --seed 7` a
//! long one. `--help` lists the switches.

#[path = "convergence/client.rs"]
mod client;
#[path = "convergence/expected.rs"]
mod expected;
#[path = "convergence/model.rs"]
mod model;
#[path = "convergence/rng.rs"]
mod rng;
#[path = "convergence/server.rs"]
mod server;
#[path = "convergence/stats.rs"]
mod stats;
#[path = "convergence/writes.rs"]
mod writes;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arcana::client::ViewState;
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::postgres::execute_script;
use arcana::proto::{self as pb, client_message::Kind as Req, server_message::Kind as Msg};
use tokio::time::Instant;

use model::{Axes, AxisChoice, Mode, ViewSpec, Who, PEOPLE};
use rng::Rng;
use stats::Stats;

/// How long a client view may take to converge once the stream drained.
const CONVERGE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    PgFast,
    PgImmediate,
    ServerKill,
    ClientDrop,
    ClientPause,
}

const FAULTS: [(Fault, &str); 5] = [
    (Fault::PgFast, "pg-fast"),
    (Fault::PgImmediate, "pg-immediate"),
    (Fault::ServerKill, "server-kill"),
    (Fault::ClientDrop, "client-drop"),
    (Fault::ClientPause, "client-pause"),
];

#[derive(Debug, Clone)]
struct Args {
    schedules: u64,
    seed: u64,
    duration: Duration,
    clients: usize,
    checks: u64,
    axes: AxisChoice,
    faults: BTreeSet<Fault>,
    mutations: bool,
    truncate: bool,
}

const HELP: &str = "convergence test switches (unknown arguments are ignored):
  --schedules N         schedules to run (default 4)
  --seed N              seed of the first schedule; schedule i uses seed+i (default 1)
  --duration-ms N       how long each schedule writes (default 5000)
  --clients N           client sessions per schedule (default 6)
  --checks N            single writes at the end, each followed by a full comparison (default 25)
  --modes wal,notify    change modes to use (default both, alternating with the seed)
  --route on|off        force the route axis (default: from the seed)
  --patch on|off        force the patch axis
  --replica-full on|off force REPLICA IDENTITY FULL on or off
  --self-join on|off    serve the self-join graph (default on); --no-self-join
  --queue N             engine.session_queue (default: 16 or 256 from the seed)
  --faults LIST         pg-fast,pg-immediate,server-kill,client-drop,client-pause, or none
  --no-faults           same as --faults none
  --no-mutations        no gRPC mutations
  --no-truncate         no TRUNCATE transactions";

fn on_off(v: Option<&String>) -> Option<bool> {
    match v.map(String::as_str) {
        Some("on" | "true" | "yes") => Some(true),
        Some("off" | "false" | "no") => Some(false),
        _ => None,
    }
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        schedules: 4,
        seed: 1,
        duration: Duration::from_millis(5000),
        clients: 6,
        checks: 25,
        axes: AxisChoice::default(),
        faults: FAULTS.iter().map(|(f, _)| *f).collect(),
        mutations: true,
        truncate: true,
    };
    let mut i = 0;
    while i < argv.len() {
        let next = argv.get(i + 1);
        let num = |v: Option<&String>| v.and_then(|s| s.parse::<u64>().ok());
        let mut took = true;
        match argv[i].as_str() {
            "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            "--schedules" => a.schedules = num(next).unwrap_or(a.schedules),
            "--seed" => a.seed = num(next).unwrap_or(a.seed),
            "--duration-ms" => {
                a.duration = Duration::from_millis(num(next).unwrap_or(5000));
            }
            "--clients" => a.clients = num(next).unwrap_or(6).max(1) as usize,
            "--checks" => a.checks = num(next).unwrap_or(a.checks),
            "--modes" => {
                a.axes.modes = next
                    .map(|s| {
                        s.split(',')
                            .filter_map(|m| match m {
                                "wal" => Some(Mode::Wal),
                                "notify" => Some(Mode::Notify),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "--route" => a.axes.route = on_off(next),
            "--patch" => a.axes.patch = on_off(next),
            "--replica-full" => a.axes.replica_full = on_off(next),
            "--self-join" => a.axes.self_join = on_off(next),
            "--queue" => a.axes.session_queue = num(next).map(|n| n.max(1) as usize),
            "--faults" => {
                let list = next.cloned().unwrap_or_default();
                a.faults = FAULTS
                    .iter()
                    .filter(|(_, name)| list.split(',').any(|x| x == *name))
                    .map(|(f, _)| *f)
                    .collect();
            }
            other => {
                took = false;
                match other {
                    "--no-self-join" => a.axes.self_join = Some(false),
                    "--no-faults" => a.faults.clear(),
                    "--no-mutations" => a.mutations = false,
                    "--no-truncate" => a.truncate = false,
                    _ => {} // libtest's own flags and anything else
                }
            }
        }
        i += if took { 2 } else { 1 };
    }
    a
}

impl Args {
    /// The command that reruns exactly the schedule with `seed` and `axes`.
    fn rerun(&self, seed: u64, axes: &Axes) -> String {
        let faults: Vec<&str> = FAULTS
            .iter()
            .filter(|(f, _)| self.faults.contains(f))
            .map(|(_, n)| *n)
            .collect();
        let mut s = format!(
            "cargo test --release --test convergence -- --schedules 1 --seed {seed} {axes} --duration-ms {} --clients {} --checks {} --faults {}",
            self.duration.as_millis(),
            self.clients,
            self.checks,
            if faults.is_empty() { "none".into() } else { faults.join(",") }
        );
        if !self.mutations {
            s.push_str(" --no-mutations");
        }
        if !self.truncate {
            s.push_str(" --no-truncate");
        }
        s
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let pg = match EmbeddedPostgres::start(EmbeddedOptions {
        fast: true,
        ..Default::default()
    })
    .await
    {
        Ok(pg) => Arc::new(Mutex::new(pg)),
        Err(e) => {
            eprintln!("cannot start PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    for i in 0..args.schedules {
        let seed = args.seed + i;
        let mut rng = Rng::new(seed);
        let axes = args.axes.pick(seed, &mut rng);
        println!("schedule seed {seed}: {axes}");
        let before = (Stats::get(&stats.divergences), Stats::get(&stats.gaps));
        let t = Instant::now();
        let r = schedule(&args, seed, &axes, rng, &pg, &stats).await;
        Stats::inc(&stats.schedules);
        let bad = (Stats::get(&stats.divergences), Stats::get(&stats.gaps)) != before;
        match r {
            Ok(()) if !bad => {
                passed += 1;
                println!("  ok in {:.1} s", t.elapsed().as_secs_f64());
            }
            other => {
                failed += 1;
                if let Err(e) = other {
                    println!("  schedule could not run: {e}");
                    Stats::inc(&stats.divergences);
                }
                println!(
                    "  FAILED (seed {seed}, {axes}); rerun with:\n    {}",
                    args.rerun(seed, &axes)
                );
            }
        }
    }
    println!(
        "\n{} schedules in {:.0} s\n\n{}",
        args.schedules,
        started.elapsed().as_secs_f64(),
        stats.table()
    );
    println!("{passed} passed, {failed} failed");
    if let Ok(pg) = Arc::try_unwrap(pg) {
        let pg = pg.into_inner().unwrap();
        let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

type Cluster = Arc<Mutex<EmbeddedPostgres>>;

/// Runs one schedule; divergences and gaps are counted in `stats`, and an
/// `Err` means the schedule could not be set up or driven.
async fn schedule(
    args: &Args,
    seed: u64,
    axes: &Axes,
    mut rng: Rng,
    pg: &Cluster,
    stats: &Arc<Stats>,
) -> Result<(), String> {
    let tag = format!("conv_{}_{seed}", std::process::id());
    let (admin, url) = {
        let pg = pg.lock().unwrap();
        (pg.url("postgres"), pg.url(&tag))
    };
    execute_script(&admin, &format!("CREATE DATABASE {tag}")).await?;
    let mut schema = model::SCHEMA.to_owned();
    if axes.replica_full {
        schema.push_str(
            "ALTER TABLE people REPLICA IDENTITY FULL;\nALTER TABLE items REPLICA IDENTITY FULL;\n\
             ALTER TABLE tags REPLICA IDENTITY FULL;\n",
        );
    }
    schema.push_str(&writes::seed_data(&mut rng));
    execute_script(&url, &schema).await?;

    let dir = std::env::temp_dir().join(format!("arcana-{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("arcana.toml");
    std::fs::write(&config, model::config_toml(axes, &tag)).map_err(|e| e.to_string())?;
    let mut srv = server::Server::new(&dir, config, url.clone());
    srv.start().await?;

    let catalog = model::catalog(axes.self_join);
    let clients: Vec<client::ClientHandle> = (0..args.clients)
        .map(|k| {
            let who = PEOPLE[k % PEOPLE.len()];
            let mut specs: Vec<ViewSpec> = Vec::new();
            while specs.len() < 5.min(catalog.len()) {
                let s = rng.pick(&catalog).clone();
                if !specs.contains(&s) {
                    specs.push(s);
                }
            }
            client::spawn(
                srv.addr.clone(),
                who,
                format!("client {k} ({})", who.user),
                specs,
                stats.clone(),
            )
        })
        .collect();

    // Writes and faults.
    let until = Instant::now() + args.duration;
    let mut writers = Vec::new();
    for _ in 0..2 {
        writers.push(tokio::spawn(writes::sql_writer(
            url.clone(),
            rng.fork(),
            until,
            args.truncate,
            stats.clone(),
        )));
    }
    if args.mutations {
        writers.push(tokio::spawn(writes::mutator(
            srv.addr.clone(),
            rng.fork(),
            until,
            stats.clone(),
        )));
    }
    // Client faults weigh double: they are cheap, and they drive Sync.
    let faults: Vec<Fault> = args
        .faults
        .iter()
        .flat_map(|f| match f {
            Fault::ClientDrop | Fault::ClientPause => vec![*f, *f],
            _ => vec![*f],
        })
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1200) as u64)).await;
        if Instant::now() >= until || faults.is_empty() {
            break;
        }
        let f = *rng.pick(&faults);
        fault(f, &mut rng, pg, &mut srv, &clients, stats).await?;
    }
    for w in writers {
        let _ = w.await;
    }

    // Quiescence: the server is up and the change stream has drained.
    if let Some(how) = srv.exited() {
        println!(
            "  note: the server was not running at the end ({how}); log: {}",
            srv.log.display()
        );
        srv.start().await?;
    }
    let divergences_before = Stats::get(&stats.divergences);
    let failures = || Stats::get(&stats.divergences) + Stats::get(&stats.gaps);
    let failures_before = failures();
    drain(&srv.addr, &url).await?;
    compare(seed, axes, &srv.addr, &url, &clients, stats).await?;
    // Checkpoints: one write, then drain and compare, so a change lost on
    // its way is not hidden by a later one that re-evaluates the view.
    for _ in 0..args.checks {
        if failures() != failures_before {
            break;
        }
        let last: String;
        if args.mutations && rng.chance(0.3) {
            last = "a gRPC mutation".into();
            let ok = writes::mutate_once(&srv.addr, &mut rng).await;
            Stats::inc(if ok {
                &stats.mutations
            } else {
                &stats.mutations_failed
            });
        } else {
            let (item, person) = shown(&clients, &mut rng);
            let stmt = writes::statement_on(&mut rng, args.truncate, item, person);
            let ok = execute_script(&url, &stmt).await.is_ok();
            last = stmt;
            Stats::inc(if ok {
                &stats.sql_txns
            } else {
                &stats.sql_failed
            });
        }
        drain(&srv.addr, &url).await?;
        compare(seed, axes, &srv.addr, &url, &clients, stats).await?;
        if failures() != failures_before {
            println!("  (at a checkpoint, after: {last})");
        }
    }
    if Stats::get(&stats.divergences) != divergences_before {
        println!("  server log: {}", srv.log.display());
    }
    for c in &clients {
        let g = c.shared.lock().unwrap();
        for h in g.views.iter().filter(|h| h.state.error.is_some()) {
            Stats::inc(&stats.ended_in_error);
            println!(
                "  note: {} {} ends flagged with an error frame: {}",
                g.label,
                h.spec,
                h.state.error.as_deref().unwrap_or_default()
            );
        }
    }

    for c in clients {
        drop(c.cmds);
        c.task.abort();
    }
    srv.stop().await;
    // Best effort: a slot left behind would pin WAL for the rest of the run.
    for _ in 0..20 {
        let dropped = execute_script(
            &admin,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{tag}'"
            ),
        )
        .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = execute_script(&admin, &format!("DROP DATABASE {tag} WITH (FORCE)")).await;
    if Stats::get(&stats.divergences) == divergences_before {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// An item id and a person id that some client view shows (random ones
/// when none does).
fn shown(clients: &[client::ClientHandle], rng: &mut Rng) -> (i64, i64) {
    let mut items = Vec::new();
    let mut people = Vec::new();
    for c in clients {
        let g = c.shared.lock().unwrap();
        for k in g.views.iter().flat_map(|h| h.state.rows.keys()) {
            match (&*k.table, k.id.parse::<i64>()) {
                ("items", Ok(id)) => items.push(id),
                ("people", Ok(id)) => people.push(id),
                _ => {}
            }
        }
    }
    let item = if items.is_empty() {
        rng.range(1, 40)
    } else {
        *rng.pick(&items)
    };
    let person = if people.is_empty() {
        rng.range(1, 12)
    } else {
        *rng.pick(&people)
    };
    (item, person)
}

async fn fault(
    f: Fault,
    rng: &mut Rng,
    pg: &Cluster,
    srv: &mut server::Server,
    clients: &[client::ClientHandle],
    stats: &Stats,
) -> Result<(), String> {
    match f {
        Fault::PgFast | Fault::PgImmediate => {
            Stats::inc(if f == Fault::PgFast {
                &stats.pg_fast
            } else {
                &stats.pg_immediate
            });
            let pg = pg.clone();
            tokio::task::spawn_blocking(move || {
                let mut pg = pg.lock().unwrap();
                if f == Fault::PgFast {
                    pg.restart()
                } else {
                    pg.restart_immediate()
                }
            })
            .await
            .map_err(|e| e.to_string())??;
        }
        Fault::ServerKill => {
            Stats::inc(&stats.server_kill);
            srv.kill().await;
            tokio::time::sleep(Duration::from_millis(rng.range(0, 800) as u64)).await;
            srv.start().await?;
        }
        Fault::ClientDrop => {
            Stats::inc(&stats.client_drop);
            // Long enough, at times, to miss more diffs than a session queue holds.
            let away = Duration::from_millis(rng.range(0, 3000) as u64);
            let _ = clients[rng.range(0, clients.len() as i64 - 1) as usize]
                .cmds
                .try_send(client::Cmd::Drop(away));
        }
        Fault::ClientPause => {
            Stats::inc(&stats.client_pause);
            let d = Duration::from_millis(rng.range(300, 2500) as u64);
            let _ = clients[rng.range(0, clients.len() as i64 - 1) as usize]
                .cmds
                .try_send(client::Cmd::Pause(d));
        }
    }
    Ok(())
}

/// One view subscribed on a session of its own, read on demand.
struct Probe {
    // Kept so the session stays open.
    _tx: tokio::sync::mpsc::Sender<pb::ClientMessage>,
    stream: tonic::Streaming<pb::ServerMessage>,
    spec: ViewSpec,
    state: ViewState,
}

impl Probe {
    /// Subscribes `spec` on a new session of `who`.
    async fn open(addr: &str, who: &Who, spec: &ViewSpec) -> Result<Probe, String> {
        let (tx, stream) = client::open(addr, who.token).await?;
        tx.send(pb::ClientMessage {
            request_id: 1,
            kind: Some(Req::Subscribe(pb::SubscribeRequest {
                graph: spec.graph.into(),
                params: spec.pb_params(),
                session_id: String::new(),
            })),
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(Probe {
            _tx: tx,
            stream,
            spec: spec.clone(),
            state: ViewState::default(),
        })
    }

    /// Reads until the view has its snapshot and satisfies `done`.
    async fn until(
        &mut self,
        done: impl Fn(&ViewState) -> bool,
        limit: Duration,
    ) -> Result<&ViewState, String> {
        let deadline = Instant::now() + limit;
        loop {
            if self.state.version > 0 && done(&self.state) {
                return Ok(&self.state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.stream.message())
                .await
                .map_err(|_| {
                    format!(
                        "{} not reached in {limit:?}; last: {:?}",
                        self.spec, self.state
                    )
                })?
                .map_err(|e| e.to_string())?
                .ok_or("stream ended")?;
            let frames = match m.kind {
                Some(Msg::Frame(f)) => vec![f],
                Some(Msg::Frames(b)) => b.frames,
                Some(Msg::Reply(r)) => match r.result {
                    Some(pb::reply::Result::Error(e)) => {
                        return Err(format!("subscribe {}: {} {}", self.spec, e.code, e.message))
                    }
                    _ => vec![],
                },
                _ => vec![],
            };
            for f in frames {
                self.state.apply(&f)?;
            }
        }
    }
}

/// What a new subscriber to `spec` gets now.
async fn fresh(addr: &str, who: &Who, spec: &ViewSpec) -> Result<ViewState, String> {
    let mut p = Probe::open(addr, who, spec).await?;
    p.until(|_| true, Duration::from_secs(10)).await.cloned()
}

/// Per workspace: subscribes to the marker, bumps it, and waits until the
/// subscription shows the bump as a change. The change stream has then
/// passed every earlier write.
async fn drain(addr: &str, url: &str) -> Result<(), String> {
    let marker = ViewSpec {
        graph: "markers",
        params: vec![],
    };
    let deadline = Instant::now() + CONVERGE;
    for who in [PEOPLE[0], PEOPLE[2]] {
        loop {
            let attempt = async {
                let mut p = Probe::open(addr, &who, &marker).await?;
                p.until(|_| true, Duration::from_secs(5)).await?;
                let n = bump_marker(url, who.ws).await?;
                let shows = |s: &ViewState| {
                    s.rows
                        .values()
                        .any(|f| f.get("n") == Some(&arcana::engine::Value::Int(n)))
                };
                p.until(shows, Duration::from_secs(10)).await.map(|_| ())
            };
            match attempt.await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the drain marker never showed: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

async fn bump_marker(url: &str, ws: &str) -> Result<i64, String> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let row = c
        .query_one(
            "UPDATE markers SET n = n + 1 WHERE ws = $1 RETURNING n",
            &[&ws],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// Every client view must equal a fresh snapshot, and that the SQL run
/// directly; each view that does not within `CONVERGE` is a divergence.
async fn compare(
    seed: u64,
    axes: &Axes,
    addr: &str,
    url: &str,
    clients: &[client::ClientHandle],
    stats: &Stats,
) -> Result<(), String> {
    // Each distinct (identity, view) once; all clients holding it compared.
    let mut pairs: Vec<(Who, ViewSpec)> = Vec::new();
    for c in clients {
        let g = c.shared.lock().unwrap();
        for h in &g.views {
            if !pairs
                .iter()
                .any(|(w, s)| w.token == g.who.token && *s == h.spec)
            {
                pairs.push((g.who, h.spec.clone()));
            }
        }
    }
    let checks = pairs
        .iter()
        .map(|(who, spec)| converge(seed, axes, addr, url, clients, stats, who, spec));
    futures_util::future::join_all(checks).await;
    // A sync whose announced frames never came, with nothing after them to
    // expose the gap.
    for c in clients {
        let g = c.shared.lock().unwrap();
        for h in &g.views {
            if let Some((e, v)) = h.owed {
                if h.state.epoch == e && h.state.version < v {
                    Stats::inc(&stats.gaps);
                    println!(
                        "GAP {} {}: a sync announced version {v} but the view stayed at {}",
                        g.label, h.spec, h.state.version
                    );
                }
            }
        }
    }
    Ok(())
}

/// Waits until every client holding `spec` as `who` agrees with a fresh
/// snapshot and with the SQL; reports each that does not in time.
#[allow(clippy::too_many_arguments)]
async fn converge(
    seed: u64,
    axes: &Axes,
    addr: &str,
    url: &str,
    clients: &[client::ClientHandle],
    stats: &Stats,
    who: &Who,
    spec: &ViewSpec,
) {
    let deadline = Instant::now() + CONVERGE;
    // A connection of its own: the expected state is read in a transaction.
    let db = loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((db, conn)) => {
                tokio::spawn(conn);
                break db;
            }
            Err(e) if Instant::now() > deadline => {
                Stats::inc(&stats.divergences);
                println!("DIVERGENCE seed {seed}: cannot read {spec} from PostgreSQL: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        let fresh = fresh(addr, who, spec).await;
        let sql = expected::expected(&db, model::graph(spec.graph), who, spec).await;
        let holders: Vec<(String, ViewState)> = clients
            .iter()
            .filter_map(|c| {
                let g = c.shared.lock().unwrap();
                (g.who.token == who.token)
                    .then(|| {
                        g.views
                            .iter()
                            .find(|h| h.spec == *spec)
                            .map(|h| (g.label.clone(), h.state.clone()))
                    })
                    .flatten()
            })
            .collect();
        let agree = |a: &ViewState, b: &ViewState| a.content() == b.content();
        let ok = match (&fresh, &sql) {
            (Ok(f), Ok(s)) => agree(f, s) && holders.iter().all(|(_, h)| agree(h, f)),
            _ => false,
        };
        if ok {
            for _ in &holders {
                Stats::inc(&stats.views_compared);
            }
            break;
        }
        if Instant::now() > deadline {
            // Clients holding the same state are reported together.
            let mut wrong: Vec<(Vec<&str>, &ViewState)> = Vec::new();
            for (label, h) in &holders {
                Stats::inc(&stats.views_compared);
                if matches!((&fresh, &sql), (Ok(f), Ok(s)) if agree(h, f) && agree(f, s)) {
                    continue;
                }
                Stats::inc(&stats.divergences);
                match wrong.iter_mut().find(|(_, s)| agree(s, h)) {
                    Some((labels, _)) => labels.push(label),
                    None => wrong.push((vec![label], h)),
                }
            }
            if wrong.is_empty() {
                break;
            }
            let mut text = format!(
                "DIVERGENCE seed {seed} ({axes}) as {} in {}: view {spec}\n  fresh:  {}\n  sql:    {}",
                who.user,
                who.ws,
                fresh.as_ref().map_or_else(|e| format!("error: {e}"), show),
                sql.as_ref().map_or_else(|e| format!("error: {e}"), show),
            );
            for (labels, h) in wrong {
                text.push_str(&format!("\n  {}: {}", labels.join(", "), show(h)));
            }
            println!("{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A view on one line: total, refs (with nested), rows.
fn show(s: &ViewState) -> String {
    fn r(x: &arcana::engine::Ref) -> String {
        let mut out = format!("{}/{}", x.key.table, x.key.id);
        for (n, nr) in &x.nested {
            out.push_str(&format!("{{{n}: {}}}", r(nr)));
        }
        out
    }
    let refs: Vec<String> = s.refs.iter().map(r).collect();
    let rows: Vec<String> = s
        .rows
        .iter()
        .map(|(k, f)| {
            let fields: Vec<String> = f.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
            format!("{}/{} {{{}}}", k.table, k.id, fields.join(", "))
        })
        .collect();
    format!(
        "v{} e{} total={:?} error={:?}\n    refs [{}]\n    rows [{}]",
        s.version,
        s.epoch,
        s.total,
        s.error,
        refs.join(", "),
        rows.join("; ")
    )
}
