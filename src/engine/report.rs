//! The engine's stats: counters, and a summary of each view and session,
//! for the whole engine or one workspace.

use super::*;

impl Engine {
    /// Counters and a per-view breakdown.
    pub fn stats(&self) -> EngineStats {
        self.stats_of(None)
    }

    /// What one workspace may see of [`Engine::stats`]: its sessions, views,
    /// subscriptions, rows and evaluations. The engine-wide counters
    /// (rounds, patches, changes, batches, frames, resyncs, errors) cannot
    /// be split by workspace and are 0 here.
    pub fn workspace_stats(&self, workspace: &str) -> EngineStats {
        self.stats_of(Some(workspace))
    }

    fn stats_of(&self, workspace: Option<&str>) -> EngineStats {
        let mine = |ws: &str| workspace.is_none_or(|w| w == ws);
        let views: Vec<Arc<View>> = self
            .views()
            .all()
            .filter(|v| mine(&v.key.scope.workspace_id))
            .cloned()
            .collect();
        let mut session_info: Vec<SessionInfo> = self
            .sessions()
            .values()
            .filter(|s| mine(&s.identity.workspace_id))
            .map(|s| SessionInfo {
                id: s.id.clone(),
                identity: s.identity.clone(),
                queued: s.queued(),
                resyncs: s.overflows(),
                subscriptions: s.subscriptions(),
            })
            .collect();
        session_info.sort_by(|a, b| a.id.cmp(&b.id));
        let sessions = session_info.len();
        let subscriptions = session_info.iter().map(|s| s.subscriptions).sum();
        let queued: Vec<usize> = session_info.iter().map(|s| s.queued).collect();
        let mut view_info: Vec<ViewInfo> = views.iter().map(|v| v.info()).collect();
        view_info.sort_by(|a, b| (&a.graph, &a.params_hash).cmp(&(&b.graph, &b.params_hash)));
        let store_rows = {
            let store = self.inner.store.lock().unwrap_or_else(|e| e.into_inner());
            match workspace {
                None => store.len(),
                Some(w) => store.len_in(w),
            }
        };
        let st = &self.inner.stats;
        let global = |n: u64| if workspace.is_none() { n } else { 0 };
        EngineStats {
            sessions,
            views: views.len(),
            subscriptions,
            store_rows,
            evaluations: match workspace {
                None => st.evaluations.get(),
                Some(_) => view_info.iter().map(|v| v.evaluations).sum(),
            },
            evaluation_rounds: global(st.evaluation_rounds.get()),
            patches: global(st.patches.get()),
            eval_errors: global(st.eval_errors.get()),
            changes: global(st.changes.get()),
            batches: global(st.batches.get()),
            frames: global(st.frames.get()),
            resyncs: global(st.resyncs.get()),
            session_queue_max: queued.iter().copied().max().unwrap_or(0),
            session_queue_total: queued.iter().sum(),
            view_info,
            session_info,
        }
    }
}
