// Package arcana is the Go client of the Arcana sync engine.
//
// A Client holds one bidirectional session (ArcanaService/Connect) and keeps
// it alive: when the connection drops it reconnects with backoff and syncs
// every live view from the last version it applied, so views catch up by
// replaying the missed diffs or, when the server no longer has them, by a
// fresh snapshot. Subscribe returns a View whose State is always the latest
// applied version and whose Updates channel reports each change.
package arcana

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Client is a connection to an Arcana server. It is safe for concurrent use.
type Client struct {
	rpc     pb.ArcanaServiceClient
	conn    *grpc.ClientConn
	ownConn bool
	o       options
	token   string
	log     *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// nextID is taken under a session's send lock, so request ids grow in
	// the order messages go out.
	nextID atomic.Uint64
	// batches counts the FrameBatch messages received, over all sessions.
	batches atomic.Uint64

	mu      sync.Mutex
	sess    *session
	fatal   error
	closed  bool
	changed chan struct{}
	views   map[string]*viewState
	// unsub maps a view id to the request id of the latest Unsubscribe
	// sent for it on the current session.
	unsub map[string]uint64

	// registry is the Describe answer windows read their graph's order from.
	regMu    sync.Mutex
	registry *pb.DescribeResponse
}

// session is one Connect stream.
type session struct {
	id          string
	userID      string
	workspaceID string
	stream      pb.ArcanaService_ConnectClient
	cancel      context.CancelFunc

	sendMu sync.Mutex

	// guarded by Client.mu
	pending map[uint64]*call
	lost    bool

	// parts holds snapshots arriving in parts; the reader goroutine's own.
	parts snapshotParts
	// syncing counts the Syncs in flight. Meanwhile frames of ids no view
	// has yet are kept in orphans (the reader goroutine's own): a view
	// synced onto its window may come back under another id, whose frames
	// precede the reply that names it.
	syncing atomic.Int32
	orphans []*pb.ViewFrame
}

// maxOrphans bounds the frames kept for ids a Sync has yet to name.
const maxOrphans = 10_000

// call is one request waiting for its reply.
type call struct {
	op string
	id uint64
	// onReply runs on the reader goroutine before the next message is read,
	// so it sees the session exactly as the server left it.
	onReply func(*pb.Reply) any
	// onAbandon runs instead when the caller gave up before the reply.
	onAbandon func(*pb.Reply)

	mu        sync.Mutex
	abandoned bool
	answered  bool
	reply     *pb.Reply
	result    any
	done      chan struct{}
}

// MutateResult is what a mutation returned.
type MutateResult struct {
	// Data is the first row the mutation's last statement returned, if any.
	Data map[string]*pb.Value
	// Changes are the changes fed into invalidation.
	Changes []*pb.Change
}

// Get returns a column of Data converted with FromValue, and whether the
// mutation returned it.
func (r *MutateResult) Get(name string) (any, bool) {
	v, ok := r.Data[name]
	if !ok {
		return nil, false
	}
	return FromValue(v), true
}

// Int returns an integer column of Data.
func (r *MutateResult) Int(name string) (int64, bool) {
	v, ok := r.Data[name].GetKind().(*pb.Value_Int)
	if !ok {
		return 0, false
	}
	return v.Int, true
}

// Dial creates a client for the server at target ("host:port") that
// authenticates with token (sent as `authorization: Bearer <token>`; an empty
// token sends no header). The session is opened in the background; calls wait
// for it.
func Dial(target, token string, opts ...Option) (*Client, error) {
	o := options{
		minBackoff: 100 * time.Millisecond,
		maxBackoff: 5 * time.Second,
		updateBuf:  64,
	}
	for _, f := range opts {
		f(&o)
	}
	if o.minBackoff <= 0 {
		o.minBackoff = 100 * time.Millisecond
	}
	if o.maxBackoff < o.minBackoff {
		o.maxBackoff = o.minBackoff
	}
	c := &Client{o: o, token: token, conn: o.conn}
	if c.conn == nil {
		creds := o.creds
		if creds == nil && o.tls != nil {
			var err error
			if creds, err = o.tls.credentials(); err != nil {
				return nil, fmt.Errorf("arcana: TLS: %w", err)
			}
		}
		if creds == nil {
			creds = insecure.NewCredentials()
		}
		dopts := []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  o.minBackoff,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   o.maxBackoff,
				},
				MinConnectTimeout: 5 * time.Second,
			}),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{
				Time:    30 * time.Second,
				Timeout: 10 * time.Second,
			}),
		}
		dopts = append(dopts, o.dialOpts...)
		conn, err := grpc.NewClient(target, dopts...)
		if err != nil {
			return nil, fmt.Errorf("arcana: dial %s: %w", target, err)
		}
		c.conn, c.ownConn = conn, true
	}
	c.log = o.logger
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c.rpc = pb.NewArcanaServiceClient(c.conn)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.done = make(chan struct{})
	c.changed = make(chan struct{})
	c.views = map[string]*viewState{}
	c.unsub = map[string]uint64{}
	go c.run()
	return c, nil
}

