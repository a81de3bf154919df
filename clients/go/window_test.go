package arcana_test

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	arcana "github.com/arcana-sync/arcana/clients/go"
)

// The windowed tests read project bigProject of the demo, seeded once with
// bigRows tasks through `task_window` (ordered by position, then id).
const (
	bigProject = 200
	bigRows    = 10_000
)

var (
	seedOnce  sync.Once
	seedErr   error
	bigOrder  []string // task ids in list order
	bigParams = arcana.Params{"project_id": bigProject}
)

// seedBig inserts the big project's tasks (positions repeat every 1000
// rows, so ties are broken by id) and reads back their order.
func seedBig(t *testing.T) {
	t.Helper()
	psql := psqlPath(t)
	seedOnce.Do(func() {
		sql := fmt.Sprintf(`INSERT INTO projects (id, workspace_id, name, owner_id) VALUES (%[1]d, 'acme', 'Big list', 'alice');
INSERT INTO tasks (workspace_id, project_id, title, position)
  SELECT 'acme', %[1]d, 'Task ' || i, i %% 1000 FROM generate_series(1, %[2]d) AS i;`, bigProject, bigRows)
		if out, err := exec.Command(psql, postgresURL, "-v", "ON_ERROR_STOP=1", "-c", sql).CombinedOutput(); err != nil {
			seedErr = fmt.Errorf("psql: %v: %s", err, out)
			return
		}
		out, err := exec.Command(psql, postgresURL, "-At", "-c",
			fmt.Sprintf("SELECT id FROM tasks WHERE project_id = %d ORDER BY position, id", bigProject)).Output()
		if err != nil {
			seedErr = fmt.Errorf("psql: %v", err)
			return
		}
		bigOrder = strings.Fields(string(out))
	})
	if seedErr != nil {
		t.Fatal(seedErr)
	}
}

// want is the ids a window from index from (inclusive) to to (exclusive) shows.
func want(from, to int) []string { return bigOrder[max(from, 0):min(to, bigRows)] }

func expectRows(t *testing.T, v *arcana.View, from, to int, what string) {
	t.Helper()
	if got, w := refIDs(v.State()), want(from, to); !slices.Equal(got, w) {
		t.Fatalf("%s: window shows %d rows %v..., want rows %d..%d %v...", what, len(got), head(got), from, to, head(w))
	}
}

func head(ids []string) []string { return ids[:min(len(ids), 5)] }

func TestAWindowShowsItsRowsInOrderWithItsEdges(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	first, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 20})
	if err != nil {
		t.Fatal(err)
	}
	expectRows(t, first, 0, 20, "first rows")
	if first.HasBefore() || !first.HasAfter() {
		t.Fatalf("edges of the first rows: before %v, after %v", first.HasBefore(), first.HasAfter())
	}
	last, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 20, Direction: arcana.Before})
	if err != nil {
		t.Fatal(err)
	}
	expectRows(t, last, bigRows-20, bigRows, "last rows")
	if !last.HasBefore() || last.HasAfter() {
		t.Fatalf("edges of the last rows: before %v, after %v", last.HasBefore(), last.HasAfter())
	}
	// The zero Window is the graph's default one (50 rows from the start);
	// a move keeps its limit.
	plain, err := c.Window(ctx, "task_window", bigParams, arcana.Window{})
	if err != nil {
		t.Fatal(err)
	}
	expectRows(t, plain, 0, 50, "default window")
	cur, _ := plain.CursorAt(ctx, nil, 49)
	if err := plain.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, plain, 50, 100, "moved from the default window")
	if _, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Cursor: cur}); arcana.Code(err) != codes.InvalidArgument {
		t.Fatalf("a cursor without a limit: %v", err)
	}
}

