package offline

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

var notes = &pb.SyncTableSpec{
	Name: "notes",
	Key:  []string{"id"},
	Columns: []*pb.SyncColumn{
		{Name: "id", PgType: "bigint", Kind: "int", Key: true},
		{Name: "body", PgType: "text", Kind: "string"},
		{Name: "done", PgType: "boolean", Kind: "bool", Nullable: true},
	},
	PushPolicy:     pb.PushPolicy_PUSH_POLICY_SCOPE,
	ConflictPolicy: pb.ConflictPolicy_CONFLICT_POLICY_REJECT,
}

func i64(n int64) *pb.Value  { return &pb.Value{Kind: &pb.Value_Int{Int: n}} }
func str(s string) *pb.Value { return &pb.Value{Kind: &pb.Value_String_{String_: s}} }

// A store on a SQLite file with the notes table, and no server behind it.
func openLocal(t *testing.T, path string, seed bool) *Store {
	t.Helper()
	st, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	if seed {
		if err := st.Commit(context.Background(), &Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(context.Background(), Options{Conn: nowhere{}, Storage: st})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// nowhere is a connection no call goes through in these tests.
type nowhere struct{}

func (nowhere) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unavailable, "no server in this test")
}

func (nowhere) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "no server in this test")
}

func TestLocalWritesSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a.sqlite")
	s := openLocal(t, path, true)
	id := s.ClientID()
	if _, err := s.Insert(ctx, "notes", map[string]any{"id": 1, "body": "one"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Insert(ctx, "notes", map[string]any{"id": 2, "body": "two"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, "notes", "1", map[string]any{"body": "one, edited"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "notes", "2"); err != nil {
		t.Fatal(err)
	}
	if n := s.Pending(); n != 1 {
		t.Fatalf("pending = %d, want 1 (insert+update merged, insert+delete cancelled)", n)
	}
	if _, err := s.Insert(ctx, "notes", map[string]any{"id": 1, "body": "again"}); err == nil {
		t.Fatal("inserting an existing row succeeded")
	}
	if _, err := s.Insert(ctx, "notes", map[string]any{"id": "x", "body": "x"}); err == nil {
		t.Fatal("a string for an int column was taken")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openLocal(t, path, false)
	defer s.Close()
	if s.ClientID() != id {
		t.Fatalf("client id changed across reopening: %s, then %s", id, s.ClientID())
	}
	r, ok, err := s.Get("notes", "1")
	if err != nil || !ok || r.Values["body"] != "one, edited" || !r.Pending {
		t.Fatalf("row 1 after reopening = %+v, %v, %v", r, ok, err)
	}
	// The local table exists with its columns, for the app's own queries.
	var n int
	if err := s.opts.Storage.(*SQLiteStorage).DB().QueryRow(`SELECT count(*) FROM notes WHERE body IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
}

func TestSealedBundleKeepsItsIDAcrossRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "b.sqlite")
	s := openLocal(t, path, true)
	for i := 1; i <= 5; i++ {
		if _, err := s.Insert(ctx, "notes", map[string]any{"id": i, "body": "n"}); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	b, id, entries := s.state.seal(bundleLimits{rows: 3, bytes: 1 << 20})
	s.mu.Unlock()
	if id != 1 || len(entries) != 3 {
		t.Fatalf("sealed bundle %d with %d writes, want 1 with 3", id, len(entries))
	}
	if err := s.commit(ctx, func() (*Batch, error) { return b, nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openLocal(t, path, false)
	defer s.Close()
	gotID, got := s.state.sealed()
	if gotID != 1 || len(got) != 3 || got[0].ID != "1" || got[2].ID != "3" {
		t.Fatalf("after restart the sealed bundle is %d %v", gotID, got)
	}
	_, next, _ := s.state.seal(bundleLimits{rows: 10, bytes: 1 << 20})
	if next != 2 {
		t.Fatalf("next bundle id = %d, want 2", next)
	}
}

func TestRejectedWriteDropsAndReapplies(t *testing.T) {
	l := newLocalState(&StoredState{Meta: map[string]string{}})
	l.apply(&Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}})
	l.apply(&Batch{PutRows: []*StoredRow{{Table: "notes", ID: "1", Scope: "w1", Version: 4, Values: map[string]*pb.Value{"id": i64(1), "body": str("old")}}}})
	b, _, err := l.write("notes", pb.IntentOp_INTENT_OP_UPDATE, map[string]*pb.Value{"id": i64(1), "body": str("mine")}, 10)
	if err != nil {
		t.Fatal(err)
	}
	l.apply(b)
	b, _, _ = l.write("notes", pb.IntentOp_INTENT_OP_INSERT, map[string]*pb.Value{"id": i64(2), "body": str("new")}, 11)
	l.apply(b)
	if l.outbox[0].BaseVersion != 4 {
		t.Fatalf("base version %d, want 4", l.outbox[0].BaseVersion)
	}
	sb, _, entries := l.seal(bundleLimits{rows: 10, bytes: 1 << 20})
	l.apply(sb)
	res := &pb.PushResponse{Applied: false, Results: []*pb.IntentResult{
		{Status: pb.IntentResult_STATUS_CONFLICT, ServerRow: &pb.ServerRow{Table: "notes", Id: "1", Scope: "w1", Version: 6, Values: map[string]*pb.Value{"id": i64(1), "body": str("theirs")}}},
		{},
	}}
	pbatch, conflicts := l.pushed(entries, res)
	l.apply(pbatch)
	if len(conflicts) != 1 || conflicts[0].Kind != Rejected || conflicts[0].ServerVersion != 6 {
		t.Fatalf("conflicts = %+v", conflicts)
	}
	if got := l.visible("notes", "1")["body"].GetString_(); got != "theirs" {
		t.Fatalf("row 1 shows %q, want the server's", got)
	}
	if len(l.outbox) != 1 || l.outbox[0].ID != "2" || l.outbox[0].BundleID != 0 {
		t.Fatalf("outbox after the rejected bundle: %+v", l.outbox)
	}
	rb, err := l.reapply(conflicts[0], 12)
	if err != nil {
		t.Fatal(err)
	}
	l.apply(rb)
	for _, e := range l.outbox {
		if e.ID == "1" && e.BaseVersion != 6 {
			t.Fatalf("re-applied write based on %d, want 6", e.BaseVersion)
		}
	}
	if got := l.visible("notes", "1")["body"].GetString_(); got != "mine" {
		t.Fatalf("row 1 shows %q after re-applying", got)
	}
}

func TestPendingWritesStayOverPulledChanges(t *testing.T) {
	l := newLocalState(&StoredState{Meta: map[string]string{}})
	l.apply(&Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}})
	l.apply(&Batch{PutRows: []*StoredRow{{Table: "notes", ID: "1", Scope: "w1", Version: 1, Values: map[string]*pb.Value{"id": i64(1), "body": str("a")}}}})
	b, _, _ := l.write("notes", pb.IntentOp_INTENT_OP_UPDATE, map[string]*pb.Value{"id": i64(1), "done": {Kind: &pb.Value_Bool{Bool: true}}}, 1)
	l.apply(b)
	l.apply(l.pulled(&pb.ChangeBatch{
		Changes: []*pb.RowChange{{Scope: "w1", Sequence: 7, Table: "notes", Id: "1", Op: pb.IntentOp_INTENT_OP_UPDATE, Version: 2, Values: map[string]*pb.Value{"id": i64(1), "body": str("b")}}},
		Through: []*pb.ScopeSequence{{Scope: "w1", Sequence: 7}},
	}))
	v := l.visible("notes", "1")
	if v["body"].GetString_() != "b" || !v["done"].GetBool() {
		t.Fatalf("visible row = %v", v)
	}
	if l.scopes()["w1"] != 7 {
		t.Fatalf("position %v", l.scopes())
	}
	// An older pull answered late does not move the position back.
	l.apply(l.pulled(&pb.ChangeBatch{Through: []*pb.ScopeSequence{{Scope: "w1", Sequence: 3}}}))
	if l.scopes()["w1"] != 7 {
		t.Fatalf("position moved back to %v", l.scopes())
	}
}

func TestLaterWriteRebasesOnTheSentWritesVersion(t *testing.T) {
	l := newLocalState(&StoredState{Meta: map[string]string{}})
	l.apply(&Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}})
	l.apply(&Batch{PutRows: []*StoredRow{{Table: "notes", ID: "1", Scope: "w1", Version: 4, Values: map[string]*pb.Value{"id": i64(1), "body": str("a")}}}})
	b, _, _ := l.write("notes", pb.IntentOp_INTENT_OP_UPDATE, map[string]*pb.Value{"id": i64(1), "body": str("b")}, 1)
	l.apply(b)
	sb, _, sent := l.seal(bundleLimits{rows: 10, bytes: 1 << 20})
	l.apply(sb)
	b, _, _ = l.write("notes", pb.IntentOp_INTENT_OP_UPDATE, map[string]*pb.Value{"id": i64(1), "body": str("c")}, 2)
	l.apply(b)
	// The pull brings the sent write's own result before its answer is handled.
	l.apply(l.pulled(&pb.ChangeBatch{
		Changes: []*pb.RowChange{{Scope: "w1", Sequence: 9, Table: "notes", Id: "1", Op: pb.IntentOp_INTENT_OP_UPDATE, Version: 5, Values: map[string]*pb.Value{"id": i64(1), "body": str("b")}}},
		Through: []*pb.ScopeSequence{{Scope: "w1", Sequence: 9}},
	}))
	pbatch, _ := l.pushed(sent, &pb.PushResponse{Applied: true, Results: []*pb.IntentResult{{Status: pb.IntentResult_STATUS_APPLIED, Version: 5}}})
	l.apply(pbatch)
	if len(l.outbox) != 1 || l.outbox[0].BaseVersion != 5 {
		t.Fatalf("outbox = %+v, want the later write based on 5", l.outbox)
	}
}

func TestOneWritePerRowInABundle(t *testing.T) {
	l := newLocalState(&StoredState{Meta: map[string]string{}})
	l.apply(&Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}})
	w := func(seq, id int64) *OutboxEntry {
		return &OutboxEntry{Seq: seq, Table: "notes", ID: strconv.FormatInt(id, 10), Op: pb.IntentOp_INTENT_OP_UPDATE,
			Values: map[string]*pb.Value{"id": i64(id)}, BaseVersion: 1}
	}
	// Two unsent writes of row 1 (as after a refused bundle): the second waits.
	l.apply(&Batch{PutOutbox: []*OutboxEntry{w(1, 1), w(2, 2), w(3, 1), w(4, 3)}})
	_, _, entries := l.seal(bundleLimits{rows: 10, bytes: 1 << 20})
	if len(entries) != 2 || entries[0].Seq != 1 || entries[1].Seq != 2 {
		t.Fatalf("sealed %+v, want writes 1 and 2", entries)
	}
}

// A row moved between two scopes the device holds stays, whichever scope's
// side of the move is pulled first; a device holding only the scope it left
// drops it.
func TestRowMovedBetweenHeldScopesStaysInAnyOrder(t *testing.T) {
	moved := map[string]*pb.Value{"id": i64(1), "body": str("moved")}
	insert := &pb.RowChange{Scope: "team:1", Sequence: 4, Table: "notes", Id: "1", Op: pb.IntentOp_INTENT_OP_INSERT, Version: 3, Values: moved}
	leave := &pb.RowChange{Scope: "team:2", Sequence: 9, Table: "notes", Id: "1", Op: pb.IntentOp_INTENT_OP_DELETE, Version: 3, MovedOut: true}
	held := func(scope string) *localState {
		l := newLocalState(&StoredState{Meta: map[string]string{}})
		l.apply(&Batch{SetTables: true, Tables: []*pb.SyncTableSpec{notes}})
		if scope != "-" {
			l.apply(&Batch{PutRows: []*StoredRow{{Table: "notes", ID: "1", Scope: scope, Version: 1, Values: map[string]*pb.Value{"id": i64(1), "body": str("a")}}}})
		}
		return l
	}
	for name, c := range map[string]struct {
		held    string
		batches [][]*pb.RowChange
		want    bool
	}{
		"target first, one batch":      {"team:2", [][]*pb.RowChange{{insert, leave}}, true},
		"source first, one batch":      {"team:2", [][]*pb.RowChange{{leave, insert}}, true},
		"target first, two batches":    {"team:2", [][]*pb.RowChange{{insert}, {leave}}, true},
		"source first, two batches":    {"team:2", [][]*pb.RowChange{{leave}, {insert}}, true},
		"only the source":              {"team:2", [][]*pb.RowChange{{leave}}, false},
		"only the target":              {"-", [][]*pb.RowChange{{insert}}, true},
		"fresh, both":                  {"-", [][]*pb.RowChange{{insert}, {leave}}, true},
		"inserted here, not pulled":    {"", [][]*pb.RowChange{{leave}}, false},
		"a real delete at the version": {"team:1", [][]*pb.RowChange{{insert}, {{Scope: "team:1", Sequence: 5, Table: "notes", Id: "1", Op: pb.IntentOp_INTENT_OP_DELETE, Version: 3}}}, false},
	} {
		l := held(c.held)
		for _, b := range c.batches {
			l.apply(l.pulled(&pb.ChangeBatch{Changes: b}))
		}
		v := l.visible("notes", "1")
		if got := v != nil; got != c.want {
			t.Fatalf("%s: row held = %v, want %v", name, got, c.want)
		}
		if c.want && v["body"].GetString_() != "moved" {
			t.Fatalf("%s: row = %v", name, v)
		}
	}
}
