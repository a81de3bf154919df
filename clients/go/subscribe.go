package arcana

import (
	"context"

	"google.golang.org/grpc/codes"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// subscribe subscribes to a view of graph (a window of it when window is
// set) and returns a new handle once its first snapshot is applied.
func (c *Client) subscribe(ctx context.Context, graph string, vals map[string]*pb.Value, window *pb.Window) (*View, error) {
	op := "subscribe " + graph
	relocated := false
	for {
		s, err := c.waitSession(ctx)
		if err != nil {
			return nil, err
		}
		cl := &call{op: op}
		cl.onReply = func(r *pb.Reply) any {
			sr := r.GetSubscribe()
			if sr == nil {
				return nil
			}
			return c.attach(cl.id, graph, vals, window, sr)
		}
		cl.onAbandon = func(r *pb.Reply) {
			if sr := r.GetSubscribe(); sr != nil {
				c.mu.Lock()
				_, used := c.views[sr.GetViewId()]
				c.mu.Unlock()
				if !used {
					c.sendUnsubscribe(s, sr.GetViewId())
				}
			}
		}
		msg := &pb.ClientMessage{Kind: &pb.ClientMessage_Subscribe{Subscribe: &pb.SubscribeRequest{Graph: graph, Params: vals, Window: onWire(window)}}}
		_, _, err = c.request(ctx, s, msg, cl)
		if err != nil {
			if Code(err) == codes.Unavailable && ctx.Err() == nil {
				continue // the session dropped: subscribe on the next one
			}
			return nil, err
		}
		if e := cl.reply.GetError(); e != nil {
			// The session keeps a window's id for the subscription that was
			// re-anchored away from it: give that one an id of its own, retry.
			if codes.Code(e.GetCode()) == codes.AlreadyExists && window != nil && !relocated {
				if mover := c.movedFrom(graph, vals, window); mover != nil {
					relocated = true
					if err := c.relocate(ctx, s, mover); err == nil {
						continue
					}
				}
			}
			return nil, fromPB(op, e)
		}
		v, _ := cl.result.(*View)
		if v == nil {
			continue // superseded by an Unsubscribe sent after it: try again
		}
		select {
		case <-v.vs().ready:
			// ready closes while the first frames are published under c.mu:
			// wait for that to end, so their updates are all queued on v.
			c.mu.Lock()
			c.mu.Unlock()
			return v, nil
		case <-v.done:
			if err := v.Err(); err != nil {
				return nil, err
			}
			return nil, ErrClosed
		case <-ctx.Done():
			v.Close()
			return nil, fromStatus(op, ctx.Err())
		}
	}
}

// attach records a subscribe reply: the shared view state (created on the
// first subscription) and a new handle. Runs on the reader goroutine.
func (c *Client) attach(reqID uint64, graph string, vals map[string]*pb.Value, window *pb.Window, sr *pb.SubscribeResponse) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.fatal != nil {
		return nil
	}
	if u, ok := c.unsub[sr.GetViewId()]; ok && u > reqID {
		// An Unsubscribe of this view went out after this Subscribe, so the
		// server no longer holds it for us.
		return nil
	}
	vs := c.views[sr.GetViewId()]
	if vs == nil {
		vs = newViewState(sr.GetViewId(), graph, vals, sr.GetEpoch())
		vs.window, vs.origin = window, window
		c.views[vs.id()] = vs
	}
	h := &View{c: c, updates: make(chan Update, c.o.updateBuf), done: make(chan struct{})}
	h.cur.Store(vs)
	vs.handles[h] = struct{}{}
	return h
}

// closeView removes a handle and unsubscribes when it was the last one.
func (c *Client) closeView(v *View, err error) {
	c.mu.Lock()
	if v.closed {
		c.mu.Unlock()
		return
	}
	v.stop(err)
	vs := v.vs()
	delete(vs.handles, v)
	last := len(vs.handles) == 0 && c.views[vs.id()] == vs
	if last {
		delete(c.views, vs.id())
	}
	s := c.sess
	c.mu.Unlock()
	if last && s != nil {
		c.sendUnsubscribe(s, vs.id())
	}
}

// sendUnsubscribe tells the server to drop a view; the reply is not awaited.
func (c *Client) sendUnsubscribe(s *session, viewID string) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	id := c.nextID.Add(1)
	c.mu.Lock()
	if s.lost {
		c.mu.Unlock()
		return
	}
	c.unsub[viewID] = id
	c.mu.Unlock()
	_ = s.stream.Send(&pb.ClientMessage{
		RequestId: id,
		Kind:      &pb.ClientMessage_Unsubscribe{Unsubscribe: &pb.UnsubscribeRequest{ViewId: viewID}},
	})
}
