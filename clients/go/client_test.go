package arcana_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// refIDs lists the ids of a state's top-level refs.
func refIDs(st *arcana.State) []string {
	ids := make([]string, len(st.Refs))
	for i, r := range st.Refs {
		ids[i] = r.GetId()
	}
	return ids
}

func hasRef(st *arcana.State, id string) bool { return slices.Contains(refIDs(st), id) }

func title(st *arcana.State, id string) string {
	r := st.Rows[arcana.RowKey{Table: "tasks", ID: id}]
	if r == nil {
		return ""
	}
	s, _ := r.String("title")
	return s
}

// nextUpdate reads v's updates until one satisfies match.
func nextUpdate(t *testing.T, v *arcana.View, d time.Duration, match func(arcana.Update) bool) arcana.Update {
	t.Helper()
	deadline := time.After(d)
	var seen []string
	for {
		select {
		case u, ok := <-v.Updates():
			if !ok {
				t.Fatalf("updates closed (err %v); saw %v", v.Err(), seen)
			}
			seen = append(seen, u.Kind.String())
			if match(u) {
				return u
			}
		case <-deadline:
			t.Fatalf("no matching update within %v; saw %v", d, seen)
		}
	}
}

// drain empties v's update channel.
func drain(v *arcana.View) {
	for {
		select {
		case <-v.Updates():
		default:
			return
		}
	}
}

// fresh subscribes with a new client and returns the snapshot it gets.
func fresh(t *testing.T, token, graph string, params arcana.Params) *arcana.State {
	t.Helper()
	c := dial(t, token)
	v, err := c.Subscribe(ctxT(t, 20*time.Second), graph, params)
	if err != nil {
		t.Fatalf("fresh subscribe: %v", err)
	}
	st := v.State()
	c.Close()
	return st
}

func createTask(t *testing.T, c *arcana.Client, project int, title string, assignee any) string {
	t.Helper()
	res, err := c.Mutate(ctxT(t, 20*time.Second), "create_task", arcana.Params{
		"project_id": project, "title": title, "assignee_id": assignee,
	})
	if err != nil {
		t.Fatalf("create_task: %v", err)
	}
	id, ok := res.Int("id")
	if !ok {
		t.Fatalf("create_task returned no id: %v", res.Data)
	}
	return fmt.Sprint(id)
}

func deleteTask(t *testing.T, c *arcana.Client, id string) {
	t.Helper()
	var n int64
	fmt.Sscan(id, &n)
	if _, err := c.Mutate(ctxT(t, 20*time.Second), "delete_task", arcana.Params{"id": n}); err != nil {
		t.Fatalf("delete_task %s: %v", id, err)
	}
}

