package arcana

import (
	"slices"
	"testing"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

func refs(ids ...string) []*pb.Ref {
	out := make([]*pb.Ref, len(ids))
	for i, id := range ids {
		out[i] = &pb.Ref{Table: "t", Id: id}
	}
	return out
}

func ids(rs []*pb.Ref) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.GetId()
	}
	return out
}

func op(kind pb.PatchOp, path, from string, id string) *pb.RefOp {
	o := &pb.RefOp{Op: kind, Path: path, From: from}
	if id != "" {
		o.Value = &pb.Ref{Table: "t", Id: id}
	}
	return o
}

func TestApplyRefOps(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		ops  []*pb.RefOp
		want []string
	}{
		{"move to the end is remove then insert", []string{"a", "b", "c", "d"},
			[]*pb.RefOp{op(pb.PatchOp_PATCH_OP_MOVE, "/3", "/0", "")}, []string{"b", "c", "d", "a"}},
		{"move forward", []string{"a", "b", "c", "d"},
			[]*pb.RefOp{op(pb.PatchOp_PATCH_OP_MOVE, "/2", "/0", "")}, []string{"b", "c", "a", "d"}},
		{"move back", []string{"a", "b", "c", "d"},
			[]*pb.RefOp{op(pb.PatchOp_PATCH_OP_MOVE, "/0", "/3", "")}, []string{"d", "a", "b", "c"}},
		{"sequential", []string{"a", "b", "c", "d", "e"}, []*pb.RefOp{
			op(pb.PatchOp_PATCH_OP_REMOVE, "/3", "", ""),
			op(pb.PatchOp_PATCH_OP_REMOVE, "/0", "", ""),
			op(pb.PatchOp_PATCH_OP_MOVE, "/0", "/2", ""),
			op(pb.PatchOp_PATCH_OP_ADD, "/1", "", "x"),
			op(pb.PatchOp_PATCH_OP_MOVE, "/3", "/2", ""),
			op(pb.PatchOp_PATCH_OP_ADD, "/-", "", "y"),
			op(pb.PatchOp_PATCH_OP_REPLACE, "/0", "", "e"),
		}, []string{"e", "x", "c", "b", "y"}},
	}
	for _, tc := range cases {
		in := refs(tc.in...)
		orig := slices.Clone(in)
		got, err := applyRefOps(slices.Clone(in), tc.ops)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, ids(got), tc.want)
		}
		if !slices.Equal(ids(in), ids(orig)) {
			t.Errorf("%s: input changed", tc.name)
		}
	}
	for _, bad := range [][]*pb.RefOp{
		{op(pb.PatchOp_PATCH_OP_REMOVE, "/2", "", "")},
		{op(pb.PatchOp_PATCH_OP_ADD, "/3", "", "x")},
		{op(pb.PatchOp_PATCH_OP_ADD, "/0", "", "")},
		{op(pb.PatchOp_PATCH_OP_MOVE, "/0", "/5", "")},
		{op(pb.PatchOp_PATCH_OP_REPLACE, "1", "", "x")},
		{op(pb.PatchOp_PATCH_OP_REMOVE, "/01", "", "")},
		{op(pb.PatchOp_PATCH_OP_UNSPECIFIED, "/0", "", "")},
	} {
		if _, err := applyRefOps(refs("a", "b"), bad); err == nil {
			t.Errorf("%v applied", bad)
		}
	}
}

func TestApplyFieldOpsEscaping(t *testing.T) {
	f := map[string]*pb.Value{"a/b": intValue(1), "c~d": intValue(2), "gone": intValue(3)}
	err := applyFieldOps(f, []*pb.FieldOp{
		{Op: pb.PatchOp_PATCH_OP_REPLACE, Path: "/a~1b", Value: intValue(10)},
		{Op: pb.PatchOp_PATCH_OP_REPLACE, Path: "/c~0d", Value: intValue(20)},
		{Op: pb.PatchOp_PATCH_OP_ADD, Path: "/~01", Value: intValue(30)},
		{Op: pb.PatchOp_PATCH_OP_REMOVE, Path: "/gone"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"a/b": 10, "c~d": 20, "~1": 30}
	if len(f) != len(want) {
		t.Fatalf("fields %v", f)
	}
	for k, v := range want {
		if f[k].GetInt() != v {
			t.Errorf("%s = %v, want %d", k, f[k], v)
		}
	}
	if err := applyFieldOps(f, []*pb.FieldOp{{Op: pb.PatchOp_PATCH_OP_REMOVE, Path: "/nope"}}); err == nil {
		t.Error("remove of a missing field applied")
	}
	if err := applyFieldOps(f, []*pb.FieldOp{{Op: pb.PatchOp_PATCH_OP_REPLACE, Path: "/nope", Value: intValue(1)}}); err == nil {
		t.Error("replace of a missing field applied")
	}
}

func TestApplyDiffCollectsUnreachableRows(t *testing.T) {
	user := func(id string) *pb.Ref { return &pb.Ref{Table: "users", Id: id} }
	task := func(id string, assignee string) *pb.Ref {
		r := &pb.Ref{Table: "tasks", Id: id}
		if assignee != "" {
			r.Nested = map[string]*pb.Ref{"assignee": user(assignee)}
		}
		return r
	}
	row := func(table, id string) *pb.Row {
		return &pb.Row{Table: table, Id: id, Fields: map[string]*pb.Value{"id": {Kind: &pb.Value_String_{String_: id}}}}
	}
	f := &pb.ViewFrame{ViewId: "v", Epoch: 1, Version: 1}
	st := stateFromSnapshot(f, &pb.Snapshot{
		Refs: []*pb.Ref{task("1", "u1"), task("2", "u2")},
		Rows: []*pb.Row{row("tasks", "1"), row("tasks", "2"), row("users", "u1"), row("users", "u2"), row("users", "stray")},
	})
	if len(st.Rows) != 4 {
		t.Fatalf("snapshot kept an unreferenced row: %v", st.Rows)
	}
	next, err := st.applyDiff(&pb.ViewFrame{Epoch: 1, Version: 2, PrevVersion: 1}, &pb.ViewDiff{
		Refs: []*pb.RefOp{{Op: pb.PatchOp_PATCH_OP_REPLACE, Path: "/1", Value: task("2", "u3")}},
		Rows: []*pb.Row{row("users", "u3")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if next.Rows[RowKey{"users", "u2"}] != nil || next.Rows[RowKey{"users", "u3"}] == nil {
		t.Errorf("rows after reassignment: %v", next.Rows)
	}
	if st.Rows[RowKey{"users", "u2"}] == nil || len(st.Rows) != 4 || st.Version != 1 {
		t.Errorf("the previous state changed")
	}
	total := int64(1)
	next2, err := next.applyDiff(&pb.ViewFrame{Epoch: 1, Version: 3, PrevVersion: 2}, &pb.ViewDiff{
		Refs:  []*pb.RefOp{{Op: pb.PatchOp_PATCH_OP_REMOVE, Path: "/0"}},
		Total: &total,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(next2.Rows) != 2 || *next2.Total != 1 {
		t.Errorf("after removal: rows %v total %v", next2.Rows, next2.Total)
	}
}
