package offline

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Meta keys.
const (
	metaClientID   = "client_id"
	metaBundleID   = "last_bundle_id"
	metaScopes     = "scopes"
	metaSchemaHash = "schema_hash"
)

// ConflictKind says how the server overruled a local write.
type ConflictKind string

const (
	// Rejected: the reject policy refused the write (and its bundle).
	Rejected ConflictKind = "reject"
	// Superseded: last-writer-wins or server-wins kept the server's row.
	Superseded ConflictKind = "superseded"
)

// Conflict is one local write the server refused or overruled.
type Conflict struct {
	Table string
	ID    string
	Kind  ConflictKind
	// Op is the local write's operation and Values its values.
	Op     pb.IntentOp
	Values map[string]*pb.Value
	// The server's row as it stands.
	ServerValues  map[string]*pb.Value
	ServerVersion uint64
	ServerDeleted bool
	ServerScope   string
}

// Resolution is what to do with a rejected write.
type Resolution int

const (
	// Drop discards the rejected write (the default).
	Drop Resolution = iota
	// Reapply writes it again on top of the server's row.
	Reapply
)

// bundleLimits cut a bundle.
type bundleLimits struct {
	rows  int
	bytes int
}

// localState is the device's copy in memory. Changes are computed as
// batches, committed to storage, and only then applied here.
type localState struct {
	specs  map[string]*pb.SyncTableSpec
	order  []string
	rows   map[RowRef]*StoredRow
	outbox []*OutboxEntry
	meta   map[string]string
}

func newLocalState(s *StoredState) *localState {
	l := &localState{}
	l.load(s)
	return l
}

func (l *localState) load(s *StoredState) {
	l.specs = map[string]*pb.SyncTableSpec{}
	l.order = nil
	for _, t := range s.Tables {
		l.specs[t.GetName()] = t
		l.order = append(l.order, t.GetName())
	}
	l.rows = map[RowRef]*StoredRow{}
	for _, r := range s.Rows {
		l.rows[RowRef{r.Table, r.ID}] = r
	}
	l.outbox = append([]*OutboxEntry(nil), s.Outbox...)
	sort.Slice(l.outbox, func(i, j int) bool { return l.outbox[i].Seq < l.outbox[j].Seq })
	l.meta = s.Meta
	if l.meta == nil {
		l.meta = map[string]string{}
	}
}

func (l *localState) snapshotState() *StoredState {
	s := &StoredState{Meta: l.meta, Outbox: l.outbox}
	for _, n := range l.order {
		s.Tables = append(s.Tables, l.specs[n])
	}
	for _, r := range l.rows {
		s.Rows = append(s.Rows, r)
	}
	return s
}

func (l *localState) apply(b *Batch) {
	s := l.snapshotState()
	applyBatch(s, b)
	l.load(s)
}

func (l *localState) scopes() map[string]uint64 {
	return parseScopes(l.meta[metaScopes])
}

