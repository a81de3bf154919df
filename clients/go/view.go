package arcana

import (
	"context"
	"sync"
	"sync/atomic"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// UpdateKind says what an Update reports.
type UpdateKind int

const (
	// UpdateSnapshot: a snapshot replaced the view's state (first load,
	// resubscription, or a resync after a gap).
	UpdateSnapshot UpdateKind = iota + 1
	// UpdateDiff: a diff was applied.
	UpdateDiff
	// UpdateError: the server could not refresh the view, or the view was
	// dropped. State is the last good state; Err says why.
	UpdateError
	// UpdateSynced: the view was synced on a new session (after a reconnect)
	// or after a gap; Mode says how, and State is the state once the frames
	// that came with it were applied.
	UpdateSynced
	// UpdateStatus: the view's status changed; Status is the new one and
	// Err the error that goes with it (see View.Status).
	UpdateStatus
)

// Status is where a view stands.
type Status int

const (
	// StatusConnecting: waiting for the session and the first snapshot.
	StatusConnecting Status = iota + 1
	// StatusLive: up to date with the server.
	StatusLive
	// StatusStale: the connection is down (or the view is being synced on a
	// new session); State is the last data the view had, and the error is
	// why the connection was lost.
	StatusStale
	// StatusError: the view itself failed: the server sent an error frame
	// (State is the last good state; a later frame makes it live again), or
	// it refused the view on a resync, or the client gave up on the session
	// (the view has stopped).
	StatusError
)

func (s Status) String() string {
	switch s {
	case StatusConnecting:
		return "connecting"
	case StatusLive:
		return "live"
	case StatusStale:
		return "stale"
	case StatusError:
		return "error"
	}
	return "unknown"
}

func (k UpdateKind) String() string {
	switch k {
	case UpdateSnapshot:
		return "snapshot"
	case UpdateDiff:
		return "diff"
	case UpdateError:
		return "error"
	case UpdateSynced:
		return "synced"
	case UpdateStatus:
		return "status"
	}
	return "unknown"
}

// SyncMode is how a sync brought a view up to date.
type SyncMode int

const (
	// SyncCatchUp: the missed diffs were replayed.
	SyncCatchUp SyncMode = SyncMode(pb.SyncMode_SYNC_MODE_CATCH_UP)
	// SyncSnapshot: a fresh snapshot replaced the state.
	SyncSnapshot SyncMode = SyncMode(pb.SyncMode_SYNC_MODE_SNAPSHOT)
	// SyncCurrent: nothing was missed.
	SyncCurrent SyncMode = SyncMode(pb.SyncMode_SYNC_MODE_CURRENT)
)

func (m SyncMode) String() string {
	switch m {
	case SyncCatchUp:
		return "catch-up"
	case SyncSnapshot:
		return "snapshot"
	case SyncCurrent:
		return "current"
	}
	return "unspecified"
}

// Update is one change of a view, as delivered on View.Updates.
type Update struct {
	Kind UpdateKind
	// State is the view's state after the update (never nil once the view
	// has loaded).
	State *State
	// Mode is set for UpdateSynced.
	Mode SyncMode
	// Frames is the number of catch-up diffs, for UpdateSynced in catch-up mode.
	Frames uint32
	// Status is the view's status once the update was applied.
	Status Status
	// Err is set for UpdateError, and for UpdateStatus when the new status
	// has an error.
	Err *Error
}

// viewState is the client's copy of one server view, shared by every View
// handle subscribed to the same view id.
type viewState struct {
	// idv holds the server's view id (a string). It changes when a Sync or
	// a relocation gives the view another id; writers hold Client.mu.
	idv    atomic.Value
	graph  string
	params map[string]*pb.Value
	// epoch from the subscribe reply, used to sync before the first snapshot.
	replyEpoch uint64

	state     atomic.Pointer[State]
	ready     chan struct{}
	readyOnce sync.Once

	mu      sync.Mutex
	changed chan struct{}

	// resyncing is set while a Sync for this view alone is in flight.
	resyncing atomic.Bool

	// handles, status and statusErr are guarded by Client.mu.
	handles   map[*View]struct{}
	status    Status
	statusErr *Error

	// window is the window the view holds (nil for views of unordered
	// graphs) and moving a re-anchor on its way; guarded by Client.mu.
	window *pb.Window
	moving *moving
	// origin is the window the view had when the server gave it its id: a
	// view re-anchored in place keeps the id of the window it left.
	origin *pb.Window
}

func newViewState(id, graph string, params map[string]*pb.Value, epoch uint64) *viewState {
	vs := &viewState{
		graph:      graph,
		params:     params,
		replyEpoch: epoch,
		ready:      make(chan struct{}),
		changed:    make(chan struct{}),
		handles:    map[*View]struct{}{},
		status:     StatusConnecting,
	}
	vs.idv.Store(id)
	return vs
}

// id is the server's view id.
func (vs *viewState) id() string { return vs.idv.Load().(string) }

// setStatusLocked records the view's status and error, and reports whether
// the status changed. Called with Client.mu held; the caller then sends
// pushStatusLocked, after any update that led to the change.
func (vs *viewState) setStatusLocked(st Status, err *Error) bool {
	changed := vs.status != st
	vs.status, vs.statusErr = st, err
	return changed
}

// pushStatusLocked tells every handle the view's status. Called with
// Client.mu held.
func (vs *viewState) pushStatusLocked() {
	for h := range vs.handles {
		h.push(Update{Kind: UpdateStatus, State: vs.state.Load(), Err: vs.statusErr})
	}
}

// setState stores st and wakes WaitFor callers.
func (vs *viewState) setState(st *State) {
	vs.mu.Lock()
	vs.state.Store(st)
	close(vs.changed)
	vs.changed = make(chan struct{})
	vs.mu.Unlock()
	vs.readyOnce.Do(func() { close(vs.ready) })
}

func (vs *viewState) watch() (<-chan struct{}, *State) {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	return vs.changed, vs.state.Load()
}

// position is what a sync request reports for the view.
func (vs *viewState) position() (epoch, version uint64) {
	if st := vs.state.Load(); st != nil {
		return st.Epoch, st.Version
	}
	return vs.replyEpoch, 0
}

// View is a live subscription to one graph view. State is always the latest
// applied state; Updates delivers each change. A View stays live across
// reconnects until Close, or until the client is closed or the server refuses
// the view on a resync (then Err says why).
type View struct {
	c *Client
	// cur is the view state the handle shows; a window handle that moves
	// off a shared view switches to another one.
	cur     atomic.Pointer[viewState]
	updates chan Update
	done    chan struct{}
	// moveMu makes the moves of one window handle take turns.
	moveMu sync.Mutex
	// guarded by Client.mu
	closed bool
	err    error
}

// vs is the view state the handle shows now.
func (v *View) vs() *viewState { return v.cur.Load() }

// ID is the view id, "<graph>/<params_hash>".
func (v *View) ID() string { return v.vs().id() }

// Graph is the graph the view reads.
func (v *View) Graph() string { return v.vs().graph }

// State returns the latest state. It is immutable and safe to use from any
// goroutine; it is nil only before the first snapshot (Subscribe returns after it).
func (v *View) State() *State { return v.vs().state.Load() }

// Updates delivers every change of the view. If the reader falls behind by
// more than the buffer (WithUpdateBuffer), the oldest updates are dropped;
// the newest one, and State, are always current. The frames of a batch
// message are all applied before their updates (one per frame) are sent, so
// State may already be ahead of the update being read. The channel is closed
// when the view is closed.
func (v *View) Updates() <-chan Update { return v.updates }

// Done is closed when the view stops: after Close, Client.Close, or when
// the server refuses it on a resync.
func (v *View) Done() <-chan struct{} { return v.done }

// Status is where the view stands, with the error that goes with it: why
// the connection was lost (StatusStale, or StatusConnecting while it
// retries), or why the view failed (StatusError); nil when live. Each change
// also comes as an UpdateStatus on Updates.
func (v *View) Status() (Status, error) {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	if v.vs().statusErr == nil {
		return v.vs().status, nil
	}
	return v.vs().status, v.vs().statusErr
}

// Err is why the view stopped: nil while live and after Close, ErrClosed
// after Client.Close, or the server's *Error.
func (v *View) Err() error {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	return v.err
}

// WaitFor blocks until cond holds for the view's state and returns that
// state. It does not consume Updates.
func (v *View) WaitFor(ctx context.Context, cond func(*State) bool) (*State, error) {
	for {
		ch, st := v.vs().watch()
		if st != nil && cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		case <-v.done:
			if err := v.Err(); err != nil {
				return v.State(), err
			}
			return v.State(), ErrClosed
		}
	}
}

// Close ends the subscription. The server is told once no other View of
// this client uses the same view.
func (v *View) Close() error {
	v.c.closeView(v, nil)
	return nil
}

// push delivers u, dropping the oldest buffered update when full. Called
// with Client.mu held.
func (v *View) push(u Update) {
	if v.closed {
		return
	}
	if u.Status == 0 {
		u.Status = v.vs().status
	}
	for {
		select {
		case v.updates <- u:
			return
		default:
		}
		select {
		case <-v.updates:
		default:
		}
	}
}

// stop closes the handle; called with Client.mu held.
func (v *View) stop(err error) {
	if v.closed {
		return
	}
	v.err = err
	v.closed = true
	close(v.updates)
	close(v.done)
}
