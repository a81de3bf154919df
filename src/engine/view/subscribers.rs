//! A view's subscribers: attaching one with its first frames (a snapshot,
//! or the diffs it missed), a re-anchor's leave and take-over, and letting
//! one go. Each step runs under the view's state lock, so no frame slips
//! between what a subscriber is handed first and the diffs after it.

use std::sync::{Arc, Mutex, MutexGuard};

use super::*;
use crate::engine::sink::Attached;

impl View {
    /// Adds a subscriber and queues `reply` then a snapshot on its session.
    /// Returns the version, or `None` if the view or the session closed
    /// meanwhile.
    pub(crate) fn attach<S: Sink<View> + 'static>(
        self: &Arc<Self>,
        session: &Arc<S>,
        reserved: bool,
        reply: impl FnOnce(u64) -> Option<Bytes>,
    ) -> Option<u64> {
        let st = self.lock();
        if st.closed || !st.ready {
            return None;
        }
        let version = st.version;
        let first = Attached::Snapshot {
            reply: reply(version),
            snapshot: self.snapshot_frame(&st),
        };
        self.add_subscriber(st, session, reserved, first)
            .then_some(version)
    }

    /// Adds a subscriber that last saw `version` of `epoch` and queues what
    /// it missed: diffs from history, or a snapshot when history is too short.
    pub(crate) fn attach_sync<S: Sink<View> + 'static>(
        self: &Arc<Self>,
        session: &Arc<S>,
        reserved: bool,
        epoch: u64,
        version: u64,
    ) -> Option<(SyncMode, u64)> {
        let st = self.lock();
        if st.closed || !st.ready {
            return None;
        }
        let current = st.version;
        // The client's version must be one this life of the view went
        // through: versions can skip ahead (a new owner), and a version in
        // the gap was made by an owner whose last frames never got out.
        let from = match epoch == self.epoch() {
            true if version == current => Some(st.history.len()),
            true => st.history.iter().position(|f| f.prev_version == version),
            false => None,
        };
        let (mode, first) = if let Some(from) = from {
            let missed: Vec<Arc<Frame>> = st.history.iter().skip(from).cloned().collect();
            let mode = match missed.len() {
                0 => SyncMode::Current,
                n => SyncMode::CatchUp(n as u32),
            };
            (mode, Attached::CatchUp(missed))
        } else {
            let first = Attached::Snapshot {
                reply: None,
                snapshot: self.snapshot_frame(&st),
            };
            (SyncMode::Snapshot, first)
        };
        self.add_subscriber(st, session, reserved, first)
            .then_some((mode, current))
    }

    /// Records `session` as a subscriber and hands it `first`, under the
    /// state lock so no diff slips between. A session that closed meanwhile
    /// is not recorded (false); the caller then lets go of the view.
    fn add_subscriber<S: Sink<View> + 'static>(
        &self,
        mut st: MutexGuard<'_, State>,
        session: &Arc<S>,
        reserved: bool,
        first: Attached,
    ) -> bool {
        st.subscribers.insert(session.id().clone(), session.clone());
        if session.attach(
            self.me.upgrade().expect("a view in use is alive"),
            reserved,
            first,
        ) {
            return true;
        }
        st.subscribers.remove(session.id());
        false
    }

    /// Takes `session` off the subscribers (a re-anchor moves it elsewhere)
    /// and returns what it held, in one step so no later diff reaches it.
    /// Closes the view when it was the last subscriber (true then).
    pub(crate) fn leave(&self, session: &dyn Sink<View>, store: &Mutex<Store>) -> (Held, bool) {
        let mut st = self.lock();
        st.subscribers.remove(session.id());
        let held = Held {
            epoch: self.epoch(),
            version: st.version,
            refs: st.refs.clone(),
            rows: st.rows.clone(),
            total: st.total,
            stale: session.owes_snapshot(self) || !st.ready,
        };
        let closed = st.subscribers.is_empty() && !st.closed;
        if closed {
            self.close_locked(&mut st, store);
        }
        (held, closed)
    }

    /// Makes `session`'s subscription `id` a subscriber of this view, with
    /// one diff from what it `held` to this view's state (a snapshot when it
    /// held nothing usable). `None` when this view or the session closed.
    pub(crate) fn take_over<S: Sink<View> + 'static>(
        self: &Arc<Self>,
        session: &Arc<S>,
        id: &Arc<str>,
        held: &Held,
    ) -> Option<Reanchored> {
        let mut st = self.lock();
        if st.closed || !st.ready {
            return None;
        }
        let (frame, prev_version) = if held.stale {
            (self.snapshot_frame(&st), 0)
        } else {
            let mut diff = content::diff(
                &Content {
                    refs: &held.refs,
                    rows: &held.rows,
                    total: held.total,
                    window: None,
                },
                &Content {
                    refs: &st.refs,
                    rows: &st.rows,
                    total: st.total,
                    window: st.window,
                },
            );
            // Always: the client learns the new window's edges.
            diff.window = Some(st.window.unwrap_or_default());
            let frame = Arc::new(Frame {
                view_id: self.id.clone(),
                epoch: self.epoch(),
                version: st.version,
                prev_version: held.version,
                prev_epoch: held.epoch,
                body: FrameBody::Diff(diff),
                encoded: std::sync::OnceLock::new(),
            });
            (frame, held.version)
        };
        st.subscribers.insert(session.id().clone(), session.clone());
        if !session.move_subscription(id, self.clone(), frame) {
            st.subscribers.remove(session.id());
            return None;
        }
        Some(Reanchored {
            view_id: id.clone(),
            epoch: self.epoch(),
            version: st.version,
            prev_epoch: held.epoch,
            prev_version,
        })
    }

    /// Builds the snapshot a session that fell behind is owed, if it still is.
    pub(crate) fn resync_snapshot(&self, session: &dyn Sink<View>) -> Option<Arc<Frame>> {
        let st = self.lock();
        if !session.take_resync(self) || st.closed {
            return None;
        }
        Some(self.snapshot_frame(&st))
    }

    /// Removes a subscriber. When it was the last one the view closes and
    /// lets go of its rows; returns true then.
    pub(crate) fn detach(&self, session_id: &str, store: &Mutex<Store>) -> bool {
        let mut st = self.lock();
        st.subscribers.remove(session_id);
        if !st.subscribers.is_empty() || st.closed {
            return false;
        }
        self.close_locked(&mut st, store);
        true
    }
}
