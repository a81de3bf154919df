package arcana

import (
	"fmt"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// dispatch handles one server message on the reader goroutine.
func (c *Client) dispatch(s *session, msg *pb.ServerMessage) {
	switch k := msg.GetKind().(type) {
	case *pb.ServerMessage_Reply:
		id := k.Reply.GetRequestId()
		c.mu.Lock()
		cl := s.pending[id]
		delete(s.pending, id)
		c.mu.Unlock()
		if cl != nil {
			cl.answer(k.Reply)
		}
	case *pb.ServerMessage_Frame:
		c.onFrames(s, []*pb.ViewFrame{k.Frame})
	case *pb.ServerMessage_Frames:
		c.batches.Add(1)
		c.onFrames(s, k.Frames.GetFrames())
	case *pb.ServerMessage_Opened:
		// Only the first message; nothing to do later.
	}
}

// applied is what the frames of one message did to one view: the state the
// next frame applies to, and what to publish once they are all applied.
type applied struct {
	vs      *viewState
	state   *State
	changed bool
	updates []Update
	// gap is why the view needs a resync, if it does.
	gap string
	// outcome is what the last snapshot, diff or error frame said:
	// StatusLive or StatusError (with frameErr); 0 when there was none.
	outcome  Status
	frameErr *Error
	// snapshot is set when a snapshot was applied.
	snapshot bool
}

// onFrames applies the frames of one message (a frame, or a batch) in order,
// each exactly as if it had come alone. A view's state is published once,
// after the last of them, so State and WaitFor never show a batch half
// applied; the view's updates, one per frame, follow. A view that hit a gap
// is resynced from there.
func (c *Client) onFrames(s *session, frames []*pb.ViewFrame) {
	var order []*applied
	byView := map[string]*applied{}
	for _, part := range frames {
		f := part
		if s != nil {
			if f = s.parts.push(part); f == nil {
				continue // a snapshot part: applied once the last is in
			}
		}
		a := byView[f.GetViewId()]
		if a == nil {
			c.mu.Lock()
			vs := c.views[f.GetViewId()]
			c.mu.Unlock()
			if vs == nil {
				if s != nil && s.syncing.Load() > 0 && len(s.orphans) < maxOrphans {
					s.orphans = append(s.orphans, f)
				}
				continue // unsubscribed meanwhile, or named by a Sync reply to come
			}
			a = &applied{vs: vs, state: vs.state.Load()}
			byView[vs.id()] = a
			order = append(order, a)
		}
		c.applyFrame(a, f)
	}
	for _, a := range order {
		c.publish(a)
		if a.gap != "" {
			c.resync(s, a.vs, a.gap)
		}
	}
}

// applyFrame applies one frame on top of what a holds.
func (c *Client) applyFrame(a *applied, f *pb.ViewFrame) {
	cur := a.state
	switch body := f.GetBody().(type) {
	case *pb.ViewFrame_Snapshot:
		a.set(Update{Kind: UpdateSnapshot, State: stateFromSnapshot(f, body.Snapshot)})
		a.snapshot = true
	case *pb.ViewFrame_Diff:
		if !cur.continues(f) {
			if cur != nil && cur.Epoch == f.GetEpoch() && f.GetVersion() <= cur.Version {
				return // already applied (a catch-up can repeat queued diffs)
			}
			a.needResync(fmt.Sprintf("gap: have %d, diff applies on %d", versionOf(cur), f.GetPrevVersion()))
			return
		}
		next, err := cur.applyDiff(f, body.Diff)
		if err != nil {
			a.needResync("diff does not apply: " + err.Error())
			return
		}
		a.set(Update{Kind: UpdateDiff, State: next})
	case *pb.ViewFrame_Error:
		err := fromPB("view "+a.vs.id(), &pb.Error{Code: body.Error.GetCode(), Message: body.Error.GetMessage()})
		a.updates = append(a.updates, Update{Kind: UpdateError, State: cur, Err: err})
		a.outcome, a.frameErr = StatusError, err
	}
}

func (a *applied) set(u Update) {
	a.state = u.State
	a.changed = true
	a.outcome, a.frameErr = StatusLive, nil
	a.updates = append(a.updates, u)
}

func (a *applied) needResync(why string) {
	if a.gap == "" {
		a.gap = why
	}
}

func versionOf(st *State) uint64 {
	if st == nil {
		return 0
	}
	return st.Version
}

// publish records the view's status, stores its new state, then delivers
// its updates. The status comes first so that whoever waits for the state
// (Subscribe) sees the status that goes with it.
func (c *Client) publish(a *applied) {
	if len(a.updates) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	switch {
	case a.outcome == StatusError:
		changed = a.vs.setStatusLocked(StatusError, a.frameErr)
	case a.outcome == StatusLive && a.vs.status != StatusStale:
		// A stale view turns live at its sync reply, once caught up.
		changed = a.vs.setStatusLocked(StatusLive, nil)
	}
	if a.changed {
		a.vs.setState(a.state)
		a.vs.arrivedLocked(a.snapshot)
	}
	for h := range a.vs.handles {
		for _, u := range a.updates {
			h.push(u)
		}
	}
	if changed {
		a.vs.pushStatusLocked()
	}
}
