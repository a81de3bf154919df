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
//! Cluster schedules run three nodes on one nats-server, with clients
//! spread over them and moving to another node at every reconnect, and add
//! node kills, leader kills, graceful node restarts and NATS restarts.
//!
//! `cargo test --test convergence` runs a short set of schedules (four on a
//! single server, two on a cluster);
//! `cargo test --release --test convergence -- --schedules 40 --seed 7` a
//! long one, `-- --nodes 3 --schedules 20` a long cluster one. `--help`
//! lists the switches.

#[path = "convergence/args.rs"]
mod args;
#[path = "convergence/check.rs"]
mod check;
#[path = "convergence/client.rs"]
mod client;
#[path = "convergence/cluster.rs"]
mod cluster;
#[path = "convergence/expected.rs"]
mod expected;
#[path = "convergence/model.rs"]
mod model;
// Shared with tests/cluster.rs, which uses more of it.
#[allow(dead_code)]
#[path = "common/nats.rs"]
mod nats;
#[path = "convergence/rng.rs"]
mod rng;
#[path = "convergence/server.rs"]
mod server;
#[path = "convergence/stats.rs"]
mod stats;
#[path = "convergence/writes.rs"]
mod writes;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::postgres::execute_script;
use tokio::time::Instant;

use args::{Args, Fault, CLUSTER_NODES};
use check::{compare, drain};
use model::{Axes, ViewSpec, PEOPLE};
use rng::Rng;
use stats::Stats;

