package offline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
	"github.com/arcana-sync/arcana/clients/go/offline"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// device opens a store on a SQLite file in dir, closed when the test ends.
func device(t *testing.T, s *offlineServer, path, token string, edit func(*offline.Options)) *offline.Store {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	st, err := offline.OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	opts := offline.Options{Conn: conn, Storage: st, Token: token, AppVersion: "1.2.0",
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
	if edit != nil {
		edit(&opts)
	}
	store, err := offline.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func body(t *testing.T, s *offline.Store, id string) any {
	t.Helper()
	r, ok, err := s.Get("offline_notes", id)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return nil
	}
	return r.Values["body"]
}

func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTwoDevicesEditOfflineAndConverge(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, 2*time.Minute)
	dir := t.TempDir()
	var conflicts []offline.Conflict
	a := device(t, s, filepath.Join(dir, "a.sqlite"), "dev-alice", nil)
	b := device(t, s, filepath.Join(dir, "b.sqlite"), "dev-bob", func(o *offline.Options) {
		// Device B keeps its edit: it writes it again on the server's row.
		o.OnConflict = func(c offline.Conflict) offline.Resolution {
			conflicts = append(conflicts, c)
			return offline.Reapply
		}
	})
	must(t, a.Sync(ctx))
	if _, err := a.Insert(ctx, "offline_notes", map[string]any{"id": 101, "workspace_id": "acme", "body": "first"}); err != nil {
		t.Fatal(err)
	}
	must(t, a.Sync(ctx))
	must(t, b.Sync(ctx))
	if got := body(t, b, "101"); got != "first" {
		t.Fatalf("B sees %v", got)
	}

	s.pause()
	resumed := false
	defer func() {
		if !resumed {
			_ = s.resume() // for the tests after this one
		}
	}()
	must(t, a.Update(ctx, "offline_notes", "101", map[string]any{"body": "from A"}))
	must(t, b.Update(ctx, "offline_notes", "101", map[string]any{"body": "from B"}))
	if _, err := b.Insert(ctx, "offline_notes", map[string]any{"id": 102, "workspace_id": "acme", "body": "B's own"}); err != nil {
		t.Fatal(err)
	}
	offCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := a.Sync(offCtx)
	cancel()
	if err == nil {
		t.Fatal("Sync succeeded with the server down")
	}
	if a.Pending() != 1 || body(t, a, "101") != "from A" {
		t.Fatalf("offline: pending %d, row %v", a.Pending(), body(t, a, "101"))
	}
	resumed = true
	must(t, s.resume())

	// The connection redials on its own schedule after the outage.
	syncEventually(ctx, t, a)
	must(t, b.Sync(ctx))
	must(t, a.Sync(ctx))
	if len(conflicts) != 1 || conflicts[0].Kind != offline.Rejected || conflicts[0].ServerValues["body"].GetString_() != "from A" {
		t.Fatalf("conflicts = %+v", conflicts)
	}
	for name, st := range map[string]*offline.Store{"A": a, "B": b} {
		if st.Pending() != 0 || body(t, st, "101") != "from B" || body(t, st, "102") != "B's own" {
			t.Fatalf("%s: pending %d, rows %v %v", name, st.Pending(), body(t, st, "101"), body(t, st, "102"))
		}
	}
	ra, _, _ := a.Get("offline_notes", "101")
	rb, _, _ := b.Get("offline_notes", "101")
	if ra.Version != rb.Version {
		t.Fatalf("versions differ: %d and %d", ra.Version, rb.Version)
	}
}