func TestSnapshot(t *testing.T) {
	c := dial(t, "dev-alice")
	v, err := c.Subscribe(ctxT(t, 20*time.Second), "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	st := v.State()
	if st == nil {
		t.Fatal("Subscribe returned before the snapshot")
	}
	if !strings.HasPrefix(v.ID(), "project_tasks/") || st.ViewID != v.ID() {
		t.Errorf("view id %q / state view id %q", v.ID(), st.ViewID)
	}
	if st.Version == 0 || st.Epoch == 0 {
		t.Errorf("epoch %d version %d", st.Epoch, st.Version)
	}
	if got, want := refIDs(st), []string{"1", "2", "3", "4"}; !slices.Equal(got, want) {
		t.Fatalf("refs %v, want %v", got, want)
	}
	if st.Total == nil || *st.Total != 4 {
		t.Errorf("total %v, want 4", st.Total)
	}
	// 4 tasks plus the two users they are assigned to.
	if len(st.Rows) != 6 {
		t.Errorf("%d rows, want 6: %v", len(st.Rows), st.Rows)
	}
	items := st.Items()
	if s, _ := items[0].Row.String("title"); s != "Write the announcement" {
		t.Errorf("first title %q", s)
	}
	a := items[1].Nested["assignee"]
	if a.Row == nil {
		t.Fatal("task 2 has no resolved assignee")
	}
	if name, _ := a.Row.String("name"); name != "Bob Builder" {
		t.Errorf("task 2 assignee name %q", name)
	}
	if _, ok := items[2].Nested["assignee"]; ok {
		t.Errorf("task 3 has no assignee but got a nested ref")
	}
	est, _ := items[0].Row.Get("estimate")
	if est != arcana.Numeric("3.50") {
		t.Errorf("estimate %#v, want numeric 3.50", est)
	}
	due, _ := items[0].Row.Get("due_at")
	if tm, ok := due.(time.Time); !ok || !tm.Equal(time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("due_at %#v", due)
	}
	if u := <-v.Updates(); u.Kind != arcana.UpdateSnapshot || u.State != st {
		t.Errorf("first update %v", u.Kind)
	}
}

func TestMutationsUpdateTheView(t *testing.T) {
	alice := dial(t, "dev-alice")
	bob := dial(t, "dev-bob")
	ctx := ctxT(t, 60*time.Second)
	params := arcana.Params{"project_id": 2}
	v, err := alice.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	bv, err := bob.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	before := v.State()
	drain(v)

	// Create, assigned to alice (no other task of project 2 is).
	id := createTask(t, alice, 2, "Go client: created", "alice")
	// Read-your-writes: the view already holds it when Mutate returns.
	st := v.State()
	if !hasRef(st, id) {
		t.Fatalf("created task %s not in the view after Mutate returned: %v", id, refIDs(st))
	}
	if st.Version <= before.Version {
		t.Errorf("version %d did not advance past %d", st.Version, before.Version)
	}
	if *st.Total != *before.Total+1 {
		t.Errorf("total %d, want %d", *st.Total, *before.Total+1)
	}
	if st.Rows[arcana.RowKey{Table: "users", ID: "alice"}] == nil {
		t.Errorf("the new assignee's row did not arrive")
	}
	u := nextUpdate(t, v, 5*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateDiff })
	if !hasRef(u.State, id) {
		t.Errorf("diff update lacks the new task")
	}
	// Another session (read-only user) sees it too.
	if _, err := bv.WaitFor(ctx, func(s *arcana.State) bool { return hasRef(s, id) }); err != nil {
		t.Fatalf("bob never saw the new task: %v", err)
	}

	// Field update: a row patch.
	var n int64
	fmt.Sscan(id, &n)
	if _, err := alice.Mutate(ctx, "update_task", arcana.Params{"id": n, "title": "Go client: renamed", "status": "doing"}); err != nil {
		t.Fatal(err)
	}
	st = v.State()
	if got := title(st, id); got != "Go client: renamed" {
		t.Errorf("title %q after update", got)
	}
	row := st.Rows[arcana.RowKey{Table: "tasks", ID: id}]
	if s, _ := row.String("status"); s != "doing" {
		t.Errorf("status %q after update", s)
	}
	if title(before, "5") != title(st, "5") {
		t.Errorf("an untouched row changed")
	}
	if _, err := bv.WaitFor(ctx, func(s *arcana.State) bool { return title(s, id) == "Go client: renamed" }); err != nil {
		t.Fatalf("bob never saw the rename: %v", err)
	}

	// Delete: the ref, its row and the assignee only it used leave the view.
	deleteTask(t, alice, id)
	st = v.State()
	if hasRef(st, id) || st.Rows[arcana.RowKey{Table: "tasks", ID: id}] != nil {
		t.Errorf("deleted task still in the view")
	}
	if st.Rows[arcana.RowKey{Table: "users", ID: "alice"}] != nil {
		t.Errorf("alice's row outlived the only task that referenced her")
	}
	if !st.Equal(before) {
		t.Errorf("after create+delete the view differs from before: %s", st.Diff(before))
	}
	if _, err := bv.WaitFor(ctx, func(s *arcana.State) bool { return !hasRef(s, id) }); err != nil {
		t.Fatalf("bob never saw the delete: %v", err)
	}
	if got := bv.State(); !got.Equal(st) {
		t.Errorf("bob's state differs from alice's: %s", got.Diff(st))
	}
}

