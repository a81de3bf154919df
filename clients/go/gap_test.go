package arcana_test

import (
	"fmt"
	"testing"
	"time"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// A client that missed a diff on a live session notices the gap on the next
// one and syncs: the missed diffs are replayed, and it ends equal to a fresh
// snapshot.
func TestGapOnLiveSessionCatchesUp(t *testing.T) {
	a := dial(t, "dev-alice")
	w := dial(t, "dev-alice")
	ctx := ctxT(t, 60*time.Second)
	params := arcana.Params{"project_id": 2}
	v, err := a.Subscribe(ctx, "project_tasks", params)
	if err != nil {
		t.Fatal(err)
	}
	s1 := v.State()
	id := createTask(t, w, 2, "gap one", nil)
	defer deleteTask(t, w, id)
	s2, err := v.WaitFor(ctx, func(s *arcana.State) bool { return s.Version > s1.Version })
	if err != nil {
		t.Fatal(err)
	}
	// Roll the client back to s1, as if the diff to s2 had been lost.
	arcana.InjectFrame(a, arcana.SnapshotFrame(s1))
	if got := v.State(); got.Version != s1.Version || hasRef(got, id) {
		t.Fatalf("rollback did not take: version %d", got.Version)
	}
	drain(v)
	var n int64
	fmt.Sscan(id, &n)
	if _, err := w.Mutate(ctx, "update_task", arcana.Params{"id": n, "title": "gap two"}); err != nil {
		t.Fatal(err)
	}
	u := nextUpdate(t, v, 20*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
	if u.Mode != arcana.SyncCatchUp {
		t.Errorf("mode %v, want catch-up", u.Mode)
	}
	st := v.State()
	if st.Version != s2.Version+1 || title(st, id) != "gap two" {
		t.Errorf("after the gap: version %d (want %d), title %q", st.Version, s2.Version+1, title(st, id))
	}
	if want := fresh(t, "dev-alice", "project_tasks", params); !st.Equal(want) {
		t.Errorf("state after gap resync differs from a fresh snapshot: %s", st.Diff(want))
	}
}

// Frames that do not fit (a gap, another epoch, a patch that cannot apply)
// are never applied; the client asks the server and stays at the last good state.
func TestBadFramesAreNotApplied(t *testing.T) {
	a := dial(t, "dev-alice")
	ctx := ctxT(t, 30*time.Second)
	v, err := a.Subscribe(ctx, "project_tasks", arcana.Params{"project_id": 1})
	if err != nil {
		t.Fatal(err)
	}
	st := v.State()
	bad := []*pb.ViewFrame{
		{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version + 5, PrevVersion: st.Version + 4,
			Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{}}},
		{ViewId: st.ViewID, Epoch: st.Epoch + 1, Version: st.Version + 1, PrevVersion: st.Version,
			Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{}}},
		{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version + 1, PrevVersion: st.Version,
			Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{Refs: []*pb.RefOp{{Op: pb.PatchOp_PATCH_OP_REMOVE, Path: "/99"}}}}},
		{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version + 1, PrevVersion: st.Version,
			Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{Patches: []*pb.RowPatch{{Table: "tasks", Id: "1",
				Ops: []*pb.FieldOp{{Op: pb.PatchOp_PATCH_OP_REPLACE, Path: "/no_such_field", Value: arcana.Null}}}}}}},
	}
	for i, f := range bad {
		drain(v)
		arcana.InjectFrame(a, f)
		u := nextUpdate(t, v, 10*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateSynced })
		if u.Mode != arcana.SyncCurrent {
			t.Errorf("frame %d: sync mode %v, want current", i, u.Mode)
		}
		if v.State() != st {
			t.Errorf("frame %d changed the state", i)
		}
	}
	// A stale duplicate is ignored without a resync.
	drain(v)
	arcana.InjectFrame(a, &pb.ViewFrame{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version, PrevVersion: st.Version - 1,
		Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{Refs: []*pb.RefOp{{Op: pb.PatchOp_PATCH_OP_REMOVE, Path: "/0"}}}}})
	if _, err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-v.Updates():
		t.Errorf("a stale frame caused an update: %v", u.Kind)
	case <-time.After(200 * time.Millisecond):
	}
	// An error frame keeps the state and reports the error.
	arcana.InjectFrame(a, &pb.ViewFrame{ViewId: st.ViewID, Epoch: st.Epoch, Version: st.Version,
		Body: &pb.ViewFrame_Error{Error: &pb.ViewError{Code: 14, Message: "database unavailable"}}})
	u := nextUpdate(t, v, 5*time.Second, func(u arcana.Update) bool { return u.Kind == arcana.UpdateError })
	if u.Err == nil || arcana.Code(u.Err) != 14 || u.State != st || v.State() != st {
		t.Errorf("error update %+v", u)
	}
}
