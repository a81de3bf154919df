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
	i, ok := FromValue(r.Data[name]).(int64)
	return i, ok
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

// Subscribe subscribes to a graph view and returns once its first snapshot
// is applied. If the session drops before the reply, it retries on the next.
func (c *Client) Subscribe(ctx context.Context, graph string, params Params) (*View, error) {
	vals, err := toValues(params)
	if err != nil {
		return nil, &Error{Code: codes.InvalidArgument, Message: err.Error(), Op: "subscribe " + graph}
	}
	return c.subscribe(ctx, graph, vals, nil)
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
