package arcana

import pb "github.com/arcana-sync/arcana/clients/go/arcanapb"

// maxOrphans bounds the frames kept for ids a Sync has yet to name.
const maxOrphans = 10_000

// sendSync asks the server to bring views up to date on s. The frames come
// first, then the reply, which the reader hands to onSyncReply.
func (c *Client) sendSync(s *session, views []*viewState) error {
	req := &pb.SyncRequest{}
	c.mu.Lock()
	for _, vs := range views {
		epoch, version := vs.position()
		window := vs.window
		if m := vs.moving; m != nil {
			// Mid re-anchor it is unknown which window the rows are of:
			// ask for the new one from scratch (no epoch: a snapshot).
			m.bySnapshot = true
			window, epoch, version = m.window, 0, 0
		}
		req.Views = append(req.Views, &pb.SyncView{
			Graph:   vs.graph,
			Params:  vs.params,
			Epoch:   epoch,
			Version: version,
			Window:  onWire(window),
		})
	}
	c.mu.Unlock()
	cl := &call{
		op:        "sync",
		onReply:   func(r *pb.Reply) any { c.onSyncReply(s, views, r); return nil },
		onAbandon: func(r *pb.Reply) { c.onSyncReply(s, views, r) },
		done:      make(chan struct{}),
	}
	s.syncing.Add(1)
	_, err := c.send(s, &pb.ClientMessage{Kind: &pb.ClientMessage_Sync{Sync: req}}, cl)
	if err != nil {
		s.syncing.Add(-1)
	}
	return err
}

// rebindSynced files views the sync reply names by another id under that
// id, then applies the frames that came for it before the reply. Runs on
// the reader goroutine.
func (c *Client) rebindSynced(s *session, views []*viewState, results []*pb.SyncResult) {
	defer func() {
		if s.syncing.Add(-1) <= 0 {
			s.orphans = nil
		}
	}()
	moved := map[string]bool{}
	c.mu.Lock()
	for i, vs := range views {
		if i >= len(results) {
			break
		}
		id := results[i].GetViewId()
		if id == "" || id == vs.id() || results[i].GetError() != nil || c.views[vs.id()] != vs {
			continue
		}
		if c.views[id] != nil {
			continue // another view of this client holds that id already
		}
		delete(c.views, vs.id())
		c.views[id] = vs
		vs.idv.Store(id)
		moved[id] = true
	}
	c.mu.Unlock()
	if len(moved) == 0 || len(s.orphans) == 0 {
		return
	}
	var replay, keep []*pb.ViewFrame
	for _, f := range s.orphans {
		if moved[f.GetViewId()] {
			replay = append(replay, f)
		} else {
			keep = append(keep, f)
		}
	}
	s.orphans = keep
	c.onFrames(s, replay)
}

func (c *Client) onSyncReply(s *session, views []*viewState, r *pb.Reply) {
	c.rebindSynced(s, views, r.GetSync().GetResults())
	c.mu.Lock()
	for _, vs := range views {
		if vs.window != nil {
			vs.origin = vs.window
		}
	}
	c.mu.Unlock()
	for _, vs := range views {
		vs.resyncing.Store(false)
	}
	if e := r.GetError(); e != nil {
		// The whole request failed: report it; the views keep their state
		// and the next gap or reconnect tries again.
		err := fromPB("sync", e)
		c.mu.Lock()
		for _, vs := range views {
			for h := range vs.handles {
				h.push(Update{Kind: UpdateError, State: vs.state.Load(), Err: err})
			}
		}
		c.mu.Unlock()
		return
	}
	results := r.GetSync().GetResults()
	var orphans []string
	c.mu.Lock()
	for i, vs := range views {
		if i >= len(results) {
			break
		}
		res := results[i]
		live := c.views[vs.id()] == vs
		if !live {
			// Closed while the sync was in flight: the server attached it again.
			if res.GetError() == nil {
				id := res.GetViewId()
				if id == "" {
					id = vs.id()
				}
				orphans = append(orphans, id)
			}
			continue
		}
		if e := res.GetError(); e != nil {
			err := fromPB("sync "+vs.graph, e)
			delete(c.views, vs.id())
			vs.setStatusLocked(StatusError, err)
			vs.pushStatusLocked()
			for h := range vs.handles {
				h.push(Update{Kind: UpdateError, State: vs.state.Load(), Err: err})
				h.stop(err)
			}
			continue
		}
		st := vs.state.Load()
		if st != nil && (st.Epoch != res.GetEpoch() || st.Version != res.GetVersion()) {
			c.log.Warn("arcana: view not at the synced version", "view", vs.id(),
				"have", st.Version, "want", res.GetVersion())
		}
		// The frames of the sync came before its reply: the view is current.
		nowLive := false
		if vs.status == StatusStale || vs.status == StatusConnecting {
			nowLive = vs.setStatusLocked(StatusLive, nil)
		}
		for h := range vs.handles {
			h.push(Update{Kind: UpdateSynced, State: st, Mode: SyncMode(res.GetMode()), Frames: res.GetFrames()})
		}
		if nowLive {
			vs.pushStatusLocked()
		}
	}
	c.mu.Unlock()
	for _, id := range orphans {
		c.sendUnsubscribe(s, id)
	}
}

// resync asks for what the view missed, once at a time per view.
func (c *Client) resync(s *session, vs *viewState, why string) {
	if !vs.resyncing.CompareAndSwap(false, true) {
		return
	}
	c.log.Warn("arcana: resyncing view", "view", vs.id(), "why", why)
	go func() {
		if err := c.sendSync(s, []*viewState{vs}); err != nil {
			c.log.Warn("arcana: resync not sent", "view", vs.id(), "error", err)
		}
	}()
}
