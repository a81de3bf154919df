package offline

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// UpgradeRequiredError is RegisterClient refusing the app's version: the app
// must be updated before it can sync.
type UpgradeRequiredError struct {
	// MinAppVersion is the lowest app version the server accepts ("" when it did not say).
	MinAppVersion string
	Message       string
}

func (e *UpgradeRequiredError) Error() string {
	return "offline: upgrade required: " + e.Message
}

// GRPCStatus lets status.Code read FailedPrecondition.
func (e *UpgradeRequiredError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Message)
}

// Status is where the sync loop stands.
type Status string

// The states of the sync loop.
const (
	StatusIdle       Status = "idle"
	StatusConnecting Status = "connecting"
	StatusLive       Status = "live"
	StatusOffline    Status = "offline"
	StatusFailed     Status = "failed"
	StatusClosed     Status = "closed"
)

// Row is a row as the app sees it: the server's row with this device's
// pending writes on top.
type Row struct {
	ID string
	// Values decoded as by arcana.FromValue; Raw as they travel.
	Values map[string]any
	Raw    map[string]*pb.Value
	// Version is the server version the row is based on (0 for a row only inserted here).
	Version uint64
	Scope   string
	// Pending is true while local writes of the row wait for the server.
	Pending bool
}

// BundleResult is the server's answer to one pushed bundle.
type BundleResult struct {
	BundleID uint64
	Applied  bool
	// Replayed is true when the bundle had already committed (a resend after a crash).
	Replayed bool
	Writes   int
}

// Options configure a Store.
type Options struct {
	// Conn is the connection to the server.
	Conn grpc.ClientConnInterface
	// Storage keeps the copy; see OpenSQLite.
	Storage Storage
	// Token is sent as a bearer token; TokenFunc, when set, is asked instead.
	Token     string
	TokenFunc func(ctx context.Context) (string, error)
	// AppVersion is checked by RegisterClient.
	AppVersion string
	Platform   string
	// ClientID fixes the client id; by default one is made at first open and kept in the storage.
	ClientID string
	// OnConflict is called for every local write the server refused or
	// overruled. For a rejected write, returning Reapply writes it again on
	// top of the server's row; Drop discards it.
	OnConflict func(Conflict) Resolution
	// OnRefused is called when the server refused a whole bundle as invalid
	// (InvalidArgument, e.g. a value a column cannot take): its writes are
	// dropped from the outbox so later writes can go.
	OnRefused func(bundleID uint64, writes []*OutboxEntry, err error)
	// OnBundle is called with the server's answer to every pushed bundle.
	OnBundle func(BundleResult)
	// OnSnapshot is called after a snapshot replaced the rows of these scopes (none: every scope).
	OnSnapshot func(scopes []string)
	// OnError is called when a sync attempt fails (retryable failures are retried).
	OnError func(error)
	// MinBackoff and MaxBackoff bound the wait between attempts (defaults 200ms and 10s).
	MinBackoff, MaxBackoff time.Duration
}

const (
	defaultChunkRows = 500
	defaultPushRows  = 1000
	defaultPushBytes = 4 << 20
	chunkOverhead    = 256
)

// Store is a device's copy of the synced tables: the app reads and writes
// it without a connection, and Sync or Start exchange changes with the
// server.
type Store struct {
	opts Options
	rpc  pb.OfflineServiceClient

	mu        sync.Mutex // guards state, caps, status and commits
	state     *localState
	caps      *pb.CapabilitiesResponse
	status    Status
	lastErr   error
	listeners map[int]func()
	nextL     int

	pushMu sync.Mutex // one push at a time
	kickCh chan struct{}

	loopMu sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Open loads the storage; it touches no network.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Conn == nil || opts.Storage == nil {
		return nil, errors.New("offline: Options.Conn and Options.Storage are required")
	}
	st, err := opts.Storage.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("offline: loading the storage: %w", err)
	}
	s := &Store{
		opts:      opts,
		rpc:       pb.NewOfflineServiceClient(opts.Conn),
		state:     newLocalState(st),
		status:    StatusIdle,
		listeners: map[int]func(){},
		kickCh:    make(chan struct{}, 1),
	}
	id := opts.ClientID
	if id == "" {
		id = s.state.meta[metaClientID]
	}
	if id == "" {
		id = newClientID()
	}
	if s.state.meta[metaClientID] != id {
		if err := s.commit(ctx, func() (*Batch, error) {
			return &Batch{Meta: map[string]string{metaClientID: id}}, nil
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ClientID is the id this device registers with, stable across restarts.
func (s *Store) ClientID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.meta[metaClientID]
}

// Status is where the sync loop stands, with its last failure.
func (s *Store) Status() (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status, s.lastErr
}

// Tables are the names of the synced tables (known after the first connection).
func (s *Store) Tables() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.state.order...)
}