func parseScopes(text string) map[string]uint64 {
	out := map[string]uint64{}
	if text == "" {
		return out
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		return out
	}
	for k, v := range m {
		n, err := strconv.ParseUint(v, 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out
}

func formatScopes(m map[string]uint64) string {
	s := map[string]string{}
	for k, v := range m {
		s[k] = strconv.FormatUint(v, 10)
	}
	b, _ := json.Marshal(s)
	return string(b)
}

func (l *localState) spec(table string) (*pb.SyncTableSpec, error) {
	s, ok := l.specs[table]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no synced table named %q", table)
	}
	return s, nil
}

// visible is the row as the app sees it: the server's row with the pending writes on top.
func (l *localState) visible(table, id string) map[string]*pb.Value {
	var values map[string]*pb.Value
	if base, ok := l.rows[RowRef{table, id}]; ok {
		values = copyValues(base.Values)
	}
	for _, e := range l.outbox {
		if e.Table == table && e.ID == id {
			values = overlay(values, e)
		}
	}
	return values
}

func overlay(values map[string]*pb.Value, e *OutboxEntry) map[string]*pb.Value {
	switch e.Op {
	case pb.IntentOp_INTENT_OP_INSERT:
		return copyValues(e.Values)
	case pb.IntentOp_INTENT_OP_DELETE:
		return nil
	default:
		if values == nil {
			return nil
		}
		out := copyValues(values)
		for k, v := range e.Values {
			out[k] = v
		}
		return out
	}
}

func copyValues(m map[string]*pb.Value) map[string]*pb.Value {
	out := make(map[string]*pb.Value, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// RowID is a row's id from its key values: the value's text, or a JSON array
// of the texts for a composite key.
func RowID(spec *pb.SyncTableSpec, values map[string]*pb.Value) (string, error) {
	var missing, texts []string
	for _, c := range spec.GetKey() {
		v := values[c]
		if isNull(v) {
			missing = append(missing, c)
			continue
		}
		texts = append(texts, keyText(v))
	}
	if len(missing) > 0 {
		return "", status.Errorf(codes.InvalidArgument, "%s: the key column %s needs a value", spec.GetName(), strings.Join(missing, ", "))
	}
	if len(texts) == 1 {
		return texts[0], nil
	}
	b, _ := json.Marshal(texts)
	return string(b), nil
}

func keyOnly(spec *pb.SyncTableSpec, values map[string]*pb.Value) map[string]*pb.Value {
	out := map[string]*pb.Value{}
	for _, k := range spec.GetKey() {
		out[k] = values[k]
	}
	return out
}

// write is the batch recording one local write, merged into an unsent
// write of the same row when there is one.
func (l *localState) write(table string, op pb.IntentOp, values map[string]*pb.Value, nowMs int64) (*Batch, string, error) {
	spec, err := l.spec(table)
	if err != nil {
		return nil, "", err
	}
	if spec.GetPushPolicy() == pb.PushPolicy_PUSH_POLICY_READ_ONLY {
		return nil, "", status.Errorf(codes.PermissionDenied, "%s is read-only on devices", table)
	}
	known := map[string]*pb.SyncColumn{}
	for _, c := range spec.GetColumns() {
		known[c.GetName()] = c
	}
	for k := range values {
		if known[k] == nil {
			return nil, "", status.Errorf(codes.InvalidArgument, "%s has no column %s", table, k)
		}
	}
	id, err := RowID(spec, values)
	if err != nil {
		return nil, "", err
	}
	current := l.visible(table, id)
	if op == pb.IntentOp_INTENT_OP_INSERT && current != nil {
		return nil, "", status.Errorf(codes.AlreadyExists, "%s %s already exists", table, id)
	}
	if op != pb.IntentOp_INTENT_OP_INSERT && current == nil {
		return nil, "", status.Errorf(codes.NotFound, "%s %s does not exist", table, id)
	}
	// Columns left out of an insert are not checked here: the server fills
	// in the scope and owner columns, and the spec does not say which.
	key := keyOnly(spec, values)
	if op == pb.IntentOp_INTENT_OP_DELETE {
		values = key
	}
	var last *OutboxEntry
	for _, e := range l.outbox {
		if e.Table == table && e.ID == id {
			last = e
		}
	}
	if last != nil && last.BundleID == 0 {
		mop, mvals, keep := merge(last, op, values, key)
		if !keep {
			return &Batch{DeleteOutbox: []int64{last.Seq}}, id, nil
		}
		e := *last
		e.Op, e.Values, e.ClientTimeMs = mop, mvals, nowMs
		return &Batch{PutOutbox: []*OutboxEntry{&e}}, id, nil
	}
	var seq int64 = 1
	if n := len(l.outbox); n > 0 {
		seq = l.outbox[n-1].Seq + 1
	}
	var base uint64
	if r, ok := l.rows[RowRef{table, id}]; ok {
		base = r.Version
	}
	return &Batch{PutOutbox: []*OutboxEntry{{
		Seq: seq, Table: table, ID: id, Op: op, Values: values, BaseVersion: base, ClientTimeMs: nowMs,
	}}}, id, nil
}

// merge folds a write into the unsent write before it; keep is false when they cancel out.
func merge(prev *OutboxEntry, op pb.IntentOp, values, key map[string]*pb.Value) (pb.IntentOp, map[string]*pb.Value, bool) {
	joined := func() map[string]*pb.Value {
		out := copyValues(prev.Values)
		for k, v := range values {
			out[k] = v
		}
		return out
	}
	switch prev.Op {
	case pb.IntentOp_INTENT_OP_INSERT:
		if op == pb.IntentOp_INTENT_OP_DELETE {
			return 0, nil, false
		}
		return pb.IntentOp_INTENT_OP_INSERT, joined(), true
	case pb.IntentOp_INTENT_OP_UPDATE:
		if op == pb.IntentOp_INTENT_OP_DELETE {
			return pb.IntentOp_INTENT_OP_DELETE, key, true
		}
		return pb.IntentOp_INTENT_OP_UPDATE, joined(), true
	default:
		// Deleted, then inserted again: the server still has the row.
		return pb.IntentOp_INTENT_OP_UPDATE, values, true
	}
}

// sealed is the bundle in flight: the oldest sealed writes.
func (l *localState) sealed() (uint64, []*OutboxEntry) {
	var id uint64
	var out []*OutboxEntry
	for _, e := range l.outbox {
		if e.BundleID == 0 {
			continue
		}
		if id == 0 {
			id = e.BundleID
		}
		if e.BundleID == id {
			out = append(out, e)
		}
	}
	return id, out
}

func intentOf(e *OutboxEntry) *pb.RowIntent {
	return &pb.RowIntent{Table: e.Table, Op: e.Op, Values: e.Values, BaseVersion: e.BaseVersion, ClientTimeUnixMs: e.ClientTimeMs}
}

// seal is the batch sealing the oldest unsent writes into the next bundle.
func (l *localState) seal(lim bundleLimits) (*Batch, uint64, []*OutboxEntry) {
	last, _ := strconv.ParseUint(l.meta[metaBundleID], 10, 64)
	id := last + 1
	var entries []*OutboxEntry
	rowsIn := map[RowRef]bool{}
	size := 0
	for _, e := range l.outbox {
		if e.BundleID != 0 {
			continue
		}
		n := proto.Size(intentOf(e))
		if len(entries) > 0 && (len(entries) >= lim.rows || size+n > lim.bytes) {
			break
		}
		// A second write of a row needs the version the first one makes: it
		// goes in the next bundle, rebased once this one is answered.
		if rowsIn[RowRef{e.Table, e.ID}] {
			break
		}
		rowsIn[RowRef{e.Table, e.ID}] = true
		c := *e
		c.BundleID = id
		entries = append(entries, &c)
		size += n
	}
	if len(entries) == 0 {
		return nil, 0, nil
	}
	return &Batch{PutOutbox: entries, Meta: map[string]string{metaBundleID: strconv.FormatUint(id, 10)}}, id, entries
}

// pushed is the batch for a bundle's answer, and the conflicts to report.
func (l *localState) pushed(entries []*OutboxEntry, res *pb.PushResponse) (*Batch, []Conflict) {
	b := &Batch{}
	var conflicts []Conflict
	type move struct{ from, to uint64 }
	moved := map[RowRef]move{}
	take := func(sr *pb.ServerRow) {
		if sr == nil {
			return
		}
		if cur, ok := l.rows[RowRef{sr.GetTable(), sr.GetId()}]; ok && cur.Version > sr.GetVersion() {
			return
		}
		if sr.GetDeleted() {
			b.DeleteRows = append(b.DeleteRows, RowRef{sr.GetTable(), sr.GetId()})
		} else {
			b.PutRows = append(b.PutRows, &StoredRow{Table: sr.GetTable(), ID: sr.GetId(), Scope: sr.GetScope(), Version: sr.GetVersion(), Values: sr.GetValues()})
		}
	}
	for i, e := range entries {
		var r *pb.IntentResult
		if i < len(res.GetResults()) {
			r = res.GetResults()[i]
		}
		st := r.GetStatus()
		if res.GetApplied() {
			b.DeleteOutbox = append(b.DeleteOutbox, e.Seq)
		}
		switch {
		case st == pb.IntentResult_STATUS_APPLIED && res.GetApplied():
			ref := RowRef{e.Table, e.ID}
			cur := l.rows[ref]
			var scope string
			vals := map[string]*pb.Value{}
			if cur != nil {
				scope, vals = cur.Scope, copyValues(cur.Values)
			}
			// Later writes of the row were made on the version this write was
			// (a pull may have brought this write's own result since).
			moved[ref] = move{e.BaseVersion, r.GetVersion()}
			if e.Op == pb.IntentOp_INTENT_OP_DELETE {
				b.DeleteRows = append(b.DeleteRows, ref)
			} else {
				for k, v := range e.Values {
					vals[k] = v
				}
				b.PutRows = append(b.PutRows, &StoredRow{Table: e.Table, ID: e.ID, Scope: scope, Version: r.GetVersion(), Values: vals})
			}
		case st == pb.IntentResult_STATUS_CONFLICT || st == pb.IntentResult_STATUS_SUPERSEDED:
			if !res.GetApplied() {
				b.DeleteOutbox = append(b.DeleteOutbox, e.Seq)
			}
			sr := r.GetServerRow()
			take(sr)
			kind := Superseded
			if st == pb.IntentResult_STATUS_CONFLICT {
				kind = Rejected
			}
			conflicts = append(conflicts, Conflict{
				Table: e.Table, ID: e.ID, Kind: kind, Op: e.Op, Values: e.Values,
				ServerValues: sr.GetValues(), ServerVersion: sr.GetVersion(), ServerDeleted: sr == nil || sr.GetDeleted(), ServerScope: sr.GetScope(),
			})
		case !res.GetApplied():
			// Refused with the bundle for another write's conflict: it goes
			// again in the next bundle.
			c := *e
			c.BundleID = 0
			b.PutOutbox = append(b.PutOutbox, &c)
		}
	}
	// Later writes of the same rows were made on the version this bundle
	// replaced: move them onto the new one.
	for _, e := range l.outbox {
		if e.BundleID != 0 {
			continue
		}
		if m, ok := moved[RowRef{e.Table, e.ID}]; ok && e.BaseVersion == m.from {
			c := *e
			c.BaseVersion = m.to
			b.PutOutbox = append(b.PutOutbox, &c)
		}
	}
	return b, conflicts
}

// reapply is the batch writing a rejected write again on top of the server's row.
func (l *localState) reapply(c Conflict, nowMs int64) (*Batch, error) {
	spec, err := l.spec(c.Table)
	if err != nil {
		return nil, err
	}
	exists := l.visible(c.Table, c.ID) != nil
	op := pb.IntentOp_INTENT_OP_UPDATE
	values := c.Values
	switch {
	case c.Op == pb.IntentOp_INTENT_OP_DELETE:
		if !exists {
			return nil, nil
		}
		op, values = pb.IntentOp_INTENT_OP_DELETE, keyOnly(spec, c.Values)
	case !exists:
		op = pb.IntentOp_INTENT_OP_INSERT
	}
	b, _, err := l.write(c.Table, op, values, nowMs)
	return b, err
}

// pulled is the batch applying pulled changes and moving the positions forward.
func (l *localState) pulled(cb *pb.ChangeBatch) *Batch {
	b := &Batch{}
	latest := map[RowRef]*StoredRow{}
	var order []RowRef
	for _, ch := range cb.GetChanges() {
		ref := RowRef{ch.GetTable(), ch.GetId()}
		cur, seen := latest[ref]
		if !seen {
			cur = l.rows[ref]
			order = append(order, ref)
		}
		if cur != nil && cur.Version > ch.GetVersion() {
			latest[ref] = cur
			continue
		}
		// A row that moved to another scope: at this version the copy held
		// through that scope is the row itself, and stays.
		if ch.GetMovedOut() && cur != nil && cur.Version == ch.GetVersion() && cur.Scope != "" && cur.Scope != ch.GetScope() {
			latest[ref] = cur
			continue
		}
		if ch.GetOp() == pb.IntentOp_INTENT_OP_DELETE {
			latest[ref] = nil
		} else {
			latest[ref] = &StoredRow{Table: ch.GetTable(), ID: ch.GetId(), Scope: ch.GetScope(), Version: ch.GetVersion(), Values: ch.GetValues()}
		}
	}
	for _, ref := range order {
		if r := latest[ref]; r != nil {
			b.PutRows = append(b.PutRows, r)
		} else {
			b.DeleteRows = append(b.DeleteRows, ref)
		}
	}
	scopes := l.scopes()
	for _, t := range cb.GetThrough() {
		if t.GetSequence() > scopes[t.GetScope()] {
			scopes[t.GetScope()] = t.GetSequence()
		}
	}
	b.Meta = map[string]string{metaScopes: formatScopes(scopes)}
	return b
}

// snapshotted is the batch replacing the rows of the snapshotted scopes (every row when all).
func (l *localState) snapshotted(all bool, scopes []string, rows []*pb.ServerRow, at []*pb.ScopeSequence) *Batch {
	pos := map[string]uint64{}
	if !all {
		pos = l.scopes()
	}
	b := &Batch{ClearRows: all}
	if !all {
		b.ClearScopes = append(b.ClearScopes, scopes...)
	}
	for _, a := range at {
		pos[a.GetScope()] = a.GetSequence()
		if !all {
			b.ClearScopes = append(b.ClearScopes, a.GetScope())
		}
	}
	for _, r := range rows {
		if r.GetDeleted() {
			continue
		}
		b.PutRows = append(b.PutRows, &StoredRow{Table: r.GetTable(), ID: r.GetId(), Scope: r.GetScope(), Version: r.GetVersion(), Values: r.GetValues()})
	}
	b.Meta = map[string]string{metaScopes: formatScopes(pos)}
	return b
}