// Close ends the session, stops every View and closes the connection Dial
// made. It is safe to call more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	for _, vs := range c.views {
		for h := range vs.handles {
			h.stop(ErrClosed)
		}
	}
	c.views = map[string]*viewState{}
	c.broadcastLocked()
	c.mu.Unlock()
	c.cancel()
	<-c.done
	if c.ownConn {
		return c.conn.Close()
	}
	return nil
}

// Conn is the underlying gRPC connection, for calls this package does not wrap.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// RPC is the generated service client on the same connection. Add the
// authorization with c.CallContext.
func (c *Client) RPC() pb.ArcanaServiceClient { return c.rpc }

// CallContext returns ctx with the authorization metadata of this client.
func (c *Client) CallContext(ctx context.Context) (context.Context, error) {
	tok := c.token
	if c.o.tokenFunc != nil {
		t, err := c.o.tokenFunc(ctx)
		if err != nil {
			return nil, &Error{Code: codes.Unauthenticated, Message: "token: " + err.Error()}
		}
		tok = t
	}
	if tok == "" {
		return ctx, nil
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// SessionID is the id of the current session, or "" while disconnected.
func (c *Client) SessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.sess.id
}

// WaitConnected blocks until a session is open and returns its id.
func (c *Client) WaitConnected(ctx context.Context) (string, error) {
	s, err := c.waitSession(ctx)
	if err != nil {
		return "", err
	}
	return s.id, nil
}

// ResetSession drops the current session as if the connection had failed:
// the client opens a new one at once and syncs every view. Useful after a
// network change, and to exercise reconnection.
func (c *Client) ResetSession() {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		s.cancel()
	}
}

func (c *Client) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitSession returns the open session, waiting for one.
func (c *Client) waitSession(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return nil, ErrClosed
		case c.fatal != nil:
			err := c.fatal
			c.mu.Unlock()
			return nil, err
		case c.sess != nil:
			s := c.sess
			c.mu.Unlock()
			return s, nil
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fromStatus("connect", ctx.Err())
		}
	}
}

// isFatal tells the connect errors that retrying cannot fix.
func isFatal(err error) bool {
	switch Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented:
		return true
	}
	return false
}

// run keeps a session open until Close.
func (c *Client) run() {
	defer close(c.done)
	delay := c.o.minBackoff
	for {
		opened, err := c.runSession()
		if c.ctx.Err() != nil {
			return
		}
		if !opened && isFatal(err) {
			c.setFatal(fromStatus("connect", err))
			return
		}
		if opened {
			delay = c.o.minBackoff
		} else if err != nil {
			c.noteConnectError(fromStatus("connect", err))
		}
		wait := delay/2 + rand.N(delay/2+1)
		c.log.Info("arcana: session lost; reconnecting", "error", err, "in", wait)
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(wait):
		}
		delay = min(delay*2, c.o.maxBackoff)
	}
}

// noteConnectError records why a reconnect attempt failed on the views
// waiting for one (their status does not change).
func (c *Client) noteConnectError(err *Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, vs := range c.views {
		if vs.status == StatusStale || vs.status == StatusConnecting {
			vs.statusErr = err
		}
	}
}

func (c *Client) setFatal(err *Error) {
	c.log.Error("arcana: giving up on the session", "error", err)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fatal = err
	for _, vs := range c.views {
		if vs.setStatusLocked(StatusError, err) {
			vs.pushStatusLocked()
		}
		for h := range vs.handles {
			h.push(Update{Kind: UpdateError, State: vs.state.Load(), Err: err})
			h.stop(err)
		}
	}
	c.views = map[string]*viewState{}
	c.broadcastLocked()
}

