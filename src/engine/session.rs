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
use super::sink::{Attached, Sink};
use super::stats::Stats;
use super::view::View;

/// An item waiting to be written to the client.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A view frame (droppable: a resync replaces it), and the id the
    /// session knows the view by when that is not the view's own (a window
    /// that was re-anchored onto another view keeps its first id).
    Frame(Arc<Frame>, Option<Arc<str>>),
    /// A Sync catch-up: one view's missed diffs, in version order, sent
    /// together so the client shows the caught-up state at once. Bounded by
    /// the view's history, so it does not count against the frame queue.
    /// The id is as for `Frame`.
    CatchUp(Vec<Arc<Frame>>, Option<Arc<str>>),
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
    /// By the id the client knows each subscription by.
    subscriptions: HashMap<Arc<str>, Arc<View>>,
    /// View id -> the subscription id, for views held under another id
    /// than their own (after a re-anchor). A view is held under one id.
    aliases: HashMap<Arc<str>, Arc<str>>,
    /// Subscribes in progress, counted against the limit.
    pending: usize,
    closed: bool,
    /// Why the server ended the session (the client should go elsewhere).
    ended: Option<Arc<str>>,
    overflows: u64,
}

impl Inner {
    /// Whether frames of `view_id` go to this session, and under which id:
    /// `Some(None)` under the view's own, `Some(Some(alias))` under another.
    fn route(&self, view_id: &Arc<str>) -> Option<Option<Arc<str>>> {
        if let Some(alias) = self.aliases.get(view_id) {
            return Some(Some(alias.clone()));
        }
        match self.subscriptions.get(view_id) {
            Some(v) if v.id == *view_id => Some(None),
            _ => None,
        }
    }
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

/// Why a subscription slot could not be reserved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// The session holds the limit of subscriptions.
    Full(usize),
    /// The id names a re-anchored window of this session, now showing
    /// another view.
    Taken,
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
            if g.closed || g.resync.iter().any(|v| v.id == frame.view_id) {
                continue;
            }
            let Some(alias) = g.route(&frame.view_id) else {
                continue;
            };
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
            g.queue.push_back(Outbound::Frame(frame, alias));
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
                        Outbound::Frame(..) => g.frames_queued -= 1,
                        Outbound::CatchUp(..) => {}
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
                        let alias = self.lock().aliases.get(&view.id).cloned();
                        return Some(Outbound::Frame(frame, alias));
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// The next queued item if it is a diff or error frame, without
    /// waiting: the stream uses it to gather frames that queued up into one
    /// batch. Snapshots are left for [`Session::next`]: they go out alone,
    /// in parts when big.
    pub fn try_next_frame(&self) -> Option<(Arc<Frame>, Option<Arc<str>>)> {
        let mut g = self.lock();
        match g.queue.front() {
            Some(Outbound::Frame(f, _))
                if !matches!(f.body, super::frame::FrameBody::Snapshot(_)) => {}
            _ => return None,
        }
        match g.queue.pop_front() {
            Some(Outbound::Frame(f, alias)) => {
                g.frames_queued -= 1;
                Some((f, alias))
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
    /// subscribed to `view_id` (under its own id or another).
    pub(crate) fn reserve(
        &self,
        view_id: &str,
        limit: usize,
    ) -> Result<Option<Arc<View>>, Reserve> {
        let mut g = self.lock();
        if let Some(v) = g.subscriptions.get(view_id) {
            if &*v.id != view_id {
                return Err(Reserve::Taken);
            }
            return Ok(Some(v.clone()));
        }
        if let Some(alias) = g.aliases.get(view_id) {
            return Ok(g.subscriptions.get(alias).cloned());
        }
        if g.subscriptions.len() + g.pending >= limit {
            return Err(Reserve::Full(limit));
        }
        g.pending += 1;
        Ok(None)
    }

    /// The id the session knows `view_id` by (its own unless re-anchored).
    pub fn subscription_id(&self, view_id: &Arc<str>) -> Arc<str> {
        self.lock()
            .aliases
            .get(view_id)
            .cloned()
            .unwrap_or_else(|| view_id.clone())
    }

    /// The view of subscription `id`.
    pub(crate) fn subscription(&self, id: &str) -> Option<Arc<View>> {
        self.lock().subscriptions.get(id).cloned()
    }

    /// Whether the session holds the view `view_id`, under any id.
    pub(crate) fn holds_view(&self, view_id: &str) -> bool {
        let g = self.lock();
        g.aliases.contains_key(view_id)
            || g.subscriptions
                .get(view_id)
                .is_some_and(|v| &*v.id == view_id)
    }

    /// Whether the session is owed a snapshot of `view` (its client does
    /// not hold the view's last state).
    pub(crate) fn owes_snapshot(&self, view: &View) -> bool {
        self.lock()
            .resync
            .iter()
            .any(|v| std::ptr::eq(Arc::as_ptr(v), view))
    }

    /// Moves subscription `id` onto `view` (a re-anchor) and queues `first`,
    /// the frame that takes the client there. Called by the view with its
    /// state locked. False, changing nothing, when the session has closed.
    pub(crate) fn move_subscription(
        &self,
        id: &Arc<str>,
        view: Arc<View>,
        first: Arc<Frame>,
    ) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if let Some(old) = g.subscriptions.insert(id.clone(), view.clone()) {
            g.aliases.remove(&old.id);
            g.resync.retain(|r| !Arc::ptr_eq(r, &old));
        }
        if view.id != *id {
            g.aliases.insert(view.id.clone(), id.clone());
        }
        g.resync.retain(|r| !Arc::ptr_eq(r, &view));
        drop(g);
        self.push_frame(first);
        true
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
        let alias = g.aliases.get(&view.id).cloned();
        g.subscriptions
            .insert(alias.clone().unwrap_or_else(|| view.id.clone()), view);
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
                    g.queue.push_back(Outbound::CatchUp(frames, alias));
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

    /// Forgets a subscription (by the id the client knows it by), and
    /// drops its queued frames; returns its view.
    pub(crate) fn remove_subscription(&self, id: &str) -> Option<Arc<View>> {
        let mut g = self.lock();
        let v = g.subscriptions.remove(id)?;
        g.aliases.remove(&v.id);
        g.resync.retain(|r| !Arc::ptr_eq(r, &v));
        // Frames queued under this id: the view's own, and any of a view it
        // was re-anchored from.
        let ours = |f: &Frame, alias: &Option<Arc<str>>| match alias {
            Some(a) => &**a == id,
            None => &*f.view_id == id,
        };
        let dropped = g
            .queue
            .iter()
            .filter(|o| matches!(o, Outbound::Frame(f, a) if ours(f, a)))
            .count();
        g.queue.retain(|o| match o {
            Outbound::Frame(f, a) => !ours(f, a),
            Outbound::CatchUp(fs, a) => fs.first().is_none_or(|f| !ours(f, a)),
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
        g.aliases.clear();
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

    /// Why the server ended the session, when it did so to send the
    /// client elsewhere (see [`super::Engine::set_away`]).
    pub fn ended(&self) -> Option<Arc<str>> {
        self.lock().ended.clone()
    }

    pub(crate) fn end_because(&self, reason: Arc<str>) {
        self.lock().ended = Some(reason);
    }

    /// The views the session is subscribed to, by the id the client knows
    /// each by.
    pub fn views(&self) -> Vec<(Arc<str>, Arc<View>)> {
        self.lock()
            .subscriptions
            .iter()
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect()
    }

    /// How many subscriptions the session holds.
    pub fn subscriptions(&self) -> usize {
        self.lock().subscriptions.len()
    }

    /// How many times the session fell behind and was cut over to resync.
    pub fn overflows(&self) -> u64 {
        self.lock().overflows
    }
}

impl Sink<View> for Session {
    fn id(&self) -> &Arc<str> {
        &self.id
    }
    fn push_frame(&self, frame: Arc<Frame>) {
        Session::push_frame(self, frame);
    }
    fn attach(&self, view: Arc<View>, reserved: bool, first: Attached) -> bool {
        Session::attach(self, view, reserved, first)
    }
    fn move_subscription(&self, id: &Arc<str>, view: Arc<View>, first: Arc<Frame>) -> bool {
        Session::move_subscription(self, id, view, first)
    }
    fn owes_snapshot(&self, view: &View) -> bool {
        Session::owes_snapshot(self, view)
    }
    fn take_resync(&self, view: &View) -> bool {
        Session::take_resync(self, view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{diff, snapshot, view};

    fn session(capacity: usize) -> Session {
        let identity = Identity::new("u", "w");
        Session::new("s".into(), identity, capacity, Arc::new(Stats::default()))
    }

    fn attach(s: &Session, v: &Arc<View>) {
        let first = Attached::Snapshot {
            reply: None,
            snapshot: snapshot(v, 1),
        };
        assert!(s.attach(v.clone(), false, first));
    }

    fn versions(s: &Session) -> Vec<u64> {
        std::iter::from_fn(|| s.try_next_frame().map(|(f, _)| f.version)).collect()
    }

    #[tokio::test]
    async fn frames_of_held_views_queue_in_order_and_others_are_dropped() {
        let s = session(8);
        let (held, other) = (view("held"), view("other"));
        attach(&s, &held);
        // The snapshot goes out first, on its own.
        match s.next().await {
            Some(Outbound::Frame(f, None)) => assert_eq!(f.version, 1),
            _ => panic!("the snapshot comes first"),
        }
        s.push_frames([diff(&held, 2), diff(&other, 7), diff(&held, 3)]);
        assert_eq!(versions(&s), [2, 3]);
        assert_eq!(s.queued(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_frames_and_owes_each_view_a_snapshot() {
        let s = session(2);
        let (a, b) = (view("a"), view("b"));
        attach(&s, &a);
        attach(&s, &b);
        s.push_message(Bytes::from_static(b"reply")).unwrap();
        s.push_frames([diff(&a, 2), diff(&b, 2), diff(&a, 3)]);
        assert_eq!(s.overflows(), 1);
        assert!(s.owes_snapshot(&a) && s.owes_snapshot(&b));
        // Replies are never dropped; the frames are.
        assert!(matches!(s.next().await, Some(Outbound::Message(_))));
        assert!(versions(&s).is_empty());
        // Frames of a view owed a snapshot wait for it.
        s.push_frame(diff(&a, 4));
        assert!(versions(&s).is_empty());
        assert!(s.take_resync(&a));
        assert!(!s.take_resync(&a), "taken once");
        assert!(s.owes_snapshot(&b));
    }

    #[test]
    fn a_closed_session_takes_nothing() {
        let s = session(4);
        let v = view("v");
        let closed = s.close();
        assert!(closed.is_empty());
        let first = Attached::CatchUp(Vec::new());
        assert!(!s.attach(v.clone(), false, first));
        assert_eq!(s.push_message(Bytes::new()), Err(QueueError::Closed));
        assert!(!s.move_subscription(&"v".into(), v, diff(&view("v"), 2)));
    }

    #[test]
    fn subscriptions_are_capped_counting_those_in_progress() {
        let s = session(4);
        assert!(matches!(s.reserve("a", 2), Ok(None)));
        assert!(matches!(s.reserve("b", 2), Ok(None)));
        assert!(matches!(s.reserve("c", 2), Err(Reserve::Full(2))));
        s.release_reservation();
        assert!(matches!(s.reserve("c", 2), Ok(None)));
    }
}
