//! What a view needs of a subscriber, and nothing more: an id, and a
//! bounded queue its frames go into, in version order, while the view holds
//! its state lock. Sessions implement it; a view never sees a session.

use std::sync::Arc;

use bytes::Bytes;

use super::frame::Frame;

/// What a session receives first for a view it attaches to.
pub enum Attached {
    /// A reply (already encoded, if any), then the snapshot.
    Snapshot {
        reply: Option<Bytes>,
        snapshot: Arc<Frame>,
    },
    /// The diffs missed since the client's version (none when current).
    CatchUp(Vec<Arc<Frame>>),
}

/// A subscriber of views of type `V`.
pub trait Sink<V>: Send + Sync {
    /// Unique among the view's subscribers.
    fn id(&self) -> &Arc<str>;
    /// Queues one frame. Never blocks: a subscriber that cannot keep up is
    /// cut over to a resync by its own queue.
    fn push_frame(&self, frame: Arc<Frame>);
    /// Records `view` (turning a reservation into a subscription when
    /// `reserved`) and queues `first`; false, changing nothing, when the
    /// subscriber has closed.
    fn attach(&self, view: Arc<V>, reserved: bool, first: Attached) -> bool;
    /// Moves subscription `id` onto `view` and queues `first`, the frame
    /// that takes the client there; false when the subscriber has closed.
    fn move_subscription(&self, id: &Arc<str>, view: Arc<V>, first: Arc<Frame>) -> bool;
    /// Whether the subscriber is owed a snapshot of `view`.
    fn owes_snapshot(&self, view: &V) -> bool;
    /// Takes `view` off the subscriber's resync list; true when it was on it.
    fn take_resync(&self, view: &V) -> bool;
}