func TestReanchorMovesTheWindowInPlaceAndItStaysLive(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	w, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 20})
	if err != nil {
		t.Fatal(err)
	}
	id := w.ID()
	cur, err := w.CursorAt(ctx, nil, 19)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 20, 40, "after reanchor")
	if w.ID() != id || !w.HasBefore() || w.Window().GetLimit() != 20 {
		t.Fatalf("id %s (was %s), has before %v, limit %d", w.ID(), id, w.HasBefore(), w.Window().GetLimit())
	}
	cur, _ = w.CursorAt(ctx, nil, 10)
	if err := w.Reanchor(ctx, arcana.Window{Limit: 10, Cursor: cur, Direction: arcana.Around}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 25, 35, "around row 30")
	// A refused move (a cursor of the wrong length) leaves the window where it was.
	if err := w.Reanchor(ctx, arcana.Window{Cursor: []any{1}}); arcana.Code(err) != codes.InvalidArgument {
		t.Fatalf("a one-value cursor: %v", err)
	}
	expectRows(t, w, 25, 35, "after a refused move")
	var target int64
	fmt.Sscan(bigOrder[28], &target)
	if _, err := c.Mutate(ctx, "update_task", arcana.Params{"id": target, "title": "Renamed in the window"}); err != nil {
		t.Fatal(err)
	}
	if got := title(w.State(), bigOrder[28]); got != "Renamed in the window" {
		t.Fatalf("title in the window: %q", got)
	}
	// Moves go on after the refused one; an Around window grows from its first row.
	if err := w.LoadMore(ctx, 1); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 25, 36, "load more after a refused move")
}

func TestLoadMoreAndLoadPreviousGrowTheWindowAndSlidePastTheLargest(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 60*time.Second)
	w, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.LoadMore(ctx, 15); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 0, 25, "load more")
	cur, _ := w.CursorAt(ctx, nil, 20)
	if err := w.Reanchor(ctx, arcana.Window{Limit: 10, Cursor: cur, Inclusive: true}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 20, 30, "reanchor at row 20")
	if err := w.LoadPrevious(ctx, 5); err != nil {
		t.Fatal(err)
	}
	expectRows(t, w, 15, 30, "load previous")
	// The demo's largest window is 5000 rows.
	big, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 4995})
	if err != nil {
		t.Fatal(err)
	}
	expectRows(t, big, 0, 4995, "big window")
	if err := big.LoadMore(ctx, 10); err != nil {
		t.Fatal(err)
	}
	expectRows(t, big, 5, 5005, "slid forward by what did not fit")
	if err := big.LoadPrevious(ctx, 3); err != nil {
		t.Fatal(err)
	}
	expectRows(t, big, 2, 5002, "slid back")
}

func TestOfTwoHandlesSharingAWindowTheMoverSubscribesAnew(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	a, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() {
		t.Fatalf("equal windows got two views: %s, %s", a.ID(), b.ID())
	}
	drain(b)
	cur, _ := b.CursorAt(ctx, nil, 9)
	if err := b.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, b, 10, 20, "the handle that moved")
	expectRows(t, a, 0, 10, "the other handle")
	if a.ID() == b.ID() {
		t.Fatal("the handles still share a view")
	}
	// Its updates say so (after any the shared view sent before the move).
	nextUpdate(t, b, 5*time.Second, func(u arcana.Update) bool {
		return u.Kind == arcana.UpdateSnapshot && slices.Equal(refIDs(u.State), want(10, 20))
	})
	// Both stay live.
	for _, row := range []int{3, 13} {
		var id int64
		fmt.Sscan(bigOrder[row], &id)
		if _, err := c.Mutate(ctx, "update_task", arcana.Params{"id": id, "title": fmt.Sprintf("Seen %d", row)}); err != nil {
			t.Fatal(err)
		}
	}
	if title(a.State(), bigOrder[3]) != "Seen 3" || title(b.State(), bigOrder[13]) != "Seen 13" {
		t.Fatal("a write did not reach a window")
	}
	a.Close()
	// Alone now, b moves in place.
	id := b.ID()
	cur, _ = b.CursorAt(ctx, nil, 9)
	if err := b.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	expectRows(t, b, 20, 30, "moved alone")
	if b.ID() != id {
		t.Fatalf("a sole holder's view id changed: %s -> %s", id, b.ID())
	}
}