fn main() -> ExitCode {
    let args = args::parse();
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
    // The single-server schedules (or clusters, with --nodes), then the
    // cluster set, its seeds following theirs.
    let runs = (0..args.schedules)
        .map(|i| (args.seed + i, args.nodes))
        .chain(
            (0..args.cluster_schedules).map(|j| (args.seed + args.schedules + j, CLUSTER_NODES)),
        );
    for (seed, nodes) in runs {
        let mut rng = Rng::new(seed);
        let axes = args.axes.pick(seed, &mut rng);
        println!("schedule seed {seed} on {nodes} node(s): {axes}");
        // A view still flagged with an error once the database is back has
        // not recovered: the server retries failed views until they succeed.
        let counts = || {
            (
                Stats::get(&stats.divergences),
                Stats::get(&stats.gaps),
                Stats::get(&stats.ended_in_error),
                Stats::get(&stats.internal_errors),
            )
        };
        let before = counts();
        let t = Instant::now();
        // A task of its own, so a panic fails this schedule only; its
        // processes are killed as its values drop.
        let r = {
            let (args, axes, pg, stats) = (args.clone(), axes.clone(), pg.clone(), stats.clone());
            tokio::spawn(async move { schedule(&args, seed, nodes, &axes, rng, &pg, &stats).await })
                .await
                .unwrap_or_else(|e| Err(format!("the schedule panicked: {e}")))
        };
        Stats::inc(&stats.schedules);
        let bad = counts() != before;
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
                    args.rerun(seed, nodes, &axes)
                );
            }
        }
    }
    println!(
        "\n{} schedules in {:.0} s\n\n{}",
        passed + failed,
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

type Pg = Arc<Mutex<EmbeddedPostgres>>;

/// Runs one schedule; divergences and gaps are counted in `stats`, and an
/// `Err` means the schedule could not be set up or driven.
async fn schedule(
    args: &Args,
    seed: u64,
    nodes: usize,
    axes: &Axes,
    mut rng: Rng,
    pg: &Pg,
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
    let mut srv = cluster::Nodes::start(&dir, nodes, args.fresh_node_ids, axes, &tag, &url).await?;
    let addrs = srv.addrs();

    let catalog = if axes.hot {
        model::hot_catalog()
    } else {
        model::catalog(axes.self_join)
    };
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
                addrs.clone(),
                k,
                // Not drawn from `rng`, so single-server schedules pick
                // what they picked before clusters existed.
                Rng::new(seed.wrapping_mul(31).wrapping_add(k as u64 + 1)),
                who,
                format!("client {k} ({})", who.user),
                specs,
                stats.clone(),
            )
        })
        .collect();

    // Writes and faults.
    let until = Instant::now() + args.duration;
    let started = Instant::now();
    let mut sequence: Vec<String> = Vec::new();
    let bad_before = (
        Stats::get(&stats.gaps),
        Stats::get(&stats.divergences),
        Stats::get(&stats.ended_in_error),
    );
    let mut writers = Vec::new();
    if axes.hot {
        writers.extend(hot_writers(&url, &mut rng, until, stats));
    } else {
        for _ in 0..2 {
            writers.push(tokio::spawn(writes::sql_writer(
                url.clone(),
                rng.fork(),
                until,
                args.truncate,
                stats.clone(),
            )));
        }
    }
    if args.mutations {
        writers.push(tokio::spawn(writes::mutator(
            addrs.clone(),
            rng.fork(),
            until,
            stats.clone(),
        )));
    }
    // Client faults weigh double: they are cheap, and they drive Sync.
    let faults: Vec<Fault> = args
        .faults_for(nodes)
        .iter()
        .flat_map(|f| match f {
            Fault::ClientDrop | Fault::ClientPause | Fault::Reanchor => vec![*f, *f],
            _ => vec![*f],
        })
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1200) as u64)).await;
        if Instant::now() >= until || faults.is_empty() {
            break;
        }
        let f = *rng.pick(&faults);
        let at = started.elapsed().as_secs_f64();
        let what = fault(f, &mut rng, pg, &mut srv, &clients, stats).await?;
        sequence.push(format!("{at:.1} s: {what}"));
    }
    for w in writers {
        let _ = w.await;
    }

    // Quiescence: every node is up and the change stream has drained.
    for i in 0..srv.count() {
        if let Some(how) = srv.servers[i].exited() {
            println!(
                "  note: a server was not running at the end ({how}); log: {}",
                srv.servers[i].log.display()
            );
            srv.start_node(i).await?;
        }
    }
    let divergences_before = Stats::get(&stats.divergences);
    let failures = || Stats::get(&stats.divergences) + Stats::get(&stats.gaps);
    let failures_before = failures();
    drain_all(&addrs, &url).await?;
    compare(seed, axes, &addrs, &url, &clients, stats).await?;
    // Hot rows: bursts of the eight writers, each followed by a quiet
    // comparison while the sessions stay subscribed, so a view left stale
    // by a burst is caught before a later burst repairs it.
    for b in 0..if axes.hot { args.bursts } else { 0 } {
        if failures() != failures_before {
            break;
        }
        let until = Instant::now() + Duration::from_millis(800);
        for w in hot_writers(&url, &mut rng, until, stats) {
            let _ = w.await;
        }
        drain_all(&addrs, &url).await?;
        compare(seed, axes, &addrs, &url, &clients, stats).await?;
        if failures() != failures_before {
            println!("  (after hot burst {b})");
        }
    }
    // Checkpoints: one write, then drain and compare, so a change lost on
    // its way is not hidden by a later one that re-evaluates the view.
    for _ in 0..args.checks {
        if failures() != failures_before {
            break;
        }
        let last: String;
        if args.mutations && rng.chance(0.3) {
            last = "a gRPC mutation".into();
            let addr = pick_node(&addrs, &mut rng);
            let ok = writes::mutate_once(&addr, &mut rng, stats).await;
            Stats::inc(if ok {
                &stats.mutations
            } else {
                &stats.mutations_failed
            });
        } else {
            let (item, person, account) = shown(&clients, &mut rng);
            let stmt = if axes.hot {
                writes::hot_statement_on(&mut rng, account)
            } else {
                writes::statement_on(&mut rng, args.truncate, item, person)
            };
            let ok = execute_script(&url, &stmt).await.is_ok();
            last = stmt;
            Stats::inc(if ok {
                &stats.sql_txns
            } else {
                &stats.sql_failed
            });
        }
        drain_all(&addrs, &url).await?;
        compare(seed, axes, &addrs, &url, &clients, stats).await?;
        if failures() != failures_before {
            println!("  (at a checkpoint, after: {last})");
        }
    }
    if Stats::get(&stats.divergences) != divergences_before {
        println!("  server logs: {}", srv.logs());
    }
    for c in &clients {
        let g = c.shared.lock().unwrap();
        for h in g.views.iter().filter(|h| h.state.error.is_some()) {
            Stats::inc(&stats.ended_in_error);
            println!(
                "  FAILURE: {} {} ends flagged with an error frame: {}",
                g.label,
                h.spec,
                h.state.error.as_deref().unwrap_or_default()
            );
        }
    }

    let bad_after = (
        Stats::get(&stats.gaps),
        Stats::get(&stats.divergences),
        Stats::get(&stats.ended_in_error),
    );
    if bad_after != bad_before {
        println!("  faults (seconds from the start of writes):");
        for s in &sequence {
            println!("    {s}");
        }
    }
    drop(clients);
    srv.stop().await;
    drop(srv);
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

/// A random node's address; with one node, no draw from `rng` (so a seed
/// still gives the schedule it gave a single server before).
pub fn pick_node(addrs: &[String], rng: &mut Rng) -> String {
    if addrs.len() == 1 {
        addrs[0].clone()
    } else {
        rng.pick(addrs).clone()
    }
}

/// Drains the change stream as every node sees it.
async fn drain_all(addrs: &[String], url: &str) -> Result<(), String> {
    for a in addrs {
        drain(a, url).await?;
    }
    Ok(())
}

/// The hot-row writers: eight connections until `until`.
fn hot_writers(
    url: &str,
    rng: &mut Rng,
    until: Instant,
    stats: &Arc<Stats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            tokio::spawn(writes::hot_writer(
                url.to_owned(),
                rng.fork(),
                until,
                stats.clone(),
            ))
        })
        .collect()
}

