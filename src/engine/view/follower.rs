//! A view's cluster side: a follower copy built from the owner's snapshot
//! and kept current by applying the owner's frames, and the owner's side of
//! a follower's start, a promotion and a lease taken back.

use std::sync::{Arc, Mutex};

use super::*;

impl View {
    /// Whether another node evaluates this view and this copy follows it.
    pub fn is_follower(&self) -> bool {
        self.lock().follower
    }

    /// The owner's side of a follower's start: the current snapshot and the
    /// diffs kept for catch-up, or `None` while this node does not evaluate
    /// the view (not ready, closed, or itself a follower).
    pub fn snapshot_with_history(&self) -> Option<(Arc<Frame>, Vec<Arc<Frame>>)> {
        let st = self.lock();
        if !st.ready || st.closed || st.follower {
            return None;
        }
        Some((
            self.snapshot_frame(&st),
            st.history.iter().cloned().collect(),
        ))
    }

    /// The owner's newest frame: its last diff, or its snapshot before it
    /// made any; `None` while this node does not evaluate the view.
    pub fn newest_frame(&self) -> Option<Arc<Frame>> {
        let st = self.lock();
        if !st.ready || st.closed || st.follower {
            return None;
        }
        Some(match st.history.back() {
            Some(f) => f.clone(),
            None => self.snapshot_frame(&st),
        })
    }

    /// Makes this view a follower holding the owner's `snapshot`, with
    /// `history` (the owner's diffs up to it) for catch-up. Subscribers it
    /// already has get the snapshot: the owner, or its epoch, changed.
    pub(crate) fn load(
        &self,
        snapshot: &Arc<Frame>,
        history: Vec<Arc<Frame>>,
        store: &Mutex<Store>,
    ) {
        let FrameBody::Snapshot(snap) = &snapshot.body else {
            return;
        };
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let ws = &self.key.scope.workspace_id;
        let mut next: HashMap<RowKey, SharedFields> = HashMap::with_capacity(snap.rows.len());
        {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            for (k, fields) in &snap.rows {
                let shared = match st.rows.get(k) {
                    Some(old) if **old == **fields => old.clone(),
                    Some(_) => store.update(ws, k, (**fields).clone()),
                    None => store.acquire(ws, k, (**fields).clone(), &self.me),
                };
                next.insert(k.clone(), shared);
            }
            for k in st.rows.keys() {
                if !next.contains_key(k) {
                    store.release(ws, k, &self.me);
                }
            }
        }
        self.epoch.store(snapshot.epoch, Ordering::Relaxed);
        st.follower = true;
        st.ready = true;
        st.version = snapshot.version;
        st.refs = snap.refs.clone();
        st.rows = next;
        st.total = snap.total;
        st.window = snap.window;
        st.reach = None;
        st.history = history
            .into_iter()
            .filter(|f| {
                f.epoch == snapshot.epoch
                    && f.version <= snapshot.version
                    && matches!(f.body, FrameBody::Diff(_))
            })
            .collect();
        if !st.subscribers.is_empty() {
            let frame = self.snapshot_frame(&st);
            for s in st.subscribers.values() {
                s.push_frame(frame.clone());
            }
        }
    }

    /// Applies one of the owner's frames to a follower and hands it to the
    /// subscribers, with the owner's epoch, version and encoding.
    pub(crate) fn follow(
        &self,
        frame: Arc<Frame>,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
    ) -> Followed {
        let mut st = self.lock();
        if st.closed || !st.follower {
            return Followed::Closed;
        }
        let diff = match &frame.body {
            FrameBody::Snapshot(_) => {
                drop(st);
                self.load(&frame, Vec::new(), store);
                return Followed::Applied;
            }
            _ if frame.epoch != self.epoch() => return Followed::Gap,
            FrameBody::Error(_) => {
                for s in st.subscribers.values() {
                    s.push_frame(frame.clone());
                }
                return Followed::Applied;
            }
            FrameBody::Diff(d) => d,
        };
        if frame.version <= st.version {
            return Followed::Stale;
        }
        if frame.prev_version != st.version {
            return Followed::Gap;
        }
        let mut refs = (*st.refs).clone();
        if crate::engine::diff::apply_refs(&mut refs, &diff.refs).is_err() {
            return Followed::Gap;
        }
        let ws = self.key.scope.workspace_id.clone();
        let mut rows = st.rows.clone();
        {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            for (k, fields) in &diff.rows {
                let shared = match rows.get(k) {
                    Some(_) => store.update(&ws, k, (**fields).clone()),
                    None => store.acquire(&ws, k, (**fields).clone(), &self.me),
                };
                rows.insert(k.clone(), shared);
            }
            for (k, ops) in &diff.patches {
                let Some(old) = rows.get(k) else {
                    continue;
                };
                let mut f = (**old).clone();
                if crate::engine::diff::apply_fields(&mut f, ops).is_err() {
                    continue;
                }
                let shared = store.update(&ws, k, f);
                rows.insert(k.clone(), shared);
            }
            // Rows no ref reaches any more are let go, as the owner did.
            let mut reached = std::collections::HashSet::new();
            for r in &refs {
                r.visit_keys(&mut |k| {
                    reached.insert(k.clone());
                });
            }
            rows.retain(|k, _| {
                let keep = reached.contains(k);
                if !keep {
                    store.release(&ws, k, &self.me);
                }
                keep
            });
        }
        st.refs = Arc::new(refs);
        st.rows = rows;
        if diff.total.is_some() {
            st.total = diff.total;
        }
        if diff.window.is_some() {
            st.window = diff.window;
        }
        st.version = frame.version;
        st.history.push_back(frame.clone());
        while st.history.len() > history {
            st.history.pop_front();
        }
        for s in st.subscribers.values() {
            s.push_frame(frame.clone());
        }
        stats.frames.add(st.subscribers.len() as u64);
        Followed::Applied
    }

    /// Turns a follower into the view's owner, in the same epoch: its next
    /// version is the first of `term`, which the cluster claimed for this
    /// node alone, so a version the old owner made but never got out (its
    /// own clients may hold it) is never made again with other contents.
    /// `owners` gets the frames from now on; the caller then has the view
    /// evaluated. False when the view is not a follower.
    pub(crate) fn promote(&self, owners: Arc<dyn Owners<View>>, term: u64) -> bool {
        let mut st = self.lock();
        if st.closed || !st.follower {
            return false;
        }
        st.follower = false;
        st.term = Some(term);
        let _ = self.publisher.set(owners);
        true
    }

    /// Tells the cluster this view began a new life here: an empty diff of
    /// the new epoch, which followers still holding an older life cannot
    /// apply, so they fetch this owner's snapshot. Without it a follower
    /// would show the old life until the view next changes.
    pub(super) fn announce(&self) {
        let st = self.lock();
        if !st.ready || st.closed {
            return;
        }
        let frame = Frame::new(
            self.id.clone(),
            self.epoch(),
            st.version,
            0,
            FrameBody::Diff(ViewDiff::default()),
        );
        if let Some(o) = self.publisher.get() {
            o.published(self, &frame);
        }
    }

    /// The next version starts `term`, claimed for this node alone after
    /// it took the view's lease back.
    pub(crate) fn retake(&self, term: u64) {
        self.lock().term = Some(term);
    }
}
