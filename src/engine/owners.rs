//! Views shared by the nodes of a cluster: one node (the owner) evaluates a
//! view and publishes its frames; the others keep a follower copy built from
//! the owner's snapshot and kept current by applying its frames, so every
//! node shows the same epochs and versions. A standalone server sets no
//! [`Owners`], and views evaluate as always.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::error::EngineError;
use super::frame::Frame;
use super::registry::Change;

/// Who evaluates a view, decided before its first evaluation.
pub enum Claim {
    /// This node: evaluate, and publish every frame.
    Own,
    /// This node, going on from the state the cluster kept of the view
    /// (the last owner's checkpoint and the frames after it): same epoch,
    /// the next version in a new term. The first evaluation is then a diff.
    Resume {
        /// The kept state.
        snapshot: Arc<Frame>,
        /// The diffs up to it, oldest first, for catch-up.
        history: Vec<Arc<Frame>>,
        /// The diffs after it, to apply before evaluating.
        after: Vec<Arc<Frame>>,
        /// The term claimed for this node's versions of the view.
        term: u64,
    },
    /// Another node: start from its snapshot, with the diffs before it for
    /// catch-up.
    Follow {
        /// The owner's current state.
        snapshot: Arc<Frame>,
        /// The owner's kept diffs, oldest first.
        history: Vec<Arc<Frame>>,
    },
}

/// What applying an owner's frame to a follower did.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// Applied and handed to the subscribers.
    Applied,
    /// Already applied (a version the follower has).
    Stale,
    /// It does not follow the follower's version or epoch: the follower
    /// must load a fresh snapshot.
    Gap,
    /// The view closed or is no longer a follower.
    Closed,
}

/// Hands changes a node received directly (a `Notify` call, which no change
/// source sees) to every node of its cluster.
pub trait Broadcast: Send + Sync {
    /// Sends `changes` to every node; returns once they are on their way
    /// for good (stored by the bus).
    fn broadcast(&self, changes: Vec<Change>) -> BoxFuture<'static, Result<(), String>>;
}

/// The cluster's side of view ownership.
pub trait Owners<V>: Send + Sync {
    /// Decides who evaluates `view`; following includes fetching the
    /// owner's snapshot and keeping the copy current from then on.
    fn claim(&self, view: Arc<V>) -> BoxFuture<'static, Result<Claim, EngineError>>;
    /// A frame an owned view made. Called with the view's state locked, in
    /// version order: must only queue it.
    fn published(&self, view: &V, frame: &Arc<Frame>);
    /// The view closed on this node (its last local subscriber left).
    fn closed(&self, view: &Arc<V>);
    /// An owned view is closing: its last state and kept diffs, for the
    /// cluster to keep. Called with the view's state locked: must only
    /// queue them. Comes before [`Owners::closed`].
    fn retired(&self, view: &V, snapshot: Arc<Frame>, history: Vec<Arc<Frame>>);
    /// A mutation on this node made `changes` (already applied to the views
    /// this node owns): returns once the owners of `followed` have applied
    /// them too and their frames reached these copies, so the mutation's
    /// reply still follows its frames.
    fn written(&self, changes: Vec<Change>, followed: Vec<Arc<V>>) -> BoxFuture<'static, ()>;
}