/// An item id, a person id and an account id that some client view shows
/// (random ones when none does).
fn shown(clients: &[client::ClientHandle], rng: &mut Rng) -> (i64, i64, i64) {
    let mut items = Vec::new();
    let mut people = Vec::new();
    let mut accounts = Vec::new();
    for c in clients {
        let g = c.shared.lock().unwrap();
        for k in g.views.iter().flat_map(|h| h.state.rows.keys()) {
            match (&*k.table, k.id.parse::<i64>()) {
                ("items", Ok(id)) => items.push(id),
                ("people", Ok(id)) => people.push(id),
                ("accounts", Ok(id)) => accounts.push(id),
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
    let account = if accounts.is_empty() {
        rng.range(1, model::HOT_ACCOUNTS)
    } else {
        *rng.pick(&accounts)
    };
    (item, person, account)
}

/// Injects fault `f`; says what it did, for the fault sequence printed
/// when the schedule fails.
async fn fault(
    f: Fault,
    rng: &mut Rng,
    pg: &Pg,
    srv: &mut cluster::Nodes,
    clients: &[client::ClientHandle],
    stats: &Stats,
) -> Result<String, String> {
    let name = args::FAULTS
        .iter()
        .find(|(x, _)| *x == f)
        .map_or("?", |(_, n)| *n);
    let what = match f {
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
            String::new()
        }
        Fault::ServerKill => {
            Stats::inc(&stats.server_kill);
            let s = &mut srv.servers[0];
            s.kill().await;
            let pause = rng.range(0, 800);
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
            s.start().await?;
            format!("back after {pause} ms")
        }
        Fault::NodeKill | Fault::LeaderKill => {
            let i = if f == Fault::LeaderKill {
                Stats::inc(&stats.leader_kill);
                match srv.leader().await {
                    Some(i) => i,
                    None => {
                        Stats::inc(&stats.leader_unknown);
                        rng.range(0, srv.count() as i64 - 1) as usize
                    }
                }
            } else {
                Stats::inc(&stats.node_kill);
                rng.range(0, srv.count() as i64 - 1) as usize
            };
            let was = srv.id(i).to_owned();
            srv.servers[i].kill().await;
            // At times past the lease's life, so another node takes over.
            let pause = rng.range(0, 3000);
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
            srv.start_node(i).await?;
            format!("{was} back after {pause} ms as {}", srv.id(i))
        }
        Fault::NodeTerm => {
            Stats::inc(&stats.node_term);
            let i = rng.range(0, srv.count() as i64 - 1) as usize;
            let was = srv.id(i).to_owned();
            srv.servers[i].stop().await;
            let pause = rng.range(0, 1000);
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
            srv.start_node(i).await?;
            format!("{was} back after {pause} ms as {}", srv.id(i))
        }
        Fault::NatsRestart => {
            Stats::inc(&stats.nats_restart);
            let pause = rng.range(0, 2500);
            srv.restart_nats(Duration::from_millis(pause as u64)).await;
            format!("back after {pause} ms")
        }
        Fault::NatsOutage => {
            Stats::inc(&stats.nats_outage);
            let away = cluster::LEASE_TTL_MS + rng.range(500, 3000) as u64;
            let with_pg = rng.chance(0.5);
            if with_pg {
                Stats::inc(&stats.nats_outage_pg);
            }
            srv.nats_outage(Duration::from_millis(away), with_pg.then_some(pg))
                .await?;
            format!(
                "for {away} ms{}",
                if with_pg {
                    ", PostgreSQL restarted meanwhile"
                } else {
                    ""
                }
            )
        }
        Fault::ClientDrop => {
            Stats::inc(&stats.client_drop);
            // Long enough, at times, to miss more diffs than a session queue holds.
            let away = rng.range(0, 3000);
            let k = rng.range(0, clients.len() as i64 - 1) as usize;
            let _ = clients[k]
                .cmds
                .try_send(client::Cmd::Drop(Duration::from_millis(away as u64)));
            format!("client {k} away {away} ms")
        }
        Fault::Reanchor => {
            let c = &clients[rng.range(0, clients.len() as i64 - 1) as usize];
            let windowed: Vec<usize> = c
                .shared
                .lock()
                .unwrap()
                .views
                .iter()
                .enumerate()
                .filter(|(_, h)| h.spec.window.is_some())
                .map(|(i, _)| i)
                .collect();
            if !windowed.is_empty() {
                let i = *rng.pick(&windowed);
                let _ = c
                    .cmds
                    .try_send(client::Cmd::Reanchor(i, model::Win::random(rng)));
            }
            String::new()
        }
        Fault::ClientPause => {
            Stats::inc(&stats.client_pause);
            let d = rng.range(300, 2500);
            let k = rng.range(0, clients.len() as i64 - 1) as usize;
            let _ = clients[k]
                .cmds
                .try_send(client::Cmd::Pause(Duration::from_millis(d as u64)));
            format!("client {k} for {d} ms")
        }
    };
    Ok(format!("{name} {what}").trim_end().to_owned())
}
