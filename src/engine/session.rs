//! Sessions: one per client connection, holding its subscriptions and a
//! bounded outbound queue.
//!
//! Views push frames into the queue while holding their own state lock, so the
//! frames of one view are always queued in version order. When the queue is
//! full the session has fallen behind: its queued frames are dropped and every
//! view it holds is marked for resync. The stream then sends a fresh snapshot
//! of each such view (built when the client is ready for it, so memory stays
//! bounded), after which that view's diffs flow again. A slow session never
//! blocks a view or another session.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::frame::Frame;
use super::identity::Identity;
use super::stats::Stats;
use super::view::View;

/// An item waiting to be written to the client.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A view frame (droppable: a resync replaces it).
    Frame(Arc<Frame>),
    /// A Sync catch-up: one view's missed diffs, in version order, sent
    /// together so the client shows the caught-up state at once. Bounded by
    /// the view's history, so it does not count against the frame queue.
    CatchUp(Vec<Arc<Frame>>),
    /// An already encoded transport message, such as a reply (never dropped).
    Message(Bytes),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Outbound>,
    frames_queued: usize,
    messages_queued: usize,
    /// Views owed a snapshot, in the order they fell behind.
    resync: Vec<Arc<View>>,
    subscriptions: HashMap<Arc<str>, Arc<View>>,
    /// Subscribes in progress, counted against the limit.
    pending: usize,
    closed: bool,
    overflows: u64,
}

/// What a session receives first for a view it attaches to.
pub(crate) enum Attached {
    /// A reply (already encoded, if any), then the snapshot.
    Snapshot {
        reply: Option<Bytes>,
        snapshot: Arc<Frame>,
    },
    /// The diffs missed since the client's version (none when current).
    CatchUp(Vec<Arc<Frame>>),
}

/// One client session.
pub struct Session {
    /// A random id, unguessable.
    pub id: Arc<str>,
    /// Who the session belongs to.
    pub identity: Identity,
    frame_capacity: usize,
    stats: Arc<Stats>,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Woken when a queued message leaves or the session closes.
    drained: Notify,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The session is closed.
    Closed,
    /// The client is not reading its replies.
    Full,
}

impl Session {
    /// Items waiting in the outbound queue (frames and replies).
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    pub(crate) fn new(
        id: Arc<str>,
        identity: Identity,
        frame_capacity: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Session {
            id,
            identity,
            frame_capacity,
            stats,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a view frame. Called with the view's state locked.
    pub(crate) fn push_frame(&self, frame: Arc<Frame>) {
        self.push_frames(std::iter::once(frame));
    }

    /// Queues frames together, so the stream sees all of them at once (and
    /// can send them as one batch). Called with the view's state locked.
    pub(crate) fn push_frames(&self, frames: impl IntoIterator<Item = Arc<Frame>>) {
        let mut g = self.lock();
        let mut queued = false;
        for frame in frames {
            if g.closed
                || !g.subscriptions.contains_key(&frame.view_id)
                || g.resync.iter().any(|v| v.id == frame.view_id)
            {
                continue;
            }
            if g.frames_queued >= self.frame_capacity {
                g.queue.retain(|o| matches!(o, Outbound::Message(_)));
                g.frames_queued = 0;
                let views: Vec<Arc<View>> = g.subscriptions.values().cloned().collect();
                for v in views {
                    if !g.resync.iter().any(|r| Arc::ptr_eq(r, &v)) {
                        g.resync.push(v);
                    }
                }
                g.overflows += 1;
                self.stats.resyncs.inc();
                queued = true;
                break;
            }
            g.queue.push_back(Outbound::Frame(frame));
            g.frames_queued += 1;
            queued = true;
        }
        drop(g);
        if queued {
            self.wake.notify_one();
        }
    }

    /// Queues an encoded message. Fails when the client stopped reading.
    pub fn push_message(&self, bytes: Bytes) -> Result<(), QueueError> {
        let mut g = self.lock();
        if g.closed {
            return Err(QueueError::Closed);
        }
        if g.messages_queued >= self.frame_capacity {
            return Err(QueueError::Full);
        }
        g.queue.push_back(Outbound::Message(bytes));
        g.messages_queued += 1;
        drop(g);
        self.wake.notify_one();
        Ok(())
    }

    /// Waits until fewer than `limit` messages are queued, or the session
    /// is closed: a request reader waits here instead of queuing replies
    /// for a client that does not read them.
    pub async fn message_room(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let g = self.lock();
                if g.closed || g.messages_queued < limit {
                    return;
                }
            }
            drained.await;
        }
    }

