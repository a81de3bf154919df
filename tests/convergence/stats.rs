//! Counters of a run, printed as the closing summary.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $label:literal,)*) => {
        /// Shared counters; every field counts one kind of event.
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
        }

        impl Stats {
            /// `(label, value)` pairs in declaration order.
            pub fn rows(&self) -> Vec<(&'static str, u64)> {
                vec![$(($label, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    schedules: "schedules",
    sql_txns: "SQL transactions committed",
    sql_failed: "SQL transactions failed (conflicts, outages)",
    mutations: "mutations (gRPC Mutate) applied",
    mutations_failed: "mutations failed",
    pg_fast: "faults: PostgreSQL fast restart",
    pg_immediate: "faults: PostgreSQL immediate restart",
    server_kill: "faults: server SIGKILL + restart",
    node_kill: "faults: cluster node SIGKILL + restart",
    leader_kill: "faults: change source leader SIGKILL + restart",
    leader_unknown: "  leader kills that found no leader (a random node killed instead)",
    node_term: "faults: cluster node SIGTERM + restart",
    nats_restart: "faults: nats-server SIGKILL + restart",
    nats_outage: "faults: nats-server away longer than a lease",
    nats_outage_pg: "  of which with a PostgreSQL restart meanwhile",
    client_drop: "faults: client connection dropped",
    client_pause: "faults: client stopped reading",
    reanchors: "windows re-anchored",
    reconnects: "client reconnects",
    node_switches: "client reconnects to another node",
    connect_failures: "client connect attempts failed",
    subscribes: "subscribes",
    request_errors: "subscribe/sync errors (retried)",
    internal_errors: "INTERNAL answers (any fails the schedule)",
    sync_catch_up: "syncs: catch-up",
    sync_snapshot: "syncs: snapshot",
    sync_current: "syncs: current",
    moved_catch_up: "  first sync on another node: catch-up (views)",
    moved_current: "  first sync on another node: current (views)",
    moved_snapshot: "  first sync on another node: snapshot (views)",
    max_catch_up: "largest catch-up announced (frames)",
    bad_sync_replies: "sync replies inconsistent with the request",
    late_sync: "sync replies before the frames they announce (each must be followed by a resync)",
    late_sync_resynced: "  of which followed by a resync snapshot",
    frames: "frames applied",
    cut_over: "snapshots pushed unasked (slow reader cut over)",
    error_frames: "error frames",
    views_compared: "view comparisons (each client view, at the end and at every checkpoint)",
    ended_in_error: "views ending flagged with an error frame",
    divergences: "divergences",
    gaps: "gaps",
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The summary as a Markdown table.
    pub fn table(&self) -> String {
        let mut s = String::from("| metric | value |\n|---|---|\n");
        for (label, v) in self.rows() {
            s.push_str(&format!("| {label} | {v} |\n"));
        }
        s
    }
}
