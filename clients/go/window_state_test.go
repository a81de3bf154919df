package arcana

import (
	"io"
	"log/slog"
	"slices"
	"testing"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

func partFrame(view string, epoch, version uint64, more bool, ids ...string) *pb.ViewFrame {
	snap := &pb.Snapshot{Refs: refs(ids...), More: more}
	for _, id := range ids {
		snap.Rows = append(snap.Rows, &pb.Row{Table: "t", Id: id, Fields: map[string]*pb.Value{"pos": intValue(int64(len(id)))}})
	}
	return &pb.ViewFrame{ViewId: view, Epoch: epoch, Version: version, Body: &pb.ViewFrame_Snapshot{Snapshot: snap}}
}

func TestSnapshotPartsAreJoinedOnlyOnceTheLastIsIn(t *testing.T) {
	var p snapshotParts
	if p.push(partFrame("g/1", 5, 9, true, "a", "b")) != nil {
		t.Fatal("a part with more was passed on")
	}
	mid := partFrame("g/1", 5, 9, true, "c")
	total := int64(4)
	mid.GetSnapshot().Total = &total
	if p.push(mid) != nil {
		t.Fatal("a middle part was passed on")
	}
	last := partFrame("g/1", 5, 9, false, "d")
	last.GetSnapshot().Window = &pb.WindowEdges{HasAfter: true}
	whole := p.push(last)
	if whole == nil {
		t.Fatal("the last part did not complete the snapshot")
	}
	st := stateFromSnapshot(whole, whole.GetSnapshot())
	if got := ids(st.Refs); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("refs %v", got)
	}
	if len(st.Rows) != 4 || st.Total == nil || *st.Total != 4 || !st.HasAfter || st.HasBefore {
		t.Fatalf("rows %d, total %v, edges %v/%v", len(st.Rows), st.Total, st.HasBefore, st.HasAfter)
	}
	if len(p.pending) != 0 {
		t.Fatal("parts kept after the snapshot was joined")
	}
}

func TestSnapshotPartsOfAnAbandonedSnapshotAreDropped(t *testing.T) {
	var p snapshotParts
	p.push(partFrame("g/1", 5, 9, true, "a"))
	// A newer version starts over.
	p.push(partFrame("g/1", 5, 10, true, "x"))
	other := partFrame("g/2", 1, 1, false, "z")
	if p.push(other) != other {
		t.Fatal("another view's frame was held")
	}
	whole := p.push(partFrame("g/1", 5, 10, false, "y"))
	if got := ids(whole.GetSnapshot().GetRefs()); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("refs %v", got)
	}
	p.push(partFrame("g/1", 5, 11, true, "a"))
	diff := &pb.ViewFrame{ViewId: "g/1", Epoch: 5, Version: 12, PrevVersion: 11, Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{}}}
	if p.push(diff) != diff || len(p.pending) != 0 {
		t.Fatal("a diff did not end the parts before it")
	}
}

func TestADiffAppliesOnPrevEpochWhenSet(t *testing.T) {
	st := &State{Epoch: 5, Version: 9}
	move := &pb.ViewFrame{Epoch: 8, Version: 2, PrevVersion: 9, PrevEpoch: 5}
	if !st.continues(move) {
		t.Fatal("a re-anchor diff from epoch 5 does not continue a state of epoch 5")
	}
	if st.continues(&pb.ViewFrame{Epoch: 8, Version: 2, PrevVersion: 9}) {
		t.Fatal("a diff of another epoch without prev_epoch continues")
	}
	if st.continues(&pb.ViewFrame{Epoch: 8, Version: 2, PrevVersion: 9, PrevEpoch: 4}) {
		t.Fatal("a diff from another life continues")
	}
	if !st.continues(&pb.ViewFrame{Epoch: 5, Version: 10, PrevVersion: 9}) {
		t.Fatal("a plain diff does not continue")
	}
}

// frameClient is a client with no connection, for driving onFrames by hand.
func frameClient(vs *viewState) (*Client, *View) {
	c := &Client{views: map[string]*viewState{vs.id(): vs}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), o: options{updateBuf: 16}}
	h := &View{c: c, updates: make(chan Update, 16), done: make(chan struct{})}
	h.cur.Store(vs)
	vs.handles[h] = struct{}{}
	return c, h
}

func TestAReanchoredViewTakesItsWindowWhenItReachesTheReplysPosition(t *testing.T) {
	w1 := &pb.Window{Limit: 2}
	w2 := &pb.Window{Limit: 2, Cursor: []*pb.Value{intValue(2)}}
	moveDiff := &pb.ViewFrame{ViewId: "g/1", Epoch: 7, Version: 1, PrevVersion: 3, PrevEpoch: 5, Body: &pb.ViewFrame_Diff{Diff: &pb.ViewDiff{
		Refs: []*pb.RefOp{
			op(pb.PatchOp_PATCH_OP_REMOVE, "/0", "", ""),
			op(pb.PatchOp_PATCH_OP_REMOVE, "/0", "", ""),
			op(pb.PatchOp_PATCH_OP_ADD, "/-", "", "c"),
			op(pb.PatchOp_PATCH_OP_ADD, "/-", "", "d"),
		},
		Rows:   []*pb.Row{{Table: "t", Id: "c"}, {Table: "t", Id: "d"}},
		Window: &pb.WindowEdges{HasBefore: true},
	}}}
	for _, replyFirst := range []bool{true, false} {
		vs := newViewState("g/1", "g", nil, 5)
		vs.window = w1
		c, h := frameClient(vs)
		c.onFrames(nil, []*pb.ViewFrame{partFrame("g/1", 5, 3, false, "a", "b")})
		m := &moving{window: w2, done: make(chan struct{})}
		vs.moving = m
		reply := func() {
			c.mu.Lock()
			m.replied, m.epoch, m.version = true, 7, 1
			vs.arrivedLocked(false)
			c.mu.Unlock()
		}
		if replyFirst {
			reply()
			if h.Window() != w1 {
				t.Fatal("the window moved before its diff was applied")
			}
			c.onFrames(nil, []*pb.ViewFrame{moveDiff})
		} else {
			c.onFrames(nil, []*pb.ViewFrame{moveDiff})
			if h.Window() != w1 {
				t.Fatal("the window moved before the reply named its position")
			}
			reply()
		}
		select {
		case <-m.done:
		default:
			t.Fatalf("reply first %v: the move did not end", replyFirst)
		}
		st := h.State()
		if h.Window() != w2 || !slices.Equal(ids(st.Refs), []string{"c", "d"}) || !h.HasBefore() || h.HasAfter() {
			t.Fatalf("reply first %v: window %v, refs %v, edges %v/%v", replyFirst, h.Window(), ids(st.Refs), h.HasBefore(), h.HasAfter())
		}
		if st.Epoch != 7 || st.Version != 1 {
			t.Fatalf("at %d/%d", st.Epoch, st.Version)
		}
	}
}