// runSession opens one session, syncs the live views on it and reads it
// until it fails. opened reports whether the server accepted the session.
func (c *Client) runSession() (opened bool, err error) {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	ctx, err = c.CallContext(ctx)
	if err != nil {
		return false, err
	}
	stream, err := c.rpc.Connect(ctx)
	if err != nil {
		return false, err
	}
	first, err := stream.Recv()
	if err != nil {
		return false, err
	}
	op := first.GetOpened()
	if op == nil {
		return false, &Error{Code: codes.Internal, Message: "the server's first message was not `opened`", Op: "connect"}
	}
	s := &session{
		id:          op.GetSessionId(),
		userID:      op.GetUserId(),
		workspaceID: op.GetWorkspaceId(),
		stream:      stream,
		cancel:      cancel,
		pending:     map[uint64]*call{},
	}
	c.log.Info("arcana: session opened", "session", s.id, "user", s.userID, "workspace", s.workspaceID)

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return true, ErrClosed
	}
	views := make([]*viewState, 0, len(c.views))
	for _, vs := range c.views {
		vs.resyncing.Store(false) // a resync in flight died with the old session
		views = append(views, vs)
	}
	c.unsub = map[string]uint64{}
	c.mu.Unlock()

	// Sync first: nothing else can be sent on s before it is published.
	if len(views) > 0 {
		sort.Slice(views, func(i, j int) bool { return views[i].id() < views[j].id() })
		if err := c.sendSync(s, views); err != nil {
			return true, err
		}
	}

	c.mu.Lock()
	c.sess = s
	c.broadcastLocked()
	c.mu.Unlock()

	for {
		msg, rerr := stream.Recv()
		if rerr != nil {
			err = rerr
			break
		}
		c.dispatch(s, msg)
	}

	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
		c.broadcastLocked()
	}
	// The views keep their data but may miss changes until the next session.
	lostErr := fromStatus("connect", err)
	for _, vs := range c.views {
		switch vs.status {
		case StatusLive, StatusStale:
			if vs.setStatusLocked(StatusStale, lostErr) {
				vs.pushStatusLocked()
			}
		case StatusConnecting:
			vs.statusErr = lostErr
		}
	}
	s.lost = true
	pending := s.pending
	s.pending = nil
	c.mu.Unlock()
	for _, cl := range pending {
		cl.answer(nil)
	}
	return true, err
}

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

// send registers cl (when not nil) and writes msg on s. The request id is
// assigned under the send lock, so ids grow in the order messages go out.
func (c *Client) send(s *session, msg *pb.ClientMessage, cl *call) (uint64, error) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	id := c.nextID.Add(1)
	msg.RequestId = id
	if cl != nil {
		cl.id = id
		c.mu.Lock()
		if s.lost {
			c.mu.Unlock()
			return 0, errLost(cl.op)
		}
		s.pending[id] = cl
		c.mu.Unlock()
	}
	if err := s.stream.Send(msg); err != nil {
		// The reader sees the real error and ends the session.
		if cl != nil {
			c.mu.Lock()
			if s.pending != nil {
				delete(s.pending, id)
			}
			c.mu.Unlock()
		}
		return 0, errLost(opOf(cl))
	}
	return id, nil
}

func opOf(cl *call) string {
	if cl == nil {
		return ""
	}
	return cl.op
}

// answer completes the call with r (nil: the session was lost).
func (cl *call) answer(r *pb.Reply) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.answered {
		return
	}
	cl.answered = true
	cl.reply = r
	if r != nil {
		if cl.abandoned {
			if cl.onAbandon != nil {
				cl.onAbandon(r)
			}
		} else if cl.onReply != nil {
			cl.result = cl.onReply(r)
		}
	}
	close(cl.done)
}

// request sends msg on s and waits for its reply.
func (c *Client) request(ctx context.Context, s *session, msg *pb.ClientMessage, cl *call) (*pb.Reply, any, error) {
	cl.done = make(chan struct{})
	if _, err := c.send(s, msg, cl); err != nil {
		return nil, nil, err
	}
	if err := c.wait(ctx, cl); err != nil {
		return nil, nil, err
	}
	return cl.reply, cl.result, nil
}

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