func TestLastWriterWinsSupersedesTheOlderWrite(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	dir := t.TempDir()
	var conflicts []offline.Conflict
	a := device(t, s, filepath.Join(dir, "a.sqlite"), "dev-alice", nil)
	b := device(t, s, filepath.Join(dir, "b.sqlite"), "dev-bob", func(o *offline.Options) {
		o.OnConflict = func(c offline.Conflict) offline.Resolution { conflicts = append(conflicts, c); return offline.Drop }
	})
	must(t, s.sql("INSERT INTO offline_prefs (id, workspace_id, value) VALUES (101, 'acme', 'start')"))
	must(t, a.Sync(ctx))
	must(t, b.Sync(ctx))
	must(t, b.Update(ctx, "offline_prefs", "101", map[string]any{"value": "older, from B"}))
	time.Sleep(20 * time.Millisecond)
	must(t, a.Update(ctx, "offline_prefs", "101", map[string]any{"value": "newer, from A"}))
	must(t, a.Sync(ctx))
	must(t, b.Sync(ctx))
	if len(conflicts) != 1 || conflicts[0].Kind != offline.Superseded || conflicts[0].ServerValues["value"].GetString_() != "newer, from A" {
		t.Fatalf("conflicts = %+v", conflicts)
	}
	for name, st := range map[string]*offline.Store{"A": a, "B": b} {
		r, _, _ := st.Get("offline_prefs", "101")
		if st.Pending() != 0 || r.Values["value"] != "newer, from A" {
			t.Fatalf("%s: pending %d, value %v", name, st.Pending(), r.Values["value"])
		}
	}
}

func TestInvalidBundleIsDroppedAndReported(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	var refused []string
	d := device(t, s, filepath.Join(t.TempDir(), "refused.sqlite"), "dev-alice", func(o *offline.Options) {
		o.OnRefused = func(_ uint64, writes []*offline.OutboxEntry, err error) {
			for _, w := range writes {
				refused = append(refused, w.ID+" "+status.Code(err).String())
			}
		}
	})
	must(t, d.Sync(ctx))
	// Local checks pass (the server fills some columns in); PostgreSQL refuses the null.
	if _, err := d.Insert(ctx, "offline_notes", map[string]any{"id": 190, "workspace_id": "acme", "body": nil}); err != nil {
		t.Fatal(err)
	}
	must(t, d.Sync(ctx))
	if len(refused) != 1 || refused[0] != "190 InvalidArgument" || d.Pending() != 0 {
		t.Fatalf("refused %v, pending %d", refused, d.Pending())
	}
	if _, err := d.Insert(ctx, "offline_notes", map[string]any{"id": 191, "workspace_id": "acme", "body": "fine"}); err != nil {
		t.Fatal(err)
	}
	must(t, d.Sync(ctx))
	if body(t, d, "191") != "fine" || d.Pending() != 0 {
		t.Fatalf("the next write did not go: pending %d", d.Pending())
	}
}

