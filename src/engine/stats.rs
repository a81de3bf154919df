//! Engine-wide counters, and the feed of recent events DevTools shows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters the engine keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Where durations go (see [`super::observe`]).
    pub timings: super::observe::Timings,
    /// View evaluations run (first evaluations included).
    pub evaluations: Counter,
    /// Evaluation rounds of refreshes (one query for a SQL graph, however
    /// many views it answers).
    pub evaluation_rounds: Counter,
    /// Rounds that patched held rows from a change's values, without a query.
    pub patches: Counter,
    /// Evaluations that failed.
    pub eval_errors: Counter,
    /// Changes received.
    pub changes: Counter,
    /// Invalidation batches processed.
    pub batches: Counter,
    /// Frames queued to sessions (one per subscriber per diff).
    pub frames: Counter,
    /// Times a session fell behind and was cut over to snapshots.
    pub resyncs: Counter,
    /// Recent change batches and frames, recorded while watched.
    pub feed: Feed,
}

/// What the recent-events feed records.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A change batch taken by invalidation.
    Batch {
        /// Changes in the batch.
        changes: usize,
        /// The tables they touched (at most [`FEED_LIST`]).
        tables: Vec<String>,
        /// The workspaces they named (at most [`FEED_LIST`]); empty when a
        /// change did not say, i.e. it may touch any workspace.
        workspaces: Vec<String>,
        /// Views it scheduled for a refresh.
        views: usize,
    },
    /// A view published a new version to its subscribers.
    Frame {
        /// `<graph>/<params_hash>`.
        view: Arc<str>,
        /// The view's workspace.
        workspace: Arc<str>,
        /// The version published.
        version: u64,
        /// Subscribers it was queued to.
        subscribers: usize,
    },
}

/// One entry of the recent-events feed.
#[derive(Debug, Clone)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// Longest list of tables or workspaces one batch event keeps.
pub const FEED_LIST: usize = 8;

/// A bounded ring of recent change batches and frames, written only while
/// someone watches (the DevTools stream), plus a wake-up for watchers.
/// Recording never waits: an entry that would contend for the ring is
/// dropped (sampling under load) and counted in [`Feed::skipped`].
#[derive(Debug)]
pub struct Feed {
    watchers: AtomicUsize,
    capacity: AtomicUsize,
    ring: Mutex<VecDeque<Event>>,
    seq: AtomicU64,
    skipped: Counter,
    changed: Notify,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            watchers: AtomicUsize::new(0),
            capacity: AtomicUsize::new(200),
            ring: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            skipped: Counter::default(),
            changed: Notify::new(),
        }
    }
}

impl Feed {
    /// Sets how many entries the ring keeps (at least 1).
    pub fn set_capacity(&self, n: usize) {
        self.capacity.store(n.max(1), Ordering::Relaxed);
    }

    /// Starts watching: entries are recorded until a matching
    /// [`Feed::unwatch`].
    pub fn watch(&self) {
        self.watchers.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops watching; the last watcher to leave empties the ring.
    pub fn unwatch(&self) {
        if self.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.ring.lock().unwrap_or_else(|e| e.into_inner()) = VecDeque::new();
        }
    }

    /// Whether anyone watches; when not, recording and waking cost one load.
    pub fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Records the event `make` builds, if anyone watches and the ring is
    /// free, and wakes the watchers.
    pub fn record(&self, make: impl FnOnce() -> EventKind) {
        if !self.is_watched() {
            return;
        }
        match self.ring.try_lock() {
            Ok(mut ring) => {
                let cap = self.capacity.load(Ordering::Relaxed);
                while ring.len() >= cap {
                    ring.pop_front();
                }
                ring.push_back(Event {
                    at_ms: now_ms(),
                    kind: make(),
                });
            }
            Err(_) => self.skipped.inc(),
        }
        self.touch();
    }

    /// Tells watchers something they show changed.
    pub fn touch(&self) {
        if self.is_watched() {
            self.seq.fetch_add(1, Ordering::Release);
            self.changed.notify_waiters();
        }
    }

    /// A number that moves whenever [`Feed::touch`] is called while watched.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Resolves at the next [`Feed::touch`]; enable it before reading
    /// [`Feed::seq`] so no touch in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The entries, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Entries dropped because the ring was busy.
    pub fn skipped(&self) -> u64 {
        self.skipped.get()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
