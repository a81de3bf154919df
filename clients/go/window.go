package arcana

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Direction says on which side of its cursor a window's rows are.
type Direction int

const (
	// After: the first rows after the cursor (from the start without one).
	After Direction = iota
	// Before: the last rows before the cursor (up to the end without one),
	// in list order.
	Before
	// Around: the cursor's row and the rows after it fill limit - limit/2
	// places, the rows before it limit/2. Needs a cursor.
	Around
)

func (d Direction) pb() pb.WindowDirection {
	switch d {
	case Before:
		return pb.WindowDirection_WINDOW_DIRECTION_BEFORE
	case Around:
		return pb.WindowDirection_WINDOW_DIRECTION_AROUND
	}
	return pb.WindowDirection_WINDOW_DIRECTION_AFTER
}

// Window places a window over an ordered graph: up to Limit rows next to
// the row whose order-key values are Cursor.
type Window struct {
	// Limit is the most rows. The zero Window is the graph's default window
	// (its first default_limit rows); any other needs a Limit, except for
	// Reanchor, where 0 keeps the limit the window has.
	Limit uint32
	// Cursor holds the order-key values of the anchor row, in the graph's
	// order (GraphInfo.Window.Order; View.CursorAt reads them off a row),
	// converted with ToValue. Empty: the start (After) or end (Before).
	Cursor    []any
	Direction Direction
	// Inclusive puts the anchor row itself in an After or Before window.
	Inclusive bool
}

// isDefault reports whether w is the graph's default window: the one a
// subscription without a window gets, so it is sent as none.
func isDefault(w *pb.Window) bool {
	return w.GetLimit() == 0 && len(w.GetCursor()) == 0 && !w.GetInclusive() &&
		(w.GetDirection() == pb.WindowDirection_WINDOW_DIRECTION_AFTER ||
			w.GetDirection() == pb.WindowDirection_WINDOW_DIRECTION_UNSPECIFIED)
}

// onWire is the window as a request carries it: none for the default one.
func onWire(w *pb.Window) *pb.Window {
	if w == nil || isDefault(w) {
		return nil
	}
	return w
}

func (w Window) toPB() (*pb.Window, error) {
	out := &pb.Window{Limit: w.Limit, Direction: w.Direction.pb(), Inclusive: w.Inclusive}
	for i, v := range w.Cursor {
		pv, err := ToValue(v)
		if err != nil {
			return nil, fmt.Errorf("cursor value %d: %w", i, err)
		}
		out.Cursor = append(out.Cursor, pv)
	}
	return out, nil
}

// moving is a re-anchor on its way. Guarded by Client.mu.
type moving struct {
	window *pb.Window
	// replied is set once the server answered; the view holds window from
	// (epoch, version) on.
	replied        bool
	epoch, version uint64
	// bySnapshot: the view is being synced onto window; its next snapshot
	// holds it.
	bySnapshot bool
	// done is closed when the move ends, done or refused (then err is set).
	done chan struct{}
	err  error
}

// arrivedLocked takes the new window once the view reached the position
// the re-anchor's reply named. Called with Client.mu held.
func (vs *viewState) arrivedLocked(snapshot bool) {
	m := vs.moving
	if m == nil {
		return
	}
	st := vs.state.Load()
	reached := (m.bySnapshot && snapshot) ||
		(m.replied && st != nil && st.Epoch == m.epoch && st.Version >= m.version)
	if !reached {
		return
	}
	vs.window = m.window
	vs.moving = nil
	close(m.done)
}

// Window subscribes to a window over an ordered graph (one that declares an
// order, see Describe) and returns once its first snapshot is applied. The
// View's state holds the window's rows in order, with HasBefore/HasAfter;
// Reanchor, LoadMore and LoadPrevious move it.
func (c *Client) Window(ctx context.Context, graph string, params Params, w Window) (*View, error) {
	op := "window " + graph
	vals, err := toValues(params)
	if err != nil {
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: op}
	}
	pw, err := w.toPB()
	if err != nil {
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: op}
	}
	if pw.Limit == 0 && !isDefault(pw) {
		return nil, &Error{Code: codes.InvalidArgument, Op: op,
			Message: "give the window a Limit: without one it is the graph's default window, which takes no cursor or direction"}
	}
	return c.subscribe(ctx, graph, vals, pw)
}