func TestInt64Exactness(t *testing.T) {
	c := dial(t, "dev-carol")
	v, err := c.Subscribe(ctxT(t, 20*time.Second), "project_tasks", arcana.Params{"project_id": 3})
	if err != nil {
		t.Fatal(err)
	}
	row := v.State().Rows[arcana.RowKey{Table: "tasks", ID: "7"}]
	if row == nil {
		t.Fatalf("task 7 missing: %v", refIDs(v.State()))
	}
	const want int64 = 9007199254740993 // 2^53 + 1: not a float64
	if float64(want) == float64(want-1) && int64(float64(want)) == want {
		t.Fatal("test premise broken")
	}
	points, ok := row.Int("points")
	if !ok || points != want {
		t.Errorf("points = %d (ok %v), want %d", points, ok, want)
	}
	meta, _ := row.Get("meta")
	if j, ok := meta.(arcana.JSON); !ok || !strings.Contains(string(j), "9007199254740993") {
		t.Errorf("meta %#v does not keep the big number's digits", meta)
	}
	est, _ := row.Get("estimate")
	if est != arcana.Numeric("9999999999.99") {
		t.Errorf("estimate %#v", est)
	}
	// Carol's workspace does not see acme's project.
	v1, err := c.Subscribe(ctxT(t, 20*time.Second), "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(v1.State().Refs); n != 0 {
		t.Errorf("carol sees %d acme tasks", n)
	}
}

func TestErrorCodes(t *testing.T) {
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	session, err := c.WaitConnected(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		graph  string
		params arcana.Params
		code   codes.Code
	}{
		{"unknown graph", "no_such_graph", nil, codes.NotFound},
		{"wrong param type", "project_tasks", arcana.Params{"project_id": "one"}, codes.InvalidArgument},
		{"missing required param", "project_tasks", arcana.Params{}, codes.InvalidArgument},
		{"value not allowed", "project_tasks", arcana.Params{"project_id": 1, "status": "sleeping"}, codes.InvalidArgument},
		{"unknown param", "project_tasks", arcana.Params{"project_id": 1, "colour": "red"}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		_, err := c.Subscribe(ctx, tc.graph, tc.params)
		var ae *arcana.Error
		if !errors.As(err, &ae) {
			t.Errorf("%s: error %v is not an *arcana.Error", tc.name, err)
			continue
		}
		if ae.Code != tc.code || status.Code(err) != tc.code || arcana.Code(err) != tc.code {
			t.Errorf("%s: code %v, want %v (%v)", tc.name, ae.Code, tc.code, err)
		}
		if ae.Message == "" {
			t.Errorf("%s: empty message", tc.name)
		}
	}
	_, err = c.Mutate(ctx, "no_such_mutation", nil)
	if arcana.Code(err) != codes.NotFound {
		t.Errorf("unknown mutation: %v", err)
	}
	_, err = c.Mutate(ctx, "update_task", arcana.Params{"id": "x"})
	if arcana.Code(err) != codes.InvalidArgument {
		t.Errorf("bad mutation param: %v", err)
	}
	// The stream stays open after failed requests.
	if _, err := c.Subscribe(ctx, "projects", nil); err != nil {
		t.Errorf("subscribe after errors: %v", err)
	}
	if got := c.SessionID(); got != session {
		t.Errorf("session changed from %s to %s after request errors", session, got)
	}

	bob := dial(t, "dev-bob")
	_, err = bob.Mutate(ctx, "update_task", arcana.Params{"id": 1, "title": "nope"})
	if arcana.Code(err) != codes.PermissionDenied {
		t.Errorf("read-only mutate: %v", err)
	}
	if err := c.Notify(ctx, arcana.Change{Table: "tasks"}); arcana.Code(err) != codes.PermissionDenied {
		t.Errorf("notify without arcana:notify: %v", err)
	}

	for _, token := range []string{"", "not-a-token"} {
		anon := dial(t, token)
		_, err = anon.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 1})
		if arcana.Code(err) != codes.Unauthenticated {
			t.Errorf("token %q: subscribe error %v, want Unauthenticated", token, err)
		}
		_, err = anon.Mutate(ctx, "create_task", arcana.Params{"project_id": 1, "title": "x"})
		if arcana.Code(err) != codes.Unauthenticated {
			t.Errorf("token %q: mutate error %v, want Unauthenticated", token, err)
		}
		if _, err := anon.Describe(ctx); arcana.Code(err) != codes.Unauthenticated {
			t.Errorf("token %q: describe error %v, want Unauthenticated", token, err)
		}
	}
}