func TestAMovedWindowComesBackAfterAReconnect(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	w, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := w.CursorAt(ctx, nil, 9)
	if err := w.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	// Another client holds the same window, so the server keeps its view
	// (and history) while this one reconnects.
	keeper, err := dial(t, "dev-alice").Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10, Cursor: cur})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(refIDs(keeper.State()), want(10, 20)) {
		t.Fatalf("the keeper shows %v", head(refIDs(keeper.State())))
	}
	drain(w)
	c.ResetSession()
	u := nextUpdate(t, w, 20*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
	if !slices.Equal(refIDs(u.State), want(10, 20)) {
		t.Fatalf("after the sync the window shows %v, want %v", head(refIDs(u.State)), head(want(10, 20)))
	}
	if u.Mode != arcana.SyncCurrent && u.Mode != arcana.SyncCatchUp {
		t.Fatalf("sync mode %v: the window the client held was not the one it named", u.Mode)
	}
	// The synced window is live: the server may know it by another id now.
	var id int64
	fmt.Sscan(bigOrder[14], &id)
	if _, err := c.Mutate(ctx, "update_task", arcana.Params{"id": id, "title": "Live after the sync"}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WaitFor(ctxT(t, 10*time.Second), func(s *arcana.State) bool {
		return title(s, bigOrder[14]) == "Live after the sync"
	}); err != nil {
		t.Fatalf("a write after the sync did not reach the window (view %s): %v", w.ID(), err)
	}
}

func TestAWindowMovedInPlaceDoesNotKeepOthersFromTheWindowItLeft(t *testing.T) {
	seedBig(t)
	c := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	a, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	id := a.ID()
	cur, _ := a.CursorAt(ctx, nil, 9)
	if err := a.Reanchor(ctx, arcana.Window{Cursor: cur}); err != nil {
		t.Fatal(err)
	}
	if a.ID() != id {
		t.Fatalf("not moved in place: %s -> %s", id, a.ID())
	}
	// The server knows the moved subscription by the id of the window it
	// left; opening that window again must still work.
	b, err := c.Window(ctx, "task_window", bigParams, arcana.Window{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	expectRows(t, b, 0, 10, "the window left")
	expectRows(t, a, 10, 20, "the moved window")
	for _, row := range []int{5, 15} {
		var tid int64
		fmt.Sscan(bigOrder[row], &tid)
		if _, err := c.Mutate(ctx, "update_task", arcana.Params{"id": tid, "title": fmt.Sprintf("Live %d", row)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.WaitFor(ctx, func(s *arcana.State) bool { return title(s, bigOrder[15]) == "Live 15" }); err != nil {
		t.Fatalf("the moved window stopped: %v", err)
	}
	if title(b.State(), bigOrder[5]) != "Live 5" {
		t.Fatal("the reopened window is not live")
	}
}

func TestASnapshotInPartsIsAppliedWholeOnce(t *testing.T) {
	seedBig(t)
	psql := psqlPath(t)
	// 5000 tasks with 200-character titles: more than the server's 1 MiB part.
	sql := `INSERT INTO projects (id, workspace_id, name, owner_id) VALUES (201, 'acme', 'Wide', 'alice');
INSERT INTO tasks (workspace_id, project_id, title, position)
  SELECT 'acme', 201, rpad('Wide ' || i, 200, '.'), i FROM generate_series(1, 5000) AS i;`
	if out, err := exec.Command(psql, postgresURL, "-v", "ON_ERROR_STOP=1", "-c", sql).CombinedOutput(); err != nil {
		t.Fatalf("psql: %v: %s", err, out)
	}
	out, err := exec.Command(psql, postgresURL, "-At", "-c", "SELECT id FROM tasks WHERE project_id = 201 ORDER BY position, id").Output()
	if err != nil {
		t.Fatal(err)
	}
	wantIDs := strings.Fields(string(out))
	c := dial(t, "dev-alice")
	w, err := c.Window(ctxT(t, 60*time.Second), "task_window", arcana.Params{"project_id": 201}, arcana.Window{Limit: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if got := refIDs(w.State()); !slices.Equal(got, wantIDs) {
		t.Fatalf("the window shows %d rows %v..., want %d", len(got), head(got), len(wantIDs))
	}
	// The first update is the whole snapshot; no part came as a state of its own.
	u := nextUpdate(t, w, time.Second, func(arcana.Update) bool { return true })
	if u.Kind != arcana.UpdateSnapshot || len(u.State.Refs) != 5000 {
		t.Fatalf("first update: %v with %d refs", u.Kind, len(u.State.Refs))
	}
	select {
	case u := <-w.Updates():
		if u.Kind == arcana.UpdateSnapshot {
			t.Fatalf("a second snapshot update (%d refs): parts were applied one by one", len(u.State.Refs))
		}
	default:
	}
}