// HasBefore reports whether the list has rows before the window's first.
func (v *View) HasBefore() bool {
	st := v.State()
	return st != nil && st.HasBefore
}

// HasAfter reports whether the list has rows after the window's last.
func (v *View) HasAfter() bool {
	st := v.State()
	return st != nil && st.HasAfter
}

// Window returns the window the view's rows are of (nil for a view of an
// unordered graph). Treat it as read-only.
func (v *View) Window() *pb.Window {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	return v.vs().window
}

// Reanchor moves the window to w and returns once State shows the new
// window's rows. A zero Limit keeps the current one. When other handles of
// this client share the view, they keep their window: this handle
// subscribes to the new window instead (as it does when the session holds
// that window already).
func (v *View) Reanchor(ctx context.Context, w Window) error {
	op := "reanchor " + v.Graph()
	pw, err := w.toPB()
	if err != nil {
		return &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: op}
	}
	v.moveMu.Lock()
	defer v.moveMu.Unlock()
	if pw.Limit == 0 {
		if cur := v.Window(); cur != nil {
			pw.Limit = cur.GetLimit()
		}
	}
	if pw.Limit == 0 {
		// Moving off the default window: it has the graph's default limit.
		info, err := v.c.windowOrder(ctx, v.Graph())
		if err != nil {
			return err
		}
		pw.Limit = info.GetWindow().GetDefaultLimit()
	}
	return v.moveTo(ctx, pw)
}

// LoadMore shows n more rows after the window's last: the same cursor with
// a bigger limit (a window of another direction becomes an After window
// from its first row). Past the graph's largest window it slides instead,
// dropping rows at the start.
func (v *View) LoadMore(ctx context.Context, n int) error {
	return v.grow(ctx, n, After)
}

// LoadPrevious shows n more rows before the window's first: the window ends
// at its last row and reaches n rows further back. Past the graph's largest
// window it slides instead, dropping rows at the end.
func (v *View) LoadPrevious(ctx context.Context, n int) error {
	return v.grow(ctx, n, Before)
}

// CursorAt returns the order-key values of the row at index in st (the
// view's state when st is nil): a cursor for Reanchor.
func (v *View) CursorAt(ctx context.Context, st *State, index int) ([]any, error) {
	info, err := v.c.windowOrder(ctx, v.Graph())
	if err != nil {
		return nil, err
	}
	if st == nil {
		st = v.State()
	}
	vals, err := keyAt(st, info.GetWindow().GetOrder(), index)
	if err != nil {
		return nil, &Error{Code: codes.OutOfRange, Message: err.Error(), Op: "cursor " + v.Graph()}
	}
	out := make([]any, len(vals))
	for i, x := range vals {
		out[i] = x
	}
	return out, nil
}

func (v *View) grow(ctx context.Context, n int, edge Direction) error {
	op := "load " + v.Graph()
	if n <= 0 {
		return &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf("load %d rows: give a number above 0", n), Op: op}
	}
	v.moveMu.Lock()
	defer v.moveMu.Unlock()
	w := v.Window()
	if w == nil {
		return errNotWindow(v.Graph())
	}
	st := v.State()
	dir := w.GetDirection()
	if dir == pb.WindowDirection_WINDOW_DIRECTION_UNSPECIFIED {
		dir = pb.WindowDirection_WINDOW_DIRECTION_AFTER
	}
	info, err := v.c.windowOrder(ctx, v.Graph())
	if err != nil && !(edge == After && dir == edge.pb()) {
		// Only growing an After window forward can do without the order.
		return err
	}
	order := info.GetWindow()
	rows := 0
	if st != nil {
		rows = len(st.Refs)
	}
	limit := w.GetLimit()
	if limit == 0 {
		limit = max(order.GetDefaultLimit(), uint32(rows))
	}
	limit += uint32(n)
	maxLimit := order.GetMaxLimit()
	next := &pb.Window{Limit: limit, Cursor: w.GetCursor(), Direction: dir, Inclusive: w.GetInclusive()}
	at := func(i int) ([]*pb.Value, error) {
		vals, err := keyAt(st, order.GetOrder(), i)
		if err != nil {
			return nil, &Error{Code: codes.FailedPrecondition, Message: err.Error(), Op: op}
		}
		return vals, nil
	}
	switch {
	case maxLimit == 0 || limit <= maxLimit:
		if dir == edge.pb() || rows == 0 {
			break
		}
		// Keep the row at the other edge and reach further this way.
		i := 0
		if edge == Before {
			i = rows - 1
		}
		if next.Cursor, err = at(i); err != nil {
			return err
		}
		next.Direction, next.Inclusive = edge.pb(), true
	case rows == 0:
		next.Limit = maxLimit
	default:
		// Too big: slide by what does not fit, keeping the largest window.
		drop := min(int(limit-maxLimit), rows)
		i := drop - 1
		if edge == Before {
			i = rows - drop
		}
		if next.Cursor, err = at(i); err != nil {
			return err
		}
		next.Limit, next.Direction, next.Inclusive = maxLimit, edge.pb(), false
	}
	return v.moveTo(ctx, next)
}

