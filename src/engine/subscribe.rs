//! Admission and attaching: a subscribe, a sync and a re-anchor resolve
//! their graph and params, find or make the shared view, wait for its first
//! result, and attach the session under the view's lock.

use super::*;

/// A subscribe or sync in progress. Dropped before it completes (an error,
/// or the future dropped because the client cancelled or its session
/// closed), it gives back the session's reserved slot and closes the view it
/// was attaching to if no one else holds it, so no view lives on, and is
/// evaluated, without a subscriber.
struct Attaching<'a> {
    engine: &'a Engine,
    session: &'a Arc<Session>,
    reserved: bool,
    view: Option<Arc<View>>,
}

impl Attaching<'_> {
    /// Now attaching to `view`; lets go of the previous one.
    fn hold(&mut self, view: Arc<View>) {
        if let Some(old) = self.view.replace(view) {
            self.engine.close_if_unused(&old);
        }
    }
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        if self.reserved {
            self.session.release_reservation();
        }
        if let Some(v) = self.view.take() {
            self.engine.close_if_unused(&v);
        }
    }
}

impl Engine {
    /// The checks every graph or mutation call passes: it exists, the caller
    /// holds its permissions, and the params validate against its schema.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit<'a, T>(
        &self,
        identity: &Identity,
        kind: &str,
        name: &str,
        found: Option<&'a Arc<T>>,
        known: impl Iterator<Item = &'a str>,
        rules: impl Fn(&T) -> (&Vec<String>, &ParamSchema),
        raw: HashMap<String, Value>,
    ) -> Result<(Arc<T>, Params), EngineError> {
        let def = found.ok_or_else(|| {
            let known: Vec<&str> = known.collect();
            EngineError::NotFound(format!(
                "unknown {kind} `{name}`; known {kind}s: {}",
                known.join(", ")
            ))
        })?;
        let (permissions, schema) = rules(def);
        if let Some(p) = identity.missing(permissions) {
            return Err(EngineError::PermissionDenied(format!(
                "{kind} `{name}` needs the `{p}` permission"
            )));
        }
        let params = params::validate(
            &format!("{kind} `{name}`"),
            schema,
            raw,
            self.inner.config.strict_params,
        )?;
        Ok((def.clone(), params))
    }

    /// Resolves graph, permission and params into a view key.
    fn resolve(
        &self,
        identity: &Identity,
        graph: &str,
        raw: HashMap<String, Value>,
        window: Option<Window>,
    ) -> Result<(Arc<GraphDef>, Params, ViewKey), EngineError> {
        let found = self.inner.registry.graph(graph);
        let known = self.inner.registry.graphs().map(|g| g.name.as_str());
        let (g, params) = self.admit(
            identity,
            "graph",
            graph,
            found,
            known,
            |g| (&g.permissions, &g.params),
            raw,
        )?;
        let params = match (&g.window, window) {
            (Some(order), w) => {
                let w = w.unwrap_or_else(|| Window::first(order.default_limit));
                params.with_window(w.check(&g.name, order, &g.fields)?)
            }
            (None, Some(_)) => {
                return Err(EngineError::InvalidArgument(format!(
                "graph `{}` declares no window order, so it takes no window; subscribe without one",
                g.name
            )))
            }
            (None, None) => params,
        };
        let key = ViewKey {
            graph: g.name.as_str().into(),
            params: params.canonical(),
            scope: Scope {
                workspace_id: identity.workspace_id.clone(),
                user_id: g.per_user.then(|| identity.user_id.clone()),
                role: None,
            },
        };
        Ok((g, params, key))
    }

    fn view_for(&self, graph: Arc<GraphDef>, params: Params, key: ViewKey) -> Arc<View> {
        let mut views = self.views();
        if let Some(v) = views.get(&key) {
            if !v.is_closed() {
                return v.clone();
            }
        }
        let v = View::new(key, graph, params);
        views.insert(v.clone());
        v
    }

    /// Subscribes `session` to `graph` with `params`. The snapshot is queued on
    /// the session; `reply` (given the snapshot version) may return an encoded
    /// message to queue just before it.
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        graph: &str,
        params: HashMap<String, Value>,
        window: Option<Window>,
        reply: impl Fn(&Subscribed) -> Option<Bytes>,
    ) -> Result<Subscribed, EngineError> {
        let (g, params, key) = self.resolve(&session.identity, graph, params, window)?;
        let view_id = format!("{}/{}", g.name, params.hash());
        let limit = self.inner.config.max_subscriptions_per_session;
        let reserved = session
            .reserve(&view_id, limit)
            .map_err(|e| reserve_error(e, &view_id))?
            .is_none();
        let outcome = self.attach_loop(
            session,
            g,
            params,
            key,
            reserved,
            |view, session, reserved| {
                let mut out = None;
                let version = view.attach(session, reserved, |version| {
                    let s = Subscribed {
                        view_id: session.subscription_id(&view.id),
                        epoch: view.epoch(),
                        version,
                        params_hash: view.params_hash.clone(),
                    };
                    let bytes = reply(&s);
                    out = Some(s);
                    bytes
                })?;
                debug_assert!(version > 0);
                out
            },
        );
        outcome.await
    }

    /// Gets a ready view and attaches to it, retrying if it closed between the
    /// lookup and the attach (its last subscriber left meanwhile). Whatever
    /// ends it early, an error or the caller dropping the future (a client
    /// that cancels), leaves nothing behind: see [`Attaching`].
    async fn attach_loop<T>(
        &self,
        session: &Arc<Session>,
        g: Arc<GraphDef>,
        params: Params,
        key: ViewKey,
        reserved: bool,
        mut attach: impl FnMut(&Arc<View>, &Arc<Session>, bool) -> Option<T>,
    ) -> Result<T, EngineError> {
        let mut attaching = Attaching {
            engine: self,
            session,
            reserved,
            view: None,
        };
        loop {
            if session.is_closed() {
                return Err(EngineError::NotFound("the session is closed".into()));
            }
            let view = self.view_for(g.clone(), params.clone(), key.clone());
            attaching.hold(view.clone());
            self.ready(&view).await?;
            if let Some(t) = attach(&view, session, reserved) {
                attaching.view = None;
                attaching.reserved = false;
                self.inner.stats.feed.touch();
                return Ok(t);
            }
        }
    }

    /// Runs a view's first evaluation unless it has had one.
    async fn ready(&self, view: &Arc<View>) -> Result<(), EngineError> {
        let _evaluating = self.inner.in_flight.enter(view);
        // A first evaluation takes an evaluation slot like any other.
        let _slot = match view.refreshable() {
            true => None,
            false => self.inner.evaluations.acquire().await.ok(),
        };
        view.ensure_ready(
            &self.inner.store,
            &self.inner.stats,
            self.inner.config.history_len,
            self.inner.owners.get(),
        )
        .await
    }

    /// Moves the windowed subscription `id` of `session` to `window`: the
    /// session leaves its view for the view of the new window (shared with
    /// any other subscriber of it) and gets one diff from the rows it held
    /// to the new window's, under the same id. Costs one evaluation of the
    /// new window at most, whatever the list's size.
    pub async fn reanchor(
        &self,
        session: &Arc<Session>,
        id: &str,
        window: Window,
    ) -> Result<Reanchored, EngineError> {
        let old = session.subscription(id).ok_or_else(|| {
            EngineError::NotFound(format!("this session is not subscribed to view `{id}`"))
        })?;
        let id: Arc<str> = session.subscription_id(&old.id);
        let g = old.graph.clone();
        let order = g.window.as_ref().ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "view `{id}` is of graph `{}`, which declares no window order; only windowed views re-anchor",
                g.name
            ))
        })?;
        let params = old
            .params
            .with_window(window.check(&g.name, order, &g.fields)?);
        let key = ViewKey {
            graph: old.key.graph.clone(),
            params: params.canonical(),
            scope: old.key.scope.clone(),
        };
        if key == old.key {
            let version = old.version();
            return Ok(Reanchored {
                view_id: id,
                epoch: old.epoch(),
                version,
                prev_epoch: old.epoch(),
                prev_version: version,
            });
        }
        let target = format!("{}/{}", g.name, params.hash());
        if session.holds_view(&target) {
            return Err(EngineError::AlreadyExists(format!(
                "this session already holds that window as view `{}`; use that subscription",
                session.subscription_id(&target.as_str().into())
            )));
        }
        let mut attaching = Attaching {
            engine: self,
            session,
            reserved: false,
            view: None,
        };
        let mut held = None;
        loop {
            if session.is_closed() {
                return Err(EngineError::NotFound("the session is closed".into()));
            }
            let view = self.view_for(g.clone(), params.clone(), key.clone());
            attaching.hold(view.clone());
            if let Err(e) = self.ready(&view).await {
                if held.is_some() {
                    // The old view is gone: the subscription cannot stay.
                    session.remove_subscription(&id);
                }
                return Err(e);
            }
            // Leave the old view only once the new one is ready, so a failed
            // evaluation leaves the subscription where it was.
            let state = match &held {
                Some(h) => h,
                None => {
                    let (h, closed) = old.leave(&**session, &self.inner.store);
                    if closed {
                        self.forget(&old);
                    }
                    held.insert(h)
                }
            };
            if let Some(out) = view.take_over(session, &id, state) {
                attaching.view = None;
                self.inner.stats.feed.touch();
                return Ok(out);
            }
        }
    }

    /// Unsubscribes `session` from a view.
    pub fn unsubscribe(&self, session: &Arc<Session>, view_id: &str) -> Result<(), EngineError> {
        let view = session.remove_subscription(view_id).ok_or_else(|| {
            EngineError::NotFound(format!(
                "this session is not subscribed to view `{view_id}`"
            ))
        })?;
        self.release(&view, &session.id);
        self.inner.stats.feed.touch();
        Ok(())
    }

    /// Resubscribes a new session to views a client held before, queuing for
    /// each the diffs it missed or a snapshot. Views are independent: one
    /// failing does not affect the others.
    pub async fn sync(&self, session: &Arc<Session>, views: Vec<SyncView>) -> Vec<SyncOutcome> {
        let mut out = Vec::with_capacity(views.len());
        for sv in views {
            let resolved = self.resolve(&session.identity, &sv.graph, sv.params, sv.window);
            let (g, params, key) = match resolved {
                Ok(r) => r,
                Err(e) => {
                    out.push(SyncOutcome {
                        view_id: "".into(),
                        result: Err(e),
                    });
                    continue;
                }
            };
            let view_id: Arc<str> = format!("{}/{}", g.name, params.hash()).into();
            let limit = self.inner.config.max_subscriptions_per_session;
            let reserved = match session.reserve(&view_id, limit) {
                Ok(existing) => existing.is_none(),
                Err(e) => {
                    out.push(SyncOutcome {
                        result: Err(reserve_error(e, &view_id)),
                        view_id,
                    });
                    continue;
                }
            };
            let res = self
                .attach_loop(
                    session,
                    g,
                    params,
                    key,
                    reserved,
                    |view, session, reserved| {
                        view.attach_sync(session, reserved, sv.epoch, sv.version)
                            .map(|(m, v)| (m, view.epoch(), v))
                    },
                )
                .await;
            out.push(SyncOutcome {
                view_id: session.subscription_id(&view_id),
                result: res,
            });
        }
        out
    }
}

/// The error for a subscription slot that could not be reserved.
fn reserve_error(e: session::Reserve, view_id: &str) -> EngineError {
    match e {
        session::Reserve::Full(limit) => EngineError::ResourceExhausted(format!(
            "this session already holds {limit} subscriptions, the limit; unsubscribe from a view first"
        )),
        session::Reserve::Taken => EngineError::AlreadyExists(format!(
            "view id `{view_id}` names a window of this session that was re-anchored elsewhere; unsubscribe it or re-anchor it back first"
        )),
    }
}