// Positions are the newest sequences received, per scope.
func (s *Store) Positions() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.scopes()
}

// Pending is how many local writes wait for the server.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.state.outbox)
}

// Rows are every row of a table, by id.
func (s *Store) Rows(table string) ([]Row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.state.spec(table); err != nil {
		return nil, err
	}
	pending := map[string]bool{}
	var ids []string
	for _, e := range s.state.outbox {
		if e.Table == table && !pending[e.ID] {
			pending[e.ID] = true
			ids = append(ids, e.ID)
		}
	}
	var out []Row
	seen := map[string]bool{}
	for ref, r := range s.state.rows {
		if ref.Table != table {
			continue
		}
		seen[ref.ID] = true
		vals := r.Values
		if pending[ref.ID] {
			vals = s.state.visible(table, ref.ID)
		}
		if vals != nil {
			out = append(out, makeRow(ref.ID, vals, r.Version, r.Scope, pending[ref.ID]))
		}
	}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		if vals := s.state.visible(table, id); vals != nil {
			out = append(out, makeRow(id, vals, 0, "", true))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Get is one row by id.
func (s *Store) Get(table, id string) (Row, bool, error) {
	rows, err := s.Rows(table)
	if err != nil {
		return Row{}, false, err
	}
	for _, r := range rows {
		if r.ID == id {
			return r, true, nil
		}
	}
	return Row{}, false, nil
}

func makeRow(id string, vals map[string]*pb.Value, version uint64, scope string, pending bool) Row {
	r := Row{ID: id, Raw: vals, Values: map[string]any{}, Version: version, Scope: scope, Pending: pending}
	for k, v := range vals {
		r.Values[k] = arcana.FromValue(v)
	}
	return r
}

// Subscribe calls fn after every change of the rows, the outbox or the
// status; the returned function unsubscribes.
func (s *Store) Subscribe(fn func()) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextL
	s.nextL++
	s.listeners[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.listeners, id)
	}
}

// Insert writes a new row locally and returns its id once stored.
func (s *Store) Insert(ctx context.Context, table string, values map[string]any) (string, error) {
	return s.write(ctx, table, pb.IntentOp_INTENT_OP_INSERT, "", values)
}

// Update changes columns of the row with this id.
func (s *Store) Update(ctx context.Context, table, id string, values map[string]any) error {
	_, err := s.write(ctx, table, pb.IntentOp_INTENT_OP_UPDATE, id, values)
	return err
}

// Delete deletes the row with this id.
func (s *Store) Delete(ctx context.Context, table, id string) error {
	_, err := s.write(ctx, table, pb.IntentOp_INTENT_OP_DELETE, id, nil)
	return err
}

func (s *Store) write(ctx context.Context, table string, op pb.IntentOp, id string, values map[string]any) (string, error) {
	var out string
	err := s.commit(ctx, func() (*Batch, error) {
		spec, err := s.state.spec(table)
		if err != nil {
			return nil, err
		}
		enc, err := encodeRow(spec, values)
		if err != nil {
			return nil, err
		}
		if id != "" {
			cur := s.state.visible(table, id)
			if cur == nil {
				return nil, status.Errorf(codes.NotFound, "%s %s does not exist", table, id)
			}
			for _, k := range spec.GetKey() {
				enc[k] = cur[k]
			}
		}
		b, rid, err := s.state.write(table, op, enc, time.Now().UnixMilli())
		out = rid
		return b, err
	})
	if err != nil {
		return "", err
	}
	select {
	case s.kickCh <- struct{}{}:
	default:
	}
	return out, nil
}