// Subscribe subscribes to a graph view and returns once its first snapshot
// is applied. If the session drops before the reply, it retries on the next.
func (c *Client) Subscribe(ctx context.Context, graph string, params Params) (*View, error) {
	vals, err := toValues(params)
	if err != nil {
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: "subscribe " + graph}
	}
	return c.subscribe(ctx, graph, vals, nil)
}

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

// wait blocks until cl is answered, the session is lost or ctx ends.
func (c *Client) wait(ctx context.Context, cl *call) error {
	select {
	case <-cl.done:
	case <-ctx.Done():
		cl.mu.Lock()
		if !cl.answered {
			cl.abandoned = true
			cl.mu.Unlock()
			return fromStatus(cl.op, ctx.Err())
		}
		cl.mu.Unlock()
	}
	if cl.reply == nil {
		return errLost(cl.op)
	}
	return nil
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

// Mutate runs a named mutation on the session. It returns after the frames
// the mutation caused were applied to this client's views (read-your-writes).
// A mutation is never retried: if the session drops before the reply, the
// error has code Unavailable and the write may or may not have happened.
func (c *Client) Mutate(ctx context.Context, name string, params Params) (*MutateResult, error) {
	op := "mutate " + name
	vals, err := toValues(params)
	if err != nil {
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: op}
	}
	s, err := c.waitSession(ctx)
	if err != nil {
		return nil, err
	}
	cl := &call{op: op}
	reply, _, err := c.request(ctx, s, &pb.ClientMessage{
		Kind: &pb.ClientMessage_Mutate{Mutate: &pb.MutateRequest{Mutation: name, Params: vals}},
	}, cl)
	if err != nil {
		return nil, err
	}
	if e := reply.GetError(); e != nil {
		return nil, fromPB(op, e)
	}
	m := reply.GetMutate()
	return &MutateResult{Data: m.GetData(), Changes: m.GetChanges()}, nil
}

// Ping round-trips the session and returns the server's clock.
func (c *Client) Ping(ctx context.Context) (time.Time, error) {
	s, err := c.waitSession(ctx)
	if err != nil {
		return time.Time{}, err
	}
	reply, _, err := c.request(ctx, s, &pb.ClientMessage{Kind: &pb.ClientMessage_Ping{Ping: &pb.PingRequest{}}}, &call{op: "ping"})
	if err != nil {
		return time.Time{}, err
	}
	if e := reply.GetError(); e != nil {
		return time.Time{}, fromPB("ping", e)
	}
	return time.UnixMilli(reply.GetPing().GetServerTimeUnixMs()), nil
}

// Change is a data change reported with Notify.
type Change struct {
	Table string
	// ID is the row id (the key column's text); empty means any row.
	ID string
	// Columns that changed; empty means any.
	Columns []string
}

// Notify tells the engine that rows changed after a direct database write.
// The token needs the `arcana:notify` permission.
func (c *Client) Notify(ctx context.Context, changes ...Change) error {
	ctx, err := c.CallContext(ctx)
	if err != nil {
		return err
	}
	req := &pb.NotifyRequest{}
	for _, ch := range changes {
		req.Changes = append(req.Changes, &pb.Change{Table: ch.Table, Id: ch.ID, Columns: ch.Columns})
	}
	if _, err := c.rpc.Notify(ctx, req); err != nil {
		return fromStatus("notify", err)
	}
	return nil
}

// Describe returns the server's registry: graphs, mutations and tables.
func (c *Client) Describe(ctx context.Context) (*pb.DescribeResponse, error) {
	ctx, err := c.CallContext(ctx)
	if err != nil {
		return nil, err
	}
	r, err := c.rpc.Describe(ctx, &pb.DescribeRequest{})
	if err != nil {
		return nil, fromStatus("describe", err)
	}
	return r, nil
}

// Stats returns the engine counters. The token needs `arcana:admin`.
func (c *Client) Stats(ctx context.Context) (*pb.StatsResponse, error) {
	ctx, err := c.CallContext(ctx)
	if err != nil {
		return nil, err
	}
	r, err := c.rpc.Stats(ctx, &pb.StatsRequest{})
	if err != nil {
		return nil, fromStatus("stats", err)
	}
	return r, nil
}