    /// The next item for the client; `None` once the session is closed.
    pub async fn next(&self) -> Option<Outbound> {
        loop {
            let owed = {
                let mut g = self.lock();
                if let Some(item) = g.queue.pop_front() {
                    match item {
                        Outbound::Frame(_) => g.frames_queued -= 1,
                        Outbound::CatchUp(_) => {}
                        Outbound::Message(_) => {
                            g.messages_queued -= 1;
                            self.drained.notify_waiters();
                        }
                    }
                    return Some(item);
                }
                if g.closed {
                    return None;
                }
                g.resync.first().cloned()
            };
            match owed {
                Some(view) => {
                    if let Some(frame) = view.resync_snapshot(self) {
                        return Some(Outbound::Frame(frame));
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// The next queued item if it is a frame, without waiting: the stream
    /// uses it to gather frames that queued up into one batch.
    pub fn try_next_frame(&self) -> Option<Arc<Frame>> {
        let mut g = self.lock();
        if !matches!(g.queue.front(), Some(Outbound::Frame(_))) {
            return None;
        }
        match g.queue.pop_front() {
            Some(Outbound::Frame(f)) => {
                g.frames_queued -= 1;
                Some(f)
            }
            _ => None,
        }
    }

    /// Takes `view` off the resync list if it is on it; called by the view
    /// with its state locked, right before it builds the snapshot.
    pub(crate) fn take_resync(&self, view: &View) -> bool {
        let mut g = self.lock();
        let before = g.resync.len();
        g.resync.retain(|v| !std::ptr::eq(Arc::as_ptr(v), view));
        g.resync.len() != before
    }

    /// Reserves a subscription slot. Returns the existing view when already
    /// subscribed to `view_id`.
    pub(crate) fn reserve(&self, view_id: &str, limit: usize) -> Result<Option<Arc<View>>, usize> {
        let mut g = self.lock();
        if let Some(v) = g.subscriptions.get(view_id) {
            return Ok(Some(v.clone()));
        }
        if g.subscriptions.len() + g.pending >= limit {
            return Err(limit);
        }
        g.pending += 1;
        Ok(None)
    }

    /// Gives back a reservation after a failed subscribe.
    pub(crate) fn release_reservation(&self) {
        self.lock().pending -= 1;
    }

    /// Completes a subscribe or sync: records the view (turning the
    /// reservation into a subscription when `reserved`), then queues what
    /// the client gets first. Called by the view with its state locked, so
    /// no diff can slip between. Returns false, changing nothing, when the
    /// session has closed.
    pub(crate) fn attach(&self, view: Arc<View>, reserved: bool, first: Attached) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if reserved {
            g.pending -= 1;
        }
        g.resync.retain(|r| !Arc::ptr_eq(r, &view));
        g.subscriptions.insert(view.id.clone(), view);
        let snapshot = match first {
            Attached::Snapshot { reply, snapshot } => {
                if let Some(bytes) = reply {
                    g.queue.push_back(Outbound::Message(bytes));
                    g.messages_queued += 1;
                }
                Some(snapshot)
            }
            Attached::CatchUp(frames) => {
                if !frames.is_empty() {
                    g.queue.push_back(Outbound::CatchUp(frames));
                }
                None
            }
        };
        drop(g);
        if let Some(frame) = snapshot {
            self.push_frame(frame);
        }
        self.wake.notify_one();
        true
    }

    /// Forgets a subscription; returns its view.
    pub(crate) fn remove_subscription(&self, view_id: &str) -> Option<Arc<View>> {
        let mut g = self.lock();
        let v = g.subscriptions.remove(view_id)?;
        g.resync.retain(|r| !Arc::ptr_eq(r, &v));
        let id = v.id.clone();
        let dropped = g
            .queue
            .iter()
            .filter(|o| matches!(o, Outbound::Frame(f) if f.view_id == id))
            .count();
        g.queue.retain(|o| match o {
            Outbound::Frame(f) => f.view_id != id,
            Outbound::CatchUp(fs) => fs.first().is_none_or(|f| f.view_id != id),
            Outbound::Message(_) => true,
        });
        g.frames_queued -= dropped;
        Some(v)
    }

    /// Closes the session and returns the views it was subscribed to.
    pub(crate) fn close(&self) -> Vec<Arc<View>> {
        let mut g = self.lock();
        g.closed = true;
        g.queue.clear();
        g.frames_queued = 0;
        g.messages_queued = 0;
        g.resync.clear();
        let views = g.subscriptions.drain().map(|(_, v)| v).collect();
        drop(g);
        self.wake.notify_one();
        self.drained.notify_waiters();
        views
    }

    /// Whether the session was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The views the session is subscribed to.
    pub fn views(&self) -> Vec<Arc<View>> {
        self.lock().subscriptions.values().cloned().collect()
    }

    /// The ids of the views the session is subscribed to.
    pub fn view_ids(&self) -> Vec<Arc<str>> {
        self.lock().subscriptions.keys().cloned().collect()
    }

    /// How many times the session fell behind and was cut over to resync.
    pub fn overflows(&self) -> u64 {
        self.lock().overflows
    }
}