// commit computes a batch from the current state, stores it, then applies it.
func (s *Store) commit(ctx context.Context, make func() (*Batch, error)) error {
	s.mu.Lock()
	b, err := make()
	if err != nil || b.empty() {
		s.mu.Unlock()
		return err
	}
	if err := s.opts.Storage.Commit(ctx, b); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("offline: storing: %w", err)
	}
	s.state.apply(b)
	ls := s.listenersLocked()
	s.mu.Unlock()
	for _, fn := range ls {
		fn()
	}
	return nil
}

func (s *Store) listenersLocked() []func() {
	out := make([]func(), 0, len(s.listeners))
	for _, fn := range s.listeners {
		out = append(out, fn)
	}
	return out
}

func (s *Store) setStatus(st Status, err error) {
	s.mu.Lock()
	if err != nil {
		s.lastErr = err
	}
	changed := s.status != st
	s.status = st
	ls := s.listenersLocked()
	s.mu.Unlock()
	if changed {
		for _, fn := range ls {
			fn()
		}
	}
}

func (s *Store) authCtx(ctx context.Context) (context.Context, error) {
	tok := s.opts.Token
	if s.opts.TokenFunc != nil {
		t, err := s.opts.TokenFunc(ctx)
		if err != nil {
			return nil, err
		}
		tok = t
	}
	if tok == "" {
		return ctx, nil
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), nil
}

// DropPending forgets every pending write (say, after the loop stopped as
// failed) and returns how many there were.
func (s *Store) DropPending(ctx context.Context) (int, error) {
	n := 0
	err := s.commit(ctx, func() (*Batch, error) {
		b := &Batch{}
		for _, e := range s.state.outbox {
			b.DeleteOutbox = append(b.DeleteOutbox, e.Seq)
		}
		n = len(b.DeleteOutbox)
		return b, nil
	})
	return n, err
}

// Sync runs one round: connect, push every pending write, pull until caught up.
func (s *Store) Sync(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	if err := s.pushAll(ctx); err != nil {
		return err
	}
	return s.pull(ctx, false, nil)
}

// connect fetches capabilities (rebuilding the local tables when the schema
// changed), registers, and snapshots scopes not held yet.
func (s *Store) connect(ctx context.Context) error {
	actx, err := s.authCtx(ctx)
	if err != nil {
		return err
	}
	caps, err := s.rpc.Capabilities(actx, &pb.CapabilitiesRequest{})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.caps = caps
	changed := s.state.meta[metaSchemaHash] != caps.GetSchemaHash()
	s.mu.Unlock()
	if changed {
		// New or changed tables: old rows may not fit them, so start over
		// from a snapshot. Pending writes stay.
		if err := s.commit(ctx, func() (*Batch, error) {
			return &Batch{SetTables: true, Tables: caps.GetTables(), ClearRows: true, Meta: map[string]string{
				metaSchemaHash: caps.GetSchemaHash(), metaScopes: formatScopes(nil),
			}}, nil
		}); err != nil {
			return err
		}
	}
	reg, err := s.rpc.RegisterClient(actx, &pb.RegisterClientRequest{
		ClientId: s.ClientID(), Platform: s.opts.Platform, AppVersion: s.opts.AppVersion,
	})
	if status.Code(err) == codes.FailedPrecondition {
		return &UpgradeRequiredError{MinAppVersion: caps.GetMinAppVersion(), Message: status.Convert(err).Message()}
	}
	if err != nil {
		return err
	}
	held := s.Positions()
	if len(held) == 0 {
		return s.snapshot(ctx, nil)
	}
	var missing []string
	for _, sc := range reg.GetScopes() {
		if _, ok := held[sc.GetScope()]; !ok {
			missing = append(missing, sc.GetScope())
		}
	}
	if len(missing) > 0 {
		return s.snapshot(ctx, missing)
	}
	return nil
}