func TestManyWritesGoAsSeveralBundlesOfSeveralChunks(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	var bundles []offline.BundleResult
	d := device(t, s, filepath.Join(t.TempDir(), "many.sqlite"), "dev-alice", func(o *offline.Options) {
		o.OnBundle = func(r offline.BundleResult) { bundles = append(bundles, r) }
	})
	must(t, d.Sync(ctx))
	for i := 0; i < 12; i++ {
		if _, err := d.Insert(ctx, "offline_notes", map[string]any{"id": 600 + i, "workspace_id": "acme", "body": fmt.Sprint("many ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	must(t, d.Sync(ctx))
	// The server takes at most 5 writes a bundle and 2 a chunk.
	got := fmt.Sprint(bundles)
	want := "[{1 true false 5} {2 true false 5} {3 true false 2}]"
	if got != want {
		t.Fatalf("bundles = %s, want %s", got, want)
	}
	rows, _ := d.Rows("offline_notes")
	n := 0
	for _, r := range rows {
		if strings.HasPrefix(fmt.Sprint(r.Values["body"]), "many ") && !r.Pending {
			n++
		}
	}
	if n != 12 {
		t.Fatalf("%d of the 12 rows came back from the server", n)
	}
}

// crashing fails like a crash right after the server answered a push: the
// answer is never recorded locally.
type crashing struct {
	offline.Storage
	mu    sync.Mutex
	crash bool
}

func (c *crashing) Commit(ctx context.Context, b *offline.Batch) error {
	c.mu.Lock()
	crash := c.crash
	c.mu.Unlock()
	if crash && len(b.DeleteOutbox) > 0 {
		return errors.New("crashed before recording the answer")
	}
	return c.Storage.Commit(ctx, b)
}

func TestRestartReplaysThePendingBundleOnce(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, 2*time.Minute)
	dir := t.TempDir()
	path := filepath.Join(dir, "crash.sqlite")
	var results []offline.BundleResult
	var resMu sync.Mutex
	record := func(r offline.BundleResult) {
		resMu.Lock()
		defer resMu.Unlock()
		results = append(results, r)
	}

	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	real, err := offline.OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	first, err := offline.Open(ctx, offline.Options{Conn: conn, Storage: &crashing{Storage: real, crash: true},
		Token: "dev-alice", AppVersion: "1.2.0", OnBundle: record})
	if err != nil {
		t.Fatal(err)
	}
	must(t, first.Sync(ctx))
	if _, err := first.Insert(ctx, "offline_notes", map[string]any{"id": 130, "workspace_id": "acme", "body": "once"}); err != nil {
		t.Fatal(err)
	}
	if err := first.Sync(ctx); err == nil || !strings.Contains(err.Error(), "crashed") {
		t.Fatalf("Sync = %v, want the crash", err)
	}
	must(t, first.Close())

	watcher := device(t, s, filepath.Join(dir, "watcher.sqlite"), "dev-alice", nil)
	must(t, watcher.Sync(ctx))
	w1, ok, _ := watcher.Get("offline_notes", "130")
	if !ok {
		t.Fatal("the first push did not apply")
	}

	second := device(t, s, path, "dev-alice", func(o *offline.Options) { o.OnBundle = record })
	if second.Pending() != 1 {
		t.Fatalf("pending after the crash = %d, want 1", second.Pending())
	}
	must(t, second.Sync(ctx))
	resMu.Lock()
	if len(results) != 2 || results[1].BundleID != results[0].BundleID || !results[1].Replayed {
		t.Fatalf("bundle results = %+v, want the same id replayed", results)
	}
	resMu.Unlock()
	if second.Pending() != 0 || body(t, second, "130") != "once" {
		t.Fatalf("after the replay: pending %d, row %v", second.Pending(), body(t, second, "130"))
	}
	must(t, watcher.Sync(ctx))
	w2, _, _ := watcher.Get("offline_notes", "130")
	if w2.Version != w1.Version {
		t.Fatalf("the replay changed the row: version %d, then %d", w1.Version, w2.Version)
	}
}

func TestFollowDeliversPsqlWritesAndPushesLocalWrites(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, 2*time.Minute)
	dir := t.TempDir()
	a := device(t, s, filepath.Join(dir, "a.sqlite"), "dev-alice", nil)
	b := device(t, s, filepath.Join(dir, "b.sqlite"), "dev-bob", nil)
	must(t, s.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (150, 'acme', 'seed')"))
	a.Start()
	b.Start()
	live := func(st *offline.Store) bool { s, _ := st.Status(); return s == offline.StatusLive }
	eventually(t, "both live", func() bool { return live(a) && live(b) })
	must(t, s.sql("UPDATE offline_notes SET body = 'from psql' WHERE id = 150"))
	eventually(t, "the psql write on A", func() bool { return body(t, a, "150") == "from psql" })
	eventually(t, "the psql write on B", func() bool { return body(t, b, "150") == "from psql" })
	if _, err := a.Insert(ctx, "offline_notes", map[string]any{"id": 151, "workspace_id": "acme", "body": "live from A"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A's write on B", func() bool { return body(t, b, "151") == "live from A" })
	a.Stop()
	b.Stop()
}

func TestLoopGoesOfflineAndPushesWritesOnceTheServerIsBack(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	d := device(t, s, filepath.Join(t.TempDir(), "loop.sqlite"), "dev-alice", func(o *offline.Options) {
		o.MaxBackoff = 300 * time.Millisecond
	})
	state := func() offline.Status { st, _ := d.Status(); return st }
	d.Start()
	eventually(t, "live", func() bool { return state() == offline.StatusLive })
	s.pause()
	resumed := false
	defer func() {
		if !resumed {
			_ = s.resume() // for the tests after this one
		}
	}()
	eventually(t, "offline", func() bool { return state() == offline.StatusOffline })
	if _, err := d.Insert(ctx, "offline_notes", map[string]any{"id": 145, "workspace_id": "acme", "body": "written during the outage"}); err != nil {
		t.Fatal(err)
	}
	resumed = true
	must(t, s.resume())
	deadline := time.Now().Add(30 * time.Second)
	for d.Pending() != 0 || state() != offline.StatusLive {
		if time.Now().After(deadline) {
			st, err := d.Status()
			t.Fatalf("not pushed after the outage: pending %d, status %s (%v)", d.Pending(), st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := exec.Command("psql", s.pgURL, "-At", "-c", "SELECT body FROM offline_notes WHERE id = 145").Output()
	if err != nil || strings.TrimSpace(string(out)) != "written during the outage" {
		t.Fatalf("the database has %q (%v)", out, err)
	}
	d.Stop()
}

func TestDeviceBehindThePrunedHistoryTakesASnapshot(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	var snaps [][]string
	d := device(t, s, filepath.Join(t.TempDir(), "behind.sqlite"), "dev-alice", func(o *offline.Options) {
		o.OnSnapshot = func(sc []string) { snaps = append(snaps, sc) }
	})
	must(t, s.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (170, 'acme', 'stays'), (171, 'acme', 'goes')"))
	must(t, d.Sync(ctx))
	if len(snaps) != 1 || len(snaps[0]) != 0 || body(t, d, "171") != "goes" {
		t.Fatalf("first sync: snapshots %v, row 171 %v", snaps, body(t, d, "171"))
	}
	// More changes than the server keeps, while the device is away.
	must(t, s.sql("DELETE FROM offline_notes WHERE id = 171"))
	for i := 0; i < 8; i++ {
		must(t, s.sql(fmt.Sprintf("UPDATE offline_notes SET body = 'stays %d' WHERE id = 170", i)))
	}
	time.Sleep(1500 * time.Millisecond) // retention runs every 200 ms
	must(t, d.Sync(ctx))
	if len(snaps) != 2 || len(snaps[1]) != 1 || snaps[1][0] != "workspace:acme" {
		t.Fatalf("snapshots = %v, want a second one of workspace:acme", snaps)
	}
	if body(t, d, "170") != "stays 7" || body(t, d, "171") != nil {
		t.Fatalf("after the snapshot: 170 = %v, 171 = %v", body(t, d, "170"), body(t, d, "171"))
	}
}

// breakingStream fails after its first message, as a dropped connection would.
type breakingStream struct {
	grpc.ClientStream
	n int
}

func (b *breakingStream) RecvMsg(m any) error {
	if b.n == 1 {
		return status.Error(codes.Unavailable, "connection dropped")
	}
	b.n++
	return b.ClientStream.RecvMsg(m)
}

func TestBrokenSnapshotResumesFromItsCursor(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	for i := 180; i < 187; i++ {
		must(t, s.sql(fmt.Sprintf("INSERT INTO offline_notes (id, workspace_id, body) VALUES (%d, 'acme', 'row %d')", i, i)))
	}
	var mu sync.Mutex
	var cursors []string
	var errs []error
	broke := false
	// Records each Snapshot request's cursor and breaks the first stream
	// after one chunk.
	intercept := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || !strings.HasSuffix(method, "/Snapshot") {
			return cs, err
		}
		mu.Lock()
		defer mu.Unlock()
		if !broke {
			broke = true
			return &recording{ClientStream: &breakingStream{ClientStream: cs}, cursors: &cursors, errs: &errs, mu: &mu}, nil
		}
		return &recording{ClientStream: cs, cursors: &cursors, errs: &errs, mu: &mu}, nil
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithStreamInterceptor(intercept))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := offline.OpenSQLite(filepath.Join(t.TempDir(), "resume.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := offline.Open(ctx, offline.Options{Conn: conn, Storage: st, Token: "dev-alice", AppVersion: "1.2.0", MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	must(t, d.Sync(ctx))
	mu.Lock()
	// A first call, broken after one chunk, then resumes from that chunk's
	// cursor. The server allows one open snapshot per client and frees the
	// broken one's place only once it notices the stream is gone, so a
	// resume can be refused for that (RESOURCE_EXHAUSTED) and retried; the
	// last resume completes.
	if len(cursors) < 2 || cursors[0] != "" || cursors[1] == "" {
		t.Fatalf("snapshot cursors = %q, want a first call and a resumed one", cursors)
	}
	for i := 1; i < len(cursors); i++ {
		if cursors[i] != cursors[1] {
			t.Fatalf("snapshot cursors = %q: every resume starts from the first chunk's cursor", cursors)
		}
	}
	for i := 1; i < len(cursors)-1; i++ {
		if status.Code(errs[i]) != codes.ResourceExhausted || !strings.Contains(status.Convert(errs[i]).Message(), "max_snapshots_per_client") {
			t.Fatalf("resume %d ended with %v; only a refusal of the still-open snapshot may come before the last", i, errs[i])
		}
	}
	if last := errs[len(errs)-1]; last != nil {
		t.Fatalf("the last resume ended with %v", last)
	}
	mu.Unlock()
	out, err := exec.Command("psql", s.pgURL, "-At", "-c", "SELECT count(*) FROM offline_notes WHERE workspace_id = 'acme'").Output()
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := d.Rows("offline_notes")
	if want := strings.TrimSpace(string(out)); fmt.Sprint(len(rows)) != want {
		t.Fatalf("the device has %d rows, the database %s", len(rows), want)
	}
	for i := 180; i < 187; i++ {
		if got := body(t, d, fmt.Sprint(i)); got != fmt.Sprintf("row %d", i) {
			t.Fatalf("row %d = %v", i, got)
		}
	}
}

// recording notes the cursor of each Snapshot request sent.
type recording struct {
	grpc.ClientStream
	cursors *[]string
	// The error each call ended with (nil: it ended well), by call.
	errs *[]error
	mu   *sync.Mutex
	call int
}

func (r *recording) SendMsg(m any) error {
	if req, ok := m.(*pb.SnapshotRequest); ok {
		r.mu.Lock()
		*r.cursors = append(*r.cursors, req.GetCursor())
		*r.errs = append(*r.errs, nil)
		r.call = len(*r.cursors) - 1
		r.mu.Unlock()
	}
	return r.ClientStream.SendMsg(m)
}

func (r *recording) RecvMsg(m any) error {
	err := r.ClientStream.RecvMsg(m)
	if err != nil && err != io.EOF {
		r.mu.Lock()
		if (*r.errs)[r.call] == nil {
			(*r.errs)[r.call] = err
		}
		r.mu.Unlock()
	}
	return err
}

func TestOldAppVersionGetsUpgradeRequired(t *testing.T) {
	s := server(t)
	ctx := ctxT(t, time.Minute)
	old := device(t, s, filepath.Join(t.TempDir(), "old.sqlite"), "dev-alice", func(o *offline.Options) { o.AppVersion = "0.9.0" })
	err := old.Sync(ctx)
	var up *offline.UpgradeRequiredError
	if !errors.As(err, &up) || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Sync = %v, want an UpgradeRequiredError", err)
	}
	old.Start()
	eventually(t, "the loop to stop as failed", func() bool { st, _ := old.Status(); return st == offline.StatusFailed })
}

// syncEventually retries Sync while the server is still unreachable.
func syncEventually(ctx context.Context, t *testing.T, s *offline.Store) {
	t.Helper()
	for {
		err := s.Sync(ctx)
		if err == nil {
			return
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