// keyAt reads the order-key values of the row at index, as the server sent them.
func keyAt(st *State, order []string, index int) ([]*pb.Value, error) {
	if st == nil || index < 0 || index >= len(st.Refs) {
		return nil, fmt.Errorf("no row at index %d of the window", index)
	}
	row := st.Row(st.Refs[index])
	if row == nil {
		return nil, fmt.Errorf("row %s/%s is not held", st.Refs[index].GetTable(), st.Refs[index].GetId())
	}
	out := make([]*pb.Value, len(order))
	for i, f := range order {
		val, ok := row.Fields[f]
		if !ok {
			return nil, fmt.Errorf("row %s lacks the order field %q", row.Key(), f)
		}
		out[i] = val
	}
	return out, nil
}

func errNotWindow(graph string) *Error {
	return &Error{Code: codes.FailedPrecondition, Op: "reanchor " + graph,
		Message: "this view is not a window: open it with Client.Window on a graph that declares an order"}
}

// windowOrder returns the registry entry of a windowed graph, from one
// Describe per client (asked again after a failure).
func (c *Client) windowOrder(ctx context.Context, graph string) (*pb.GraphInfo, error) {
	c.regMu.Lock()
	reg := c.registry
	c.regMu.Unlock()
	if reg == nil {
		r, err := c.Describe(ctx)
		if err != nil {
			return nil, err
		}
		c.regMu.Lock()
		c.registry, reg = r, r
		c.regMu.Unlock()
	}
	for _, g := range reg.GetGraphs() {
		if g.GetName() == graph {
			if len(g.GetWindow().GetOrder()) == 0 {
				break
			}
			return g, nil
		}
	}
	return nil, &Error{Code: codes.FailedPrecondition, Op: "window " + graph,
		Message: fmt.Sprintf("graph %q declares no window order, so its rows cannot serve as cursors", graph)}
}

// moveTo moves the handle's window to w: in place with Reanchor when no
// other handle shares the view, else by subscribing to w. Called with
// v.moveMu held.
func (v *View) moveTo(ctx context.Context, w *pb.Window) error {
	c := v.c
	vs := v.vs()
	c.mu.Lock()
	switch {
	case v.closed:
		c.mu.Unlock()
		return ErrClosed
	case vs.window == nil:
		c.mu.Unlock()
		return errNotWindow(vs.graph)
	case proto.Equal(vs.window, w) && vs.moving == nil:
		c.mu.Unlock()
		return nil
	}
	shared := len(vs.handles) > 1 || vs.moving != nil
	c.mu.Unlock()
	if !shared {
		err := c.reanchor(ctx, v, vs, w)
		if Code(err) != codes.AlreadyExists {
			return err
		}
	}
	return c.switchWindow(ctx, v, vs, w)
}