// snapshot replaces the rows of scopes (every scope when none) with a
// snapshot, resuming by cursor after a dropped stream.
func (s *Store) snapshot(ctx context.Context, scopes []string) error {
	var rows []*pb.ServerRow
	var at []*pb.ScopeSequence
	cursor := ""
	for attempt := 0; ; attempt++ {
		err := func() error {
			actx, err := s.authCtx(ctx)
			if err != nil {
				return err
			}
			stream, err := s.rpc.Snapshot(actx, &pb.SnapshotRequest{ClientId: s.ClientID(), Scopes: scopes, Cursor: cursor})
			if err != nil {
				return err
			}
			for {
				chunk, err := stream.Recv()
				if err == io.EOF {
					return status.Error(codes.Unavailable, "the snapshot stream ended before its last chunk")
				}
				if err != nil {
					return err
				}
				rows = append(rows, chunk.GetRows()...)
				if len(chunk.GetAt()) > 0 {
					at = chunk.GetAt()
				}
				cursor = chunk.GetCursor()
				if chunk.GetLast() {
					if err := s.commit(ctx, func() (*Batch, error) {
						return s.state.snapshotted(len(scopes) == 0, scopes, rows, at), nil
					}); err != nil {
						return err
					}
					if s.opts.OnSnapshot != nil {
						s.opts.OnSnapshot(scopes)
					}
					return nil
				}
			}
		}()
		if err == nil {
			return nil
		}
		if cursor == "" || !retryable(err) || attempt >= 3 || ctx.Err() != nil {
			return err
		}
		if !sleep(ctx, s.delay(attempt)) {
			return ctx.Err()
		}
	}
}

// pull applies changes until caught up, or with follow until the stream
// ends or fails. live, when given, is called once the first batch arrived.
func (s *Store) pull(ctx context.Context, follow bool, live func()) error {
	for {
		var after []*pb.ScopeSequence
		for sc, seq := range s.Positions() {
			after = append(after, &pb.ScopeSequence{Scope: sc, Sequence: seq})
		}
		actx, err := s.authCtx(ctx)
		if err != nil {
			return err
		}
		stream, err := s.rpc.Pull(actx, &pb.PullRequest{ClientId: s.ClientID(), After: after, Follow: follow})
		if err != nil {
			return err
		}
		more := false
		snapshotOf := ""
		for {
			res, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if sr := res.GetSnapshotRequired(); sr != nil {
				snapshotOf = sr.GetScope()
				break
			}
			if cb := res.GetChanges(); cb != nil {
				if err := s.commit(ctx, func() (*Batch, error) { return s.state.pulled(cb), nil }); err != nil {
					return err
				}
				more = cb.GetHasMore()
				if live != nil {
					live()
					live = nil
				}
			}
		}
		if snapshotOf != "" {
			if err := s.snapshot(ctx, []string{snapshotOf}); err != nil {
				return err
			}
			continue
		}
		if follow || !more {
			return nil
		}
	}
}

func (s *Store) limits() (bundleLimits, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.caps.GetLimits()
	chunk := int(l.GetMaxChunkRows())
	if chunk == 0 {
		chunk = defaultChunkRows
	}
	rows := int(l.GetMaxPushRows())
	if rows == 0 {
		rows = defaultPushRows
	}
	bytes := int(l.GetMaxPushBytes())
	if bytes == 0 {
		bytes = defaultPushBytes
	}
	return bundleLimits{rows: rows, bytes: bytes - chunkOverhead}, chunk
}

// pushAll pushes bundles until the outbox is empty.
func (s *Store) pushAll(ctx context.Context) error {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	for {
		s.mu.Lock()
		id, entries := s.state.sealed()
		s.mu.Unlock()
		if id == 0 {
			lim, _ := s.limits()
			// Sealed and stored before sending: a retry after a crash sends
			// the same bundle id, which the server answers from its record.
			if err := s.commit(ctx, func() (*Batch, error) {
				b, bid, es := s.state.seal(lim)
				id, entries = bid, es
				return b, nil
			}); err != nil {
				return err
			}
		}
		if id == 0 {
			return nil
		}
		res, err := s.send(ctx, id, entries)
		if status.Code(err) == codes.InvalidArgument {
			// The server will refuse these writes however often they go:
			// drop them rather than block every later write behind them.
			dropped := entries
			if err := s.commit(ctx, func() (*Batch, error) {
				b := &Batch{}
				for _, e := range dropped {
					b.DeleteOutbox = append(b.DeleteOutbox, e.Seq)
				}
				return b, nil
			}); err != nil {
				return err
			}
			if s.opts.OnRefused != nil {
				s.opts.OnRefused(id, dropped, err)
			}
			continue
		}
		if err != nil {
			return err
		}
		if s.opts.OnBundle != nil {
			s.opts.OnBundle(BundleResult{BundleID: id, Applied: res.GetApplied(), Replayed: res.GetReplayed(), Writes: len(entries)})
		}
		var conflicts []Conflict
		if err := s.commit(ctx, func() (*Batch, error) {
			b, cs := s.state.pushed(entries, res)
			conflicts = cs
			return b, nil
		}); err != nil {
			return err
		}
		for _, c := range conflicts {
			if s.opts.OnConflict == nil {
				continue
			}
			if s.opts.OnConflict(c) == Reapply && c.Kind == Rejected {
				if err := s.commit(ctx, func() (*Batch, error) {
					return s.state.reapply(c, time.Now().UnixMilli())
				}); err != nil {
					return err
				}
			}
		}
	}
}

