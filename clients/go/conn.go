package arcana

import (
	"context"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

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