// reanchor moves vs to w with a Reanchor request and waits until the view
// holds w: the reply names the position the re-anchor diff brings the view
// to; the diff comes on the stream, before or after the reply.
func (c *Client) reanchor(ctx context.Context, v *View, vs *viewState, w *pb.Window) error {
	op := "reanchor " + vs.graph
	s, err := c.waitSession(ctx)
	if err != nil {
		return err
	}
	m := &moving{window: w, done: make(chan struct{})}
	c.mu.Lock()
	if vs.moving != nil {
		c.mu.Unlock()
		return &Error{Code: codes.Aborted, Message: "another move of this window is on its way", Op: op}
	}
	vs.moving = m
	c.mu.Unlock()
	answer := func(r *pb.Reply) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if vs.moving != m {
			return
		}
		if e := r.GetError(); e != nil {
			vs.moving = nil
			m.err = fromPB(op, e)
			close(m.done)
			return
		}
		rr := r.GetReanchor()
		m.replied, m.epoch, m.version = true, rr.GetEpoch(), rr.GetVersion()
		vs.arrivedLocked(false)
	}
	cl := &call{op: op, onAbandon: answer}
	cl.onReply = func(r *pb.Reply) any { answer(r); return nil }
	msg := &pb.ClientMessage{Kind: &pb.ClientMessage_Reanchor{Reanchor: &pb.ReanchorRequest{ViewId: vs.id(), Window: w}}}
	if _, _, err := c.request(ctx, s, msg, cl); err != nil && Code(err) != codes.Unavailable {
		return err // the caller gave up; the reply, when it comes, still moves the view
	}
	// Answered, or the session was lost: then the next session's Sync asks
	// for the new window (m.bySnapshot) and its snapshot ends the move.
	select {
	case <-m.done:
		return m.err
	case <-v.done:
		if err := v.Err(); err != nil {
			return err
		}
		return ErrClosed
	case <-ctx.Done():
		return fromStatus(op, ctx.Err())
	}
}

// switchWindow subscribes to w and moves the handle onto that view,
// leaving the view it showed to the handles that share it.
func (c *Client) switchWindow(ctx context.Context, v *View, old *viewState, w *pb.Window) error {
	h, err := c.subscribe(ctx, old.graph, old.params, w)
	if err != nil {
		return err
	}
	c.mu.Lock()
	next := h.vs()
	if v.closed || next == old {
		c.mu.Unlock()
		h.Close()
		if v.closed {
			return ErrClosed
		}
		return nil
	}
	// h was only a way to subscribe: v takes its place.
	delete(next.handles, h)
	h.stop(nil)
	next.handles[v] = struct{}{}
	delete(old.handles, v)
	v.cur.Store(next)
	last := len(old.handles) == 0 && c.views[old.id()] == old
	if last {
		delete(c.views, old.id())
	}
	s := c.sess
	v.push(Update{Kind: UpdateSnapshot, State: next.state.Load(), Status: next.status})
	c.mu.Unlock()
	if last && s != nil {
		c.sendUnsubscribe(s, old.id())
	}
	return nil
}

// movedFrom finds the view of this client that was re-anchored in place
// away from window: the session still knows it by that window's id.
func (c *Client) movedFrom(graph string, vals map[string]*pb.Value, window *pb.Window) *viewState {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, vs := range c.views {
		if vs.graph == graph && vs.moving == nil && vs.origin != nil && proto.Equal(vs.origin, window) &&
			!proto.Equal(vs.window, window) && sameValues(vs.params, vals) {
			return vs
		}
	}
	return nil
}

func sameValues(a, b map[string]*pb.Value) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !proto.Equal(v, w) {
			return false
		}
	}
	return true
}

// relocate gives a view re-anchored in place a subscription under its own
// window's id, which frees the id of the window it left. The view keeps
// its state meanwhile; the new subscription's snapshot brings it up to date.
func (c *Client) relocate(ctx context.Context, s *session, vs *viewState) error {
	c.mu.Lock()
	old, w := vs.id(), vs.window
	c.mu.Unlock()
	c.sendUnsubscribe(s, old)
	op := "relocate " + vs.graph
	rebind := func(r *pb.Reply) {
		sr := r.GetSubscribe()
		if sr == nil {
			return
		}
		id := sr.GetViewId()
		c.mu.Lock()
		if c.views[old] == vs {
			delete(c.views, old)
		}
		free := c.views[id] == nil
		closed := len(vs.handles) == 0
		if free && !closed {
			c.views[id] = vs
			vs.idv.Store(id)
			vs.origin = w
		}
		c.mu.Unlock()
		if free && closed {
			c.sendUnsubscribe(s, id) // closed meanwhile
		}
	}
	cl := &call{op: op, onAbandon: rebind}
	cl.onReply = func(r *pb.Reply) any { rebind(r); return nil }
	msg := &pb.ClientMessage{Kind: &pb.ClientMessage_Subscribe{Subscribe: &pb.SubscribeRequest{Graph: vs.graph, Params: vs.params, Window: onWire(w)}}}
	reply, _, err := c.request(ctx, s, msg, cl)
	if err != nil {
		return err
	}
	if e := reply.GetError(); e != nil {
		return fromPB(op, e)
	}
	return nil
}