// send pushes one sealed bundle as numbered chunks on one stream.
func (s *Store) send(ctx context.Context, id uint64, entries []*OutboxEntry) (*pb.PushResponse, error) {
	_, chunkRows := s.limits()
	actx, err := s.authCtx(ctx)
	if err != nil {
		return nil, err
	}
	stream, err := s.rpc.Push(actx)
	if err != nil {
		return nil, err
	}
	n := int(math.Max(1, math.Ceil(float64(len(entries))/float64(chunkRows))))
	for i := 0; i < n; i++ {
		end := min((i+1)*chunkRows, len(entries))
		var intents []*pb.RowIntent
		for _, e := range entries[i*chunkRows : end] {
			intents = append(intents, intentOf(e))
		}
		err := stream.Send(&pb.PushChunk{ClientId: s.ClientID(), BundleId: id, ChunkIndex: uint32(i), Last: i == n-1, Intents: intents})
		if err == io.EOF {
			break // the server answered early; CloseAndRecv has its status
		}
		if err != nil {
			return nil, err
		}
	}
	return stream.CloseAndRecv()
}

func retryable(err error) bool {
	var up *UpgradeRequiredError
	if errors.As(err, &up) {
		return false
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented, codes.InvalidArgument:
		return false
	}
	return true
}

func (s *Store) delay(attempt int) time.Duration {
	lo, hi := s.opts.MinBackoff, s.opts.MaxBackoff
	if lo <= 0 {
		lo = 200 * time.Millisecond
	}
	if hi <= 0 {
		hi = 10 * time.Second
	}
	d := time.Duration(float64(lo) * math.Pow(2, float64(min(attempt, 30))))
	if d > hi {
		d = hi
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Start runs the sync loop in the background: push on every write, follow
// changes live, retry with backoff. Stop ends it.
func (s *Store) Start() {
	s.loopMu.Lock()
	defer s.loopMu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan struct{})
	go s.run(ctx, s.done)
}

// Stop ends the background loop; the store stays usable offline.
func (s *Store) Stop() {
	s.loopMu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.loopMu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	if st, _ := s.Status(); st != StatusFailed {
		s.setStatus(StatusIdle, nil)
	}
}

// Close stops syncing and closes the storage.
func (s *Store) Close() error {
	s.Stop()
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	s.setStatus(StatusClosed, nil)
	return s.opts.Storage.Close()
}

func (s *Store) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	for attempt := 0; ctx.Err() == nil; {
		err := s.session(ctx, func() { attempt = 0 })
		if ctx.Err() != nil {
			return
		}
		if err != nil && s.opts.OnError != nil {
			s.opts.OnError(err)
		}
		if err != nil && !retryable(err) {
			s.setStatus(StatusFailed, err)
			return
		}
		s.setStatus(StatusOffline, err)
		if !sleep(ctx, s.delay(attempt)) {
			return
		}
		attempt++
	}
}

// session is one connection: connect, push, then follow changes while
// pushing every new local write, until something fails.
func (s *Store) session(ctx context.Context, connected func()) error {
	s.setStatus(StatusConnecting, nil)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.connect(sctx); err != nil {
		return err
	}
	if err := s.pushAll(sctx); err != nil {
		return err
	}
	connected()
	s.setStatus(StatusLive, nil)
	pushErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-sctx.Done():
				return
			case <-s.kickCh:
				if err := s.pushAll(sctx); err != nil {
					pushErr <- err
					cancel()
					return
				}
			}
		}
	}()
	err := s.pull(sctx, true, nil)
	cancel()
	select {
	case perr := <-pushErr:
		return perr
	default:
	}
	if err == nil {
		err = status.Error(codes.Unavailable, "the server ended the change stream")
	}
	return err
}

func newClientID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
