package arcana

import (
	"fmt"
	"maps"
	"reflect"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// RowKey identifies a row: its table and the text of its key.
type RowKey struct {
	Table string
	ID    string
}

func (k RowKey) String() string { return k.Table + "/" + k.ID }

// Row is one normalized row a view references. Rows are shared between
// states and must be treated as read-only.
type Row struct {
	Table  string
	ID     string
	Fields map[string]*pb.Value
}

// Key returns the row's key.
func (r *Row) Key() RowKey { return RowKey{r.Table, r.ID} }

// Get returns a field converted with FromValue, and whether the row has it.
func (r *Row) Get(field string) (any, bool) {
	v, ok := r.Fields[field]
	if !ok {
		return nil, false
	}
	return FromValue(v), true
}

// Int returns an integer field; ok is false when it is missing or not an int.
func (r *Row) Int(field string) (int64, bool) {
	i, ok := FromValue(r.Fields[field]).(int64)
	return i, ok
}

// String returns a text-like field (string, numeric, json, uuid or date as
// their text); ok is false when it is missing, null or of another kind.
func (r *Row) String(field string) (string, bool) {
	// The text kinds are the ones FromValue gives as strings (Numeric, JSON,
	// UUID and Date are strings too).
	x := reflect.ValueOf(FromValue(r.Fields[field]))
	if x.Kind() != reflect.String {
		return "", false
	}
	return x.String(), true
}

// State is one immutable version of a view: its ordered top-level refs, the
// rows they reach (nested refs included) and the total, when the graph has one.
// A State is never changed after it is published: hold it as long as needed.
type State struct {
	ViewID  string
	Epoch   uint64
	Version uint64
	Refs    []*pb.Ref
	Rows    map[RowKey]*Row
	// Total is the graph's total count, when it defines one.
	Total *int64
	// HasBefore and HasAfter say, for a windowed view, whether the list
	// has rows before the first ref and after the last.
	HasBefore bool
	HasAfter  bool
}

// Row returns the row a ref points to, or nil.
func (s *State) Row(ref *pb.Ref) *Row {
	if s == nil || ref == nil {
		return nil
	}
	return s.Rows[RowKey{ref.GetTable(), ref.GetId()}]
}

// Item is a resolved ref: its row and its resolved nested refs.
type Item struct {
	Ref    *pb.Ref
	Row    *Row
	Nested map[string]Item
}

// Items resolves the top-level refs in order.
func (s *State) Items() []Item {
	if s == nil {
		return nil
	}
	out := make([]Item, len(s.Refs))
	for i, r := range s.Refs {
		out[i] = s.resolve(r)
	}
	return out
}

func (s *State) resolve(r *pb.Ref) Item {
	it := Item{Ref: r, Row: s.Row(r)}
	if len(r.GetNested()) > 0 {
		it.Nested = make(map[string]Item, len(r.GetNested()))
		for name, n := range r.GetNested() {
			it.Nested[name] = s.resolve(n)
		}
	}
	return it
}

// Equal reports whether two states hold the same refs, rows and total
// (ignoring view id, epoch and version).
func (s *State) Equal(o *State) bool {
	if s == nil || o == nil {
		return s == o
	}
	if len(s.Refs) != len(o.Refs) || len(s.Rows) != len(o.Rows) {
		return false
	}
	if (s.Total == nil) != (o.Total == nil) || (s.Total != nil && *s.Total != *o.Total) {
		return false
	}
	if s.HasBefore != o.HasBefore || s.HasAfter != o.HasAfter {
		return false
	}
	for i := range s.Refs {
		if !proto.Equal(s.Refs[i], o.Refs[i]) {
			return false
		}
	}
	for k, r := range s.Rows {
		q, ok := o.Rows[k]
		if !ok || len(r.Fields) != len(q.Fields) {
			return false
		}
		for f, v := range r.Fields {
			w, ok := q.Fields[f]
			if !ok || !proto.Equal(v, w) {
				return false
			}
		}
	}
	return true
}

// Diff describes how two states differ, for messages and tests; "" when Equal.
func (s *State) Diff(o *State) string {
	if s.Equal(o) {
		return ""
	}
	var b strings.Builder
	refIDs := func(st *State) []string {
		ids := make([]string, len(st.Refs))
		for i, r := range st.Refs {
			ids[i] = r.GetTable() + "/" + r.GetId()
		}
		return ids
	}
	fmt.Fprintf(&b, "refs %v vs %v; ", refIDs(s), refIDs(o))
	for k, r := range s.Rows {
		q, ok := o.Rows[k]
		if !ok {
			fmt.Fprintf(&b, "row %s only on the left; ", k)
			continue
		}
		for f, v := range r.Fields {
			if w := q.Fields[f]; !proto.Equal(v, w) {
				fmt.Fprintf(&b, "%s.%s: %v vs %v; ", k, f, FromValue(v), FromValue(w))
			}
		}
	}
	for k := range o.Rows {
		if _, ok := s.Rows[k]; !ok {
			fmt.Fprintf(&b, "row %s only on the right; ", k)
		}
	}
	return b.String()
}

func rowFromPB(r *pb.Row) *Row {
	return &Row{Table: r.GetTable(), ID: r.GetId(), Fields: r.GetFields()}
}

func totalOf(has bool, v int64) *int64 {
	if !has {
		return nil
	}
	return &v
}

// stateFromSnapshot builds a state from a snapshot frame.
func stateFromSnapshot(f *pb.ViewFrame, snap *pb.Snapshot) *State {
	st := &State{
		ViewID:  f.GetViewId(),
		Epoch:   f.GetEpoch(),
		Version: f.GetVersion(),
		Refs:    snap.GetRefs(),
		Rows:    make(map[RowKey]*Row, len(snap.GetRows())),
		Total:   totalOf(snap.Total != nil, snap.GetTotal()),

		HasBefore: snap.GetWindow().GetHasBefore(),
		HasAfter:  snap.GetWindow().GetHasAfter(),
	}
	if st.Refs == nil {
		st.Refs = []*pb.Ref{}
	}
	for _, r := range snap.GetRows() {
		row := rowFromPB(r)
		st.Rows[row.Key()] = row
	}
	st.collect()
	return st
}

// continues reports whether diff frame f applies on s: a diff applies on top
// of (prev_epoch, or else epoch; prev_version). A re-anchor diff names the
// epoch it starts from when the window moved onto another life of the view.
func (s *State) continues(f *pb.ViewFrame) bool {
	base := f.GetPrevEpoch()
	if base == 0 {
		base = f.GetEpoch()
	}
	return s != nil && s.Epoch == base && s.Version == f.GetPrevVersion()
}

// applyDiff returns the state after diff frame f, leaving s untouched. The
// caller has checked that f continues s.
func (s *State) applyDiff(f *pb.ViewFrame, d *pb.ViewDiff) (*State, error) {
	next := &State{
		ViewID:  s.ViewID,
		Epoch:   f.GetEpoch(),
		Version: f.GetVersion(),
		Refs:    append([]*pb.Ref(nil), s.Refs...),
		Rows:    maps.Clone(s.Rows),
		Total:   s.Total,

		HasBefore: s.HasBefore,
		HasAfter:  s.HasAfter,
	}
	if next.Rows == nil {
		next.Rows = map[RowKey]*Row{}
	}
	refs, err := applyRefOps(next.Refs, d.GetRefs())
	if err != nil {
		return nil, err
	}
	next.Refs = refs
	for _, r := range d.GetRows() {
		row := rowFromPB(r)
		next.Rows[row.Key()] = row
	}
	for _, p := range d.GetPatches() {
		k := RowKey{p.GetTable(), p.GetId()}
		old, ok := next.Rows[k]
		if !ok {
			return nil, fmt.Errorf("patch of row %s the view does not hold", k)
		}
		fields := maps.Clone(old.Fields)
		if fields == nil {
			fields = map[string]*pb.Value{}
		}
		if err := applyFieldOps(fields, p.GetOps()); err != nil {
			return nil, fmt.Errorf("row %s: %w", k, err)
		}
		next.Rows[k] = &Row{Table: old.Table, ID: old.ID, Fields: fields}
	}
	if d.Total != nil {
		next.Total = totalOf(true, d.GetTotal())
	}
	if w := d.GetWindow(); w != nil {
		next.HasBefore, next.HasAfter = w.GetHasBefore(), w.GetHasAfter()
	}
	next.collect()
	return next, nil
}

// collect drops the rows no ref reaches, nested refs included.
func (s *State) collect() {
	reached := make(map[RowKey]struct{}, len(s.Rows))
	var walk func(r *pb.Ref)
	walk = func(r *pb.Ref) {
		reached[RowKey{r.GetTable(), r.GetId()}] = struct{}{}
		for _, n := range r.GetNested() {
			walk(n)
		}
	}
	for _, r := range s.Refs {
		walk(r)
	}
	for k := range s.Rows {
		if _, ok := reached[k]; !ok {
			delete(s.Rows, k)
		}
	}
}

// parseIndex reads an array pointer "/3" (or "/-" when allowEnd).
func parseIndex(path string, n int, allowEnd bool) (int, error) {
	tok, ok := strings.CutPrefix(path, "/")
	if !ok {
		return 0, fmt.Errorf("bad index path %q", path)
	}
	var i int
	if tok == "-" {
		i = n
	} else {
		v, err := strconv.Atoi(tok)
		if err != nil || v < 0 || (len(tok) > 1 && tok[0] == '0') {
			return 0, fmt.Errorf("bad index path %q", path)
		}
		i = v
	}
	if i > n || (!allowEnd && i == n) {
		return 0, fmt.Errorf("index %d out of range for %d refs", i, n)
	}
	return i, nil
}

// applyRefOps applies an RFC 6902 sequential patch to the refs array.
func applyRefOps(refs []*pb.Ref, ops []*pb.RefOp) ([]*pb.Ref, error) {
	for _, op := range ops {
		switch op.GetOp() {
		case pb.PatchOp_PATCH_OP_ADD:
			i, err := parseIndex(op.GetPath(), len(refs), true)
			if err != nil {
				return nil, err
			}
			if op.GetValue() == nil {
				return nil, fmt.Errorf("add at %s without a value", op.GetPath())
			}
			refs = append(refs, nil)
			copy(refs[i+1:], refs[i:])
			refs[i] = op.GetValue()
		case pb.PatchOp_PATCH_OP_REMOVE:
			i, err := parseIndex(op.GetPath(), len(refs), false)
			if err != nil {
				return nil, err
			}
			refs = append(refs[:i], refs[i+1:]...)
		case pb.PatchOp_PATCH_OP_REPLACE:
			i, err := parseIndex(op.GetPath(), len(refs), false)
			if err != nil {
				return nil, err
			}
			if op.GetValue() == nil {
				return nil, fmt.Errorf("replace at %s without a value", op.GetPath())
			}
			refs[i] = op.GetValue()
		case pb.PatchOp_PATCH_OP_MOVE:
			from, err := parseIndex(op.GetFrom(), len(refs), false)
			if err != nil {
				return nil, err
			}
			item := refs[from]
			refs = append(refs[:from], refs[from+1:]...)
			to, err := parseIndex(op.GetPath(), len(refs), true)
			if err != nil {
				return nil, err
			}
			refs = append(refs, nil)
			copy(refs[to+1:], refs[to:])
			refs[to] = item
		default:
			return nil, fmt.Errorf("unknown ref op %v", op.GetOp())
		}
	}
	return refs, nil
}

// unescapeToken reverses RFC 6901 escaping: "~1" is "/", then "~0" is "~".
func unescapeToken(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

// applyFieldOps applies add/remove/replace steps at "/<field>" in place.
func applyFieldOps(fields map[string]*pb.Value, ops []*pb.FieldOp) error {
	for _, op := range ops {
		tok, ok := strings.CutPrefix(op.GetPath(), "/")
		if !ok || strings.Contains(tok, "/") {
			return fmt.Errorf("bad field path %q", op.GetPath())
		}
		key := unescapeToken(tok)
		switch op.GetOp() {
		case pb.PatchOp_PATCH_OP_ADD, pb.PatchOp_PATCH_OP_REPLACE:
			if op.GetValue() == nil {
				return fmt.Errorf("%v of %q without a value", op.GetOp(), key)
			}
			if op.GetOp() == pb.PatchOp_PATCH_OP_REPLACE {
				if _, ok := fields[key]; !ok {
					return fmt.Errorf("replace of missing field %q", key)
				}
			}
			fields[key] = op.GetValue()
		case pb.PatchOp_PATCH_OP_REMOVE:
			if _, ok := fields[key]; !ok {
				return fmt.Errorf("remove of missing field %q", key)
			}
			delete(fields, key)
		default:
			return fmt.Errorf("field op %v is not supported", op.GetOp())
		}
	}
	return nil
}
