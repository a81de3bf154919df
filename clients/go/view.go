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
)

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
	// Err is set for UpdateError.
	Err *Error
}

// viewState is the client's copy of one server view, shared by every View
// handle subscribed to the same view id.
type viewState struct {
	id     string
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

	// handles is guarded by Client.mu.
	handles map[*View]struct{}
}

func newViewState(id, graph string, params map[string]*pb.Value, epoch uint64) *viewState {
	return &viewState{
		id:         id,
		graph:      graph,
		params:     params,
		replyEpoch: epoch,
		ready:      make(chan struct{}),
		changed:    make(chan struct{}),
		handles:    map[*View]struct{}{},
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
	c       *Client
	vs      *viewState
	updates chan Update
	done    chan struct{}
	// guarded by Client.mu
	closed bool
	err    error
}

// ID is the view id, "<graph>/<params_hash>".
func (v *View) ID() string { return v.vs.id }

// Graph is the graph the view reads.
func (v *View) Graph() string { return v.vs.graph }

// State returns the latest state. It is immutable and safe to use from any
// goroutine; it is nil only before the first snapshot (Subscribe returns after it).
func (v *View) State() *State { return v.vs.state.Load() }

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
		ch, st := v.vs.watch()
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
