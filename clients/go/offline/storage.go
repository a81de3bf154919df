package offline

import (
	"context"
	"sort"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// StoredRow is one row as the server last sent it.
type StoredRow struct {
	Table   string
	ID      string
	Scope   string
	Version uint64
	Values  map[string]*pb.Value
}

// OutboxEntry is one local write waiting to reach the server.
type OutboxEntry struct {
	// Seq orders the writes of a device.
	Seq   int64
	Table string
	ID    string
	Op    pb.IntentOp
	// Values holds the key values (every op) and the written values (insert, update).
	Values map[string]*pb.Value
	// BaseVersion is the row version the device saw when the write was made (0: new row).
	BaseVersion  uint64
	ClientTimeMs int64
	// BundleID is the bundle the write was sealed into, 0 while not sealed.
	BundleID uint64
}

// StoredState is everything a store keeps, as loaded at open.
type StoredState struct {
	Meta   map[string]string
	Tables []*pb.SyncTableSpec
	Rows   []*StoredRow
	Outbox []*OutboxEntry
}

// RowRef names one row.
type RowRef struct{ Table, ID string }

// Batch is a set of changes applied all together or not at all, in this
// order: tables, clears, row deletes, row puts, outbox deletes, outbox puts,
// meta.
type Batch struct {
	// Tables replaces the table specs (and the local tables) when SetTables is true.
	Tables       []*pb.SyncTableSpec
	SetTables    bool
	ClearRows    bool
	ClearScopes  []string
	PutRows      []*StoredRow
	DeleteRows   []RowRef
	PutOutbox    []*OutboxEntry
	DeleteOutbox []int64
	Meta         map[string]string
}

func (b *Batch) empty() bool {
	return b == nil || (!b.SetTables && !b.ClearRows && len(b.ClearScopes) == 0 && len(b.PutRows) == 0 &&
		len(b.DeleteRows) == 0 && len(b.PutOutbox) == 0 && len(b.DeleteOutbox) == 0 && len(b.Meta) == 0)
}

// Storage is where a store keeps its rows, outbox and positions. Backends
// only load everything at open and apply atomic batches; the sync logic is
// the same for all.
type Storage interface {
	Load(ctx context.Context) (*StoredState, error)
	// Commit applies a batch atomically and durably before returning.
	Commit(ctx context.Context, b *Batch) error
	Close() error
}

// applyBatch applies a batch to a loaded state, in the order every backend follows.
func applyBatch(s *StoredState, b *Batch) {
	if b.SetTables {
		s.Tables = b.Tables
		names := map[string]bool{}
		for _, t := range b.Tables {
			names[t.GetName()] = true
		}
		s.Rows = filterRows(s.Rows, func(r *StoredRow) bool { return names[r.Table] })
	}
	if b.ClearRows {
		s.Rows = nil
	}
	if len(b.ClearScopes) > 0 {
		drop := map[string]bool{}
		for _, sc := range b.ClearScopes {
			drop[sc] = true
		}
		s.Rows = filterRows(s.Rows, func(r *StoredRow) bool { return !drop[r.Scope] })
	}
	if len(b.DeleteRows) > 0 || len(b.PutRows) > 0 {
		idx := map[RowRef]int{}
		for i, r := range s.Rows {
			idx[RowRef{r.Table, r.ID}] = i
		}
		gone := map[RowRef]bool{}
		for _, d := range b.DeleteRows {
			gone[d] = true
		}
		for _, r := range b.PutRows {
			k := RowRef{r.Table, r.ID}
			delete(gone, k)
			if i, ok := idx[k]; ok {
				s.Rows[i] = r
			} else {
				idx[k] = len(s.Rows)
				s.Rows = append(s.Rows, r)
			}
		}
		s.Rows = filterRows(s.Rows, func(r *StoredRow) bool { return !gone[RowRef{r.Table, r.ID}] })
	}
	if len(b.DeleteOutbox) > 0 || len(b.PutOutbox) > 0 {
		bySeq := map[int64]*OutboxEntry{}
		for _, e := range s.Outbox {
			bySeq[e.Seq] = e
		}
		for _, q := range b.DeleteOutbox {
			delete(bySeq, q)
		}
		for _, e := range b.PutOutbox {
			bySeq[e.Seq] = e
		}
		s.Outbox = s.Outbox[:0:0]
		for _, e := range bySeq {
			s.Outbox = append(s.Outbox, e)
		}
		sort.Slice(s.Outbox, func(i, j int) bool { return s.Outbox[i].Seq < s.Outbox[j].Seq })
	}
	for k, v := range b.Meta {
		s.Meta[k] = v
	}
}

func filterRows(rows []*StoredRow, keep func(*StoredRow) bool) []*StoredRow {
	out := rows[:0:0]
	for _, r := range rows {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// MemoryStorage keeps everything in memory, for tests and short-lived tools.
type MemoryStorage struct {
	state StoredState
}

// NewMemoryStorage returns an empty in-memory storage.
func NewMemoryStorage() *MemoryStorage {
	return &MemoryStorage{state: StoredState{Meta: map[string]string{}}}
}

// Load returns a copy of the stored state.
func (m *MemoryStorage) Load(context.Context) (*StoredState, error) {
	meta := map[string]string{}
	for k, v := range m.state.Meta {
		meta[k] = v
	}
	return &StoredState{
		Meta:   meta,
		Tables: append([]*pb.SyncTableSpec(nil), m.state.Tables...),
		Rows:   append([]*StoredRow(nil), m.state.Rows...),
		Outbox: append([]*OutboxEntry(nil), m.state.Outbox...),
	}, nil
}

// Commit applies a batch.
func (m *MemoryStorage) Commit(_ context.Context, b *Batch) error {
	applyBatch(&m.state, b)
	return nil
}

// Close does nothing.
func (m *MemoryStorage) Close() error { return nil }
