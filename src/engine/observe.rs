//! How the engine reports what it cannot keep as a counter: the durations
//! of evaluations and rounds. The engine owns this trait so that it needs
//! nothing from the layers that export metrics; the server installs its
//! metrics as the observer, and an engine without one reports nothing.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The target of the engine's and the server's traced spans (mutations,
/// evaluation rounds, change batches, calls). A trace exporter takes only
/// spans with this target, so log lines stay as they are.
pub const SPANS: &str = "arcana::spans";

/// Receives the engine's timings as they happen.
pub trait Observer: Send + Sync {
    /// One view's own evaluation (a subscribe or a sync) took `took`.
    fn evaluation(&self, took: Duration);
    /// One evaluation round of a graph (one query for any number of its
    /// views) took `took`.
    fn round(&self, took: Duration);
}

/// The engine's observer, set at most once.
#[derive(Default)]
pub struct Timings(OnceLock<Arc<dyn Observer>>);

impl Timings {
    /// Installs `observer`; false when one was installed before (the
    /// first one stays, so timings never split between two).
    pub fn install(&self, observer: Arc<dyn Observer>) -> bool {
        self.0.set(observer).is_ok()
    }

    pub(crate) fn evaluation(&self, took: Duration) {
        if let Some(o) = self.0.get() {
            o.evaluation(took);
        }
    }

    pub(crate) fn round(&self, took: Duration) {
        if let Some(o) = self.0.get() {
            o.round(took);
        }
    }
}

impl fmt::Debug for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timings")
            .field("installed", &self.0.get().is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(&'static str, Duration)>>);

    impl Observer for Seen {
        fn evaluation(&self, took: Duration) {
            self.0.lock().unwrap().push(("evaluation", took));
        }
        fn round(&self, took: Duration) {
            self.0.lock().unwrap().push(("round", took));
        }
    }

    #[test]
    fn reports_reach_the_first_installed_observer_only() {
        let t = Timings::default();
        // Nothing installed: reports are dropped, not queued.
        t.round(Duration::from_millis(9));
        let first = Arc::new(Seen::default());
        let second = Arc::new(Seen::default());
        assert!(t.install(first.clone()));
        assert!(!t.install(second.clone()));
        t.evaluation(Duration::from_millis(1));
        t.round(Duration::from_millis(2));
        assert_eq!(
            *first.0.lock().unwrap(),
            vec![
                ("evaluation", Duration::from_millis(1)),
                ("round", Duration::from_millis(2))
            ]
        );
        assert!(second.0.lock().unwrap().is_empty());
        assert_eq!(format!("{t:?}"), "Timings { installed: true }");
    }
}
