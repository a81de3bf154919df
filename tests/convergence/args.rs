//! The command line: schedule count, seed, and the switches that force or
//! turn off axes so a failure can be narrowed down.

use std::collections::BTreeSet;
use std::time::Duration;

use super::model::{Axes, AxisChoice, Mode};

/// A kind of fault a schedule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    PgFast,
    PgImmediate,
    ServerKill,
    ClientDrop,
    ClientPause,
    /// A client moves one of its windows elsewhere (not a failure, but a
    /// change of the view under a live subscription).
    Reanchor,
    /// Cluster: a random node killed (SIGKILL), started again after a pause.
    NodeKill,
    /// Cluster: the node holding the change source lease killed, then
    /// started again after a pause.
    LeaderKill,
    /// Cluster: a random node stopped gracefully (SIGTERM) and started again.
    NodeTerm,
    /// Cluster: nats-server killed and started again on the same store.
    NatsRestart,
    /// Cluster: nats-server away for longer than a lease (every lease
    /// lapses), with PostgreSQL restarted meanwhile half of the time.
    NatsOutage,
}

impl Fault {
    /// Whether the fault needs a cluster (`--nodes` above 1).
    pub fn cluster_only(self) -> bool {
        matches!(
            self,
            Fault::NodeKill
                | Fault::LeaderKill
                | Fault::NodeTerm
                | Fault::NatsRestart
                | Fault::NatsOutage
        )
    }
}

/// Every fault kind and its name on the command line.
pub const FAULTS: [(Fault, &str); 11] = [
    (Fault::PgFast, "pg-fast"),
    (Fault::PgImmediate, "pg-immediate"),
    (Fault::ServerKill, "server-kill"),
    (Fault::ClientDrop, "client-drop"),
    (Fault::ClientPause, "client-pause"),
    (Fault::Reanchor, "reanchor"),
    (Fault::NodeKill, "node-kill"),
    (Fault::LeaderKill, "leader-kill"),
    (Fault::NodeTerm, "node-term"),
    (Fault::NatsRestart, "nats-restart"),
    (Fault::NatsOutage, "nats-outage"),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Args {
    pub schedules: u64,
    pub seed: u64,
    /// Nodes of the `schedules` schedules (1: a single server, no NATS).
    pub nodes: usize,
    /// Schedules run after those, as clusters of `CLUSTER_NODES` nodes.
    pub cluster_schedules: u64,
    /// A cluster node started again takes a new `cluster.node_id`.
    pub fresh_node_ids: bool,
    pub duration: Duration,
    pub clients: usize,
    pub checks: u64,
    /// Hot-row schedules: write bursts, each followed by a comparison.
    pub bursts: u64,
    pub axes: AxisChoice,
    pub faults: BTreeSet<Fault>,
    pub mutations: bool,
    pub truncate: bool,
}

/// Nodes of the cluster set that follows the single-server schedules.
pub const CLUSTER_NODES: usize = 3;

const HELP: &str = "convergence test switches (unknown arguments are ignored):
  --schedules N         schedules to run (default 4)
  --seed N              seed of the first schedule; schedule i uses seed+i (default 1)
  --nodes N             run the schedules on a cluster of N nodes sharing one nats-server
                        (default 1: a single server); given, --cluster-schedules defaults to 0
  --cluster-schedules N schedules run after those on a cluster of 3 nodes, with seeds
                        following theirs (default 2)
  --same-node-ids       a cluster node started again keeps its cluster.node_id (default: it
                        takes a new one, as with the server's default random node_id)
  --duration-ms N       how long each schedule writes (default 5000)
  --clients N           client sessions per schedule (default 6)
  --checks N            single writes at the end, each followed by a full comparison (default 25)
  --bursts N            hot-row schedules: write bursts of eight writers, each followed by a
                        full comparison (default 4)
  --hot on|off          hot-row schedules (default: from the seed, every other pair of seeds)
  --modes wal,notify    change modes to use (default both, alternating with the seed)
  --route on|off        force the route axis (default: from the seed)
  --patch on|off        force the patch axis
  --replica-full on|off force REPLICA IDENTITY FULL on or off
  --self-join on|off    serve the self-join graph (default on); --no-self-join
  --queue N             engine.session_queue (default: 16 or 256 from the seed)
  --faults LIST         pg-fast,pg-immediate,server-kill,client-drop,client-pause,reanchor,
                        node-kill,leader-kill,node-term,nats-restart,nats-outage, or none (the
                        last five apply to clusters only; server-kill to a single server only)
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

/// Parses the process's arguments, ignoring unknown ones.
pub fn parse() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        schedules: 4,
        seed: 1,
        nodes: 1,
        cluster_schedules: 2,
        fresh_node_ids: true,
        duration: Duration::from_millis(5000),
        clients: 6,
        checks: 25,
        bursts: 4,
        axes: AxisChoice::default(),
        faults: FAULTS.iter().map(|(f, _)| *f).collect(),
        mutations: true,
        truncate: true,
    };
    let mut cluster_schedules = None;
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
            "--nodes" => {
                a.nodes = num(next).unwrap_or(1).max(1) as usize;
                cluster_schedules = cluster_schedules.or(Some(0));
            }
            "--cluster-schedules" => cluster_schedules = num(next),
            "--duration-ms" => {
                a.duration = Duration::from_millis(num(next).unwrap_or(5000));
            }
            "--clients" => a.clients = num(next).unwrap_or(6).max(1) as usize,
            "--checks" => a.checks = num(next).unwrap_or(a.checks),
            "--bursts" => a.bursts = num(next).unwrap_or(a.bursts),
            "--hot" => a.axes.hot = on_off(next),
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
                    "--same-node-ids" => a.fresh_node_ids = false,
                    "--no-mutations" => a.mutations = false,
                    "--no-truncate" => a.truncate = false,
                    _ => {} // libtest's own flags and anything else
                }
            }
        }
        i += if took { 2 } else { 1 };
    }
    a.cluster_schedules = cluster_schedules.unwrap_or(a.cluster_schedules);
    a
}

impl Args {
    /// The faults a schedule on `nodes` nodes draws from.
    pub fn faults_for(&self, nodes: usize) -> Vec<Fault> {
        self.faults
            .iter()
            .copied()
            .filter(|f| {
                if nodes > 1 {
                    *f != Fault::ServerKill
                } else {
                    !f.cluster_only()
                }
            })
            .collect()
    }

    /// The command that reruns exactly the schedule with `seed`, `nodes`
    /// and `axes`.
    pub fn rerun(&self, seed: u64, nodes: usize, axes: &Axes) -> String {
        let faults: Vec<&str> = FAULTS
            .iter()
            .filter(|(f, _)| self.faults.contains(f))
            .map(|(_, n)| *n)
            .collect();
        let mut s = format!(
            "cargo test --release --test convergence -- --schedules 1 --seed {seed} --nodes {nodes} {axes} --duration-ms {} --clients {} --checks {} --bursts {} --faults {}",
            self.duration.as_millis(),
            self.clients,
            self.checks,
            self.bursts,
            if faults.is_empty() { "none".into() } else { faults.join(",") }
        );
        if !self.fresh_node_ids {
            s.push_str(" --same-node-ids");
        }
        if !self.mutations {
            s.push_str(" --no-mutations");
        }
        if !self.truncate {
            s.push_str(" --no-truncate");
        }
        s
    }
}