// Reconnect over a cut connection while another session keeps the view
// alive: the missed diffs are replayed (catch-up).
func TestReconnectCatchUp(t *testing.T) {
	p := newProxy(t, serverAddr)
	a := dialAddr(t, p.Addr(), "dev-alice")
	b := dial(t, "dev-alice")
	ctx := ctxT(t, 60*time.Second)
	params := arcana.Params{"project_id": 2}
	va, err := a.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := b.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	oldSession := a.SessionID()
	before := va.State()
	drain(va)

	p.Down()
	waitFor(t, 10*time.Second, func() bool { return a.SessionID() == "" })

	// Written meanwhile, by another client.
	id := createTask(t, b, 2, "written while a was away", nil)
	var n int64
	fmt.Sscan(id, &n)
	if _, err := b.Mutate(ctx, "update_task", arcana.Params{"id": n, "status": "done"}); err != nil {
		t.Fatal(err)
	}
	if hasRef(va.State(), id) {
		t.Fatal("a saw the write while disconnected")
	}

	p.Up()
	u := nextUpdate(t, va, 20*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
	if u.Mode != arcana.SyncCatchUp || u.Frames != 2 {
		t.Errorf("sync mode %v with %d frames, want catch-up with 2", u.Mode, u.Frames)
	}
	st := va.State()
	if st.Epoch != before.Epoch || st.Version != before.Version+2 {
		t.Errorf("after catch-up at %d/%d, want %d/%d", st.Epoch, st.Version, before.Epoch, before.Version+2)
	}
	if !st.Equal(vb.State()) {
		t.Errorf("caught-up state differs from the live one: %s", st.Diff(vb.State()))
	}
	if sid := a.SessionID(); sid == "" || sid == oldSession {
		t.Errorf("session %q after reconnect (was %q)", sid, oldSession)
	}
	// The new session is live: a write after the reconnect arrives as a diff.
	deleteTask(t, b, id)
	if _, err := va.WaitFor(ctx, func(s *arcana.State) bool { return !hasRef(s, id) }); err != nil {
		t.Fatal(err)
	}
}

// The diffs a catch-up replays are queued together, so they arrive as one
// FrameBatch message: every frame is applied, in order, the view's state
// moves to the last version at once, and it equals a fresh snapshot.
func TestReconnectCatchUpBatch(t *testing.T) {
	p := newProxy(t, serverAddr)
	a := dialAddr(t, p.Addr(), "dev-alice")
	b := dial(t, "dev-alice")
	ctx := ctxT(t, 60*time.Second)
	params := arcana.Params{"project_id": 2}
	va, err := a.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	// b keeps the view, and its history, alive while a is away.
	vb, err := b.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	id := createTask(t, b, 2, "batched 0", nil)
	defer deleteTask(t, b, id)
	var n int64
	fmt.Sscan(id, &n)
	before, err := va.WaitFor(ctx, func(s *arcana.State) bool { return hasRef(s, id) })
	if err != nil {
		t.Fatal(err)
	}
	batches := arcana.Batches(a)

	p.Down()
	waitFor(t, 10*time.Second, func() bool { return a.SessionID() == "" })
	drain(va)
	const writes = 4
	for i := 1; i <= writes; i++ {
		status := []string{"todo", "doing"}[i%2]
		if _, err := b.Mutate(ctx, "update_task", arcana.Params{"id": n, "title": fmt.Sprintf("batched %d", i), "status": status}); err != nil {
			t.Fatal(err)
		}
	}
	target := vb.State()
	missed := target.Version - before.Version
	if missed < 2 {
		t.Fatalf("the writes made %d versions; a batch needs 2 or more", missed)
	}

	p.Up()
	// One diff update per replayed frame, in order, then the sync.
	for i := uint64(1); i <= missed; i++ {
		u := nextUpdate(t, va, 20*time.Second, func(u arcana.Update) bool { return true })
		if u.Kind != arcana.UpdateDiff || u.State.Version != before.Version+i {
			t.Fatalf("update %d: %v at version %d, want a diff to %d", i, u.Kind, u.State.Version, before.Version+i)
		}
		// The updates follow the whole batch: the view is already at its end.
		if got := va.State().Version; got != target.Version {
			t.Errorf("while reading update %d the view is at %d, want %d", i, got, target.Version)
		}
	}
	u := nextUpdate(t, va, 20*time.Second, func(u arcana.Update) bool { return true })
	if u.Kind != arcana.UpdateSynced || u.Mode != arcana.SyncCatchUp || uint64(u.Frames) != missed {
		t.Errorf("got %v (mode %v, %d frames), want synced by catch-up of %d", u.Kind, u.Mode, u.Frames, missed)
	}
	if got := arcana.Batches(a) - batches; got != 1 {
		t.Errorf("%d batch messages during the catch-up, want 1", got)
	}
	st := va.State()
	if st.Epoch != before.Epoch || st.Version != target.Version || title(st, id) != fmt.Sprintf("batched %d", writes) {
		t.Errorf("after catch-up at %d/%d with title %q", st.Epoch, st.Version, title(st, id))
	}
	if want := fresh(t, "dev-alice", "project_tasks", params); !st.Equal(want) {
		t.Errorf("state after a batched catch-up differs from a fresh snapshot: %s", st.Diff(want))
	}
}

// Reconnect when no one held the view meanwhile: the server starts a new
// epoch and the client gets a snapshot.
func TestReconnectSnapshot(t *testing.T) {
	p := newProxy(t, serverAddr)
	a := dialAddr(t, p.Addr(), "dev-alice")
	b := dial(t, "dev-alice")
	ctx := ctxT(t, 60*time.Second)
	params := arcana.Params{"project_id": 2, "status": "todo"}
	va, err := a.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	before := va.State()
	drain(va)
	p.Down()
	waitFor(t, 10*time.Second, func() bool { return a.SessionID() == "" })
	id := createTask(t, b, 2, "written while no one watched", "bob")
	defer deleteTask(t, b, id)
	p.Up()
	u := nextUpdate(t, va, 20*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
	if u.Mode != arcana.SyncSnapshot {
		t.Errorf("sync mode %v, want snapshot", u.Mode)
	}
	st := va.State()
	if st.Epoch == before.Epoch {
		t.Errorf("epoch unchanged; expected the view to have been recreated")
	}
	if !hasRef(st, id) {
		t.Errorf("the write made while away is missing: %v", refIDs(st))
	}
	if want := fresh(t, "dev-alice", "project_tasks", params); !st.Equal(want) {
		t.Errorf("synced state differs from a fresh snapshot: %s", st.Diff(want))
	}
}

// ResetSession restarts the stream; nothing changed, so the view is current.
func TestResetSessionCurrent(t *testing.T) {
	a := dial(t, "dev-alice")
	b := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	va, err := a.Subscribe(ctx, "projects", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscribe(ctx, "projects", nil); err != nil {
		t.Fatal(err)
	}
	old := a.SessionID()
	before := va.State()
	drain(va)
	a.ResetSession()
	u := nextUpdate(t, va, 20*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
	if u.Mode != arcana.SyncCurrent {
		t.Errorf("mode %v, want current", u.Mode)
	}
	if va.State() != before {
		t.Errorf("state replaced although nothing changed")
	}
	if a.SessionID() == old {
		t.Errorf("session id unchanged after reset")
	}
	if len(before.Refs) != 2 {
		t.Errorf("acme has 2 projects, view has %d", len(before.Refs))
	}
}

// A random run of mutations: after each, the state built from the stream of
// diffs equals the snapshot a fresh subscription gets.
func TestStreamEqualsFreshSnapshot(t *testing.T) {
	a := dial(t, "dev-alice")
	w := dial(t, "dev-alice")
	ctx := ctxT(t, 3*time.Minute)
	views := []arcana.Params{
		{"project_id": 2, "limit": 4},
		{"project_id": 2, "status": "todo"},
		{"project_id": 2},
	}
	var live []*arcana.View
	for _, p := range views {
		v, err := a.Subscribe(ctx, "project_tasks", p)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, v)
	}
	rng := rand.New(rand.NewPCG(7, 11))
	var mine []int64
	defer func() {
		for _, id := range mine {
			w.Mutate(ctx, "delete_task", arcana.Params{"id": id})
		}
	}()
	users := []any{nil, "alice", "bob"}
	statuses := []string{"todo", "doing", "done"}
	for step := 0; step < 24; step++ {
		var desc string
		switch op := rng.IntN(5); {
		case op == 0 || len(mine) < 2:
			res, err := w.Mutate(ctx, "create_task", arcana.Params{
				"project_id": 2, "title": fmt.Sprintf("step %d", step), "assignee_id": users[rng.IntN(3)],
			})
			if err != nil {
				t.Fatal(err)
			}
			id, _ := res.Int("id")
			mine = append(mine, id)
			desc = fmt.Sprintf("create %d", id)
		case op == 1:
			id := mine[rng.IntN(len(mine))]
			s := statuses[rng.IntN(3)]
			if _, err := w.Mutate(ctx, "update_task", arcana.Params{"id": id, "status": s, "title": fmt.Sprintf("t%d", step)}); err != nil {
				t.Fatal(err)
			}
			desc = fmt.Sprintf("update %d -> %s", id, s)
		case op == 2 || op == 3:
			id := mine[rng.IntN(len(mine))]
			pos := rng.IntN(8)
			if _, err := w.Mutate(ctx, "move_task", arcana.Params{"id": id, "position": pos}); err != nil {
				t.Fatal(err)
			}
			desc = fmt.Sprintf("move %d to %d", id, pos)
		default:
			i := rng.IntN(len(mine))
			if _, err := w.Mutate(ctx, "delete_task", arcana.Params{"id": mine[i]}); err != nil {
				t.Fatal(err)
			}
			desc = fmt.Sprintf("delete %d", mine[i])
			mine = slices.Delete(mine, i, i+1)
		}
		for i, p := range views {
			want := fresh(t, "dev-alice", "project_tasks", p)
			// w's Mutate returned after a's frames were queued, not read:
			// wait until a has applied the version the fresh snapshot has.
			got, err := live[i].WaitFor(ctxT(t, 10*time.Second), func(s *arcana.State) bool {
				return s.Epoch != want.Epoch || s.Version >= want.Version
			})
			if err != nil {
				t.Fatalf("step %d (%s), view %v: stuck at version %d, fresh is at %d", step, desc, p, got.Version, want.Version)
			}
			if got.Epoch != want.Epoch || got.Version != want.Version {
				t.Fatalf("step %d (%s), view %v: at %d/%d, fresh at %d/%d", step, desc, p, got.Epoch, got.Version, want.Epoch, want.Version)
			}
			if !got.Equal(want) {
				t.Fatalf("step %d (%s), view %v: applied stream differs from the snapshot: %s", step, desc, p, got.Diff(want))
			}
		}
	}
}

// A service token and Notify: a direct database write, then Notify, reaches
// a service's subscription, and the old title comes back the same way.
func TestNotifyFromService(t *testing.T) {
	psql := psqlPath(t)
	svc := dial(t, "dev-service")
	ctx := ctxT(t, 30*time.Second)
	v, err := svc.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 2})
	if err != nil {
		t.Fatal(err)
	}
	old := title(v.State(), "5")
	newTitle := "Rotate the keys (notified)"
	sql := fmt.Sprintf("UPDATE tasks SET title = '%s' WHERE id = 5", newTitle)
	if out, err := exec.Command(psql, postgresURL, "-c", sql).CombinedOutput(); err != nil {
		t.Fatalf("psql: %v: %s", err, out)
	}
	defer func() {
		exec.Command(psql, postgresURL, "-c", fmt.Sprintf("UPDATE tasks SET title = '%s' WHERE id = 5", old)).Run()
		if err := svc.Notify(ctx, arcana.Change{Table: "tasks", ID: "5", Columns: []string{"title"}}); err != nil {
			t.Errorf("notify (restore): %v", err)
		}
		if _, err := v.WaitFor(ctx, func(s *arcana.State) bool { return title(s, "5") == old }); err != nil {
			t.Errorf("the restored title never arrived: %v", err)
		}
	}()
	// The server may also see the write on its own (WAL or trigger change
	// detection); Notify is what a service does when it cannot rely on that.
	if err := svc.Notify(ctx, arcana.Change{Table: "tasks", ID: "5", Columns: []string{"title"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitFor(ctx, func(s *arcana.State) bool { return title(s, "5") == newTitle }); err != nil {
		t.Fatalf("the notified change never arrived: %v (title %q)", err, title(v.State(), "5"))
	}
	if st, err := svc.Stats(ctx); err != nil || st.GetSessions() == 0 {
		t.Errorf("stats with arcana:admin: %v %v", st, err)
	}
}

func TestPerUserViewsAndDescribe(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	alice := dial(t, "dev-alice")
	bob := dial(t, "dev-bob")
	va, err := alice.Subscribe(ctx, "my_tasks", nil)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := bob.Subscribe(ctx, "my_tasks", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Seed data: alice has task 1 open (task 4 is done); bob has 2, 5, 6.
	if got := refIDs(va.State()); !slices.Equal(got, []string{"1"}) {
		t.Errorf("alice's open tasks %v", got)
	}
	for _, id := range []string{"2", "5", "6"} {
		if !hasRef(vb.State(), id) {
			t.Errorf("bob's open tasks %v lack %s", refIDs(vb.State()), id)
		}
	}
	d, err := alice.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range d.GetGraphs() {
		names = append(names, g.GetName())
	}
	for _, want := range []string{"project_tasks", "projects", "my_tasks"} {
		if !slices.Contains(names, want) {
			t.Errorf("describe lacks graph %s: %v", want, names)
		}
	}
	if d.GetProtocolVersion() == 0 {
		t.Errorf("protocol version 0")
	}
	_ = pb.PatchOp_PATCH_OP_MOVE
}

func TestViewCloseAndClientClose(t *testing.T) {
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	v1, err := c.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := c.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	if v1.ID() != v2.ID() {
		t.Errorf("same graph and params, different view ids %s %s", v1.ID(), v2.ID())
	}
	v1.Close()
	if _, ok := <-v1.Updates(); ok {
		// drain one buffered update, then the channel must be closed
		for range v1.Updates() {
		}
	}
	if v1.Err() != nil {
		t.Errorf("closed view error %v", v1.Err())
	}
	// v2 is still live after v1 closed.
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if v2.State() == nil {
		t.Fatal("v2 lost its state")
	}
	select {
	case <-v2.Done():
		t.Fatal("closing one handle stopped the other")
	default:
	}
	c.Close()
	<-v2.Done()
	if !errors.Is(v2.Err(), arcana.ErrClosed) {
		t.Errorf("view error after client close: %v", v2.Err())
	}
	if _, err := c.Subscribe(ctx, "projects", nil); !errors.Is(err, arcana.ErrClosed) {
		t.Errorf("subscribe after close: %v", err)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
