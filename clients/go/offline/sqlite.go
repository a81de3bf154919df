package offline

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"

	// The pure-Go SQLite driver ("sqlite"): no cgo needed.
	_ "modernc.org/sqlite"
)

// SQLiteStorage keeps a store in a SQLite file. Each synced table is a SQL
// table with its columns, so the app can query it (DB); the `_row` column
// holds the exact values the store reads back.
type SQLiteStorage struct {
	db *sql.DB
}

var affinity = map[string]string{"int": "INTEGER", "bool": "INTEGER", "float": "REAL", "bytes": "BLOB"}

// OpenSQLite opens (or creates) the SQLite file at path.
func OpenSQLite(path string) (*SQLiteStorage, error) {
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("offline: opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	_, err = db.Exec(`
		CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
		CREATE TABLE IF NOT EXISTS _specs (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
		CREATE TABLE IF NOT EXISTS _outbox (seq INTEGER PRIMARY KEY, row_id TEXT NOT NULL, bundle_id TEXT NOT NULL, intent BLOB NOT NULL);`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("offline: preparing %s: %w", path, err)
	}
	return &SQLiteStorage{db: db}, nil
}

// DB is the database, for read-only queries of the synced tables.
func (s *SQLiteStorage) DB() *sql.DB { return s.db }

func ident(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

func (s *SQLiteStorage) specs(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) ([]*pb.SyncTableSpec, error) {
	var data []byte
	err := q.QueryRowContext(ctx, "SELECT data FROM _specs WHERE id = 1").Scan(&data)
	if err == sql.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var caps pb.CapabilitiesResponse
	if err := proto.Unmarshal(data, &caps); err != nil {
		return nil, err
	}
	return caps.GetTables(), nil
}

// Load reads everything.
func (s *SQLiteStorage) Load(ctx context.Context) (*StoredState, error) {
	st := &StoredState{Meta: map[string]string{}}
	rows, err := s.db.QueryContext(ctx, "SELECT key, value FROM _meta")
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			return nil, err
		}
		st.Meta[k] = v
	}
	rows.Close()
	if st.Tables, err = s.specs(ctx, s.db); err != nil {
		return nil, err
	}
	for _, t := range st.Tables {
		rows, err := s.db.QueryContext(ctx, "SELECT _id, _scope, _version, _row FROM "+ident(t.GetName()))
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var r StoredRow
			var data []byte
			var version int64
			if err := rows.Scan(&r.ID, &r.Scope, &version, &data); err != nil {
				rows.Close()
				return nil, err
			}
			var row pb.Row
			if err := proto.Unmarshal(data, &row); err != nil {
				rows.Close()
				return nil, err
			}
			r.Table, r.Version, r.Values = t.GetName(), uint64(version), row.GetFields()
			st.Rows = append(st.Rows, &r)
		}
		rows.Close()
	}
	rows, err = s.db.QueryContext(ctx, "SELECT seq, row_id, bundle_id, intent FROM _outbox ORDER BY seq")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var e OutboxEntry
		var bundle string
		var data []byte
		if err := rows.Scan(&e.Seq, &e.ID, &bundle, &data); err != nil {
			return nil, err
		}
		var in pb.RowIntent
		if err := proto.Unmarshal(data, &in); err != nil {
			return nil, err
		}
		e.BundleID, _ = strconv.ParseUint(bundle, 10, 64)
		e.Table, e.Op, e.Values, e.BaseVersion, e.ClientTimeMs = in.GetTable(), in.GetOp(), in.GetValues(), in.GetBaseVersion(), in.GetClientTimeUnixMs()
		st.Outbox = append(st.Outbox, &e)
	}
	return st, rows.Err()
}

// Commit applies a batch in one SQLite transaction.
func (s *SQLiteStorage) Commit(ctx context.Context, b *Batch) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	tables, err := s.specs(ctx, tx)
	if err != nil {
		return err
	}
	if b.SetTables {
		for _, t := range tables {
			if _, err = tx.ExecContext(ctx, "DROP TABLE IF EXISTS "+ident(t.GetName())); err != nil {
				return err
			}
		}
		for _, t := range b.Tables {
			cols := ""
			for _, c := range t.GetColumns() {
				a := affinity[c.GetKind()]
				if a == "" {
					a = "TEXT"
				}
				cols += ", " + ident(c.GetName()) + " " + a
			}
			if _, err = tx.ExecContext(ctx, "CREATE TABLE "+ident(t.GetName())+
				" (_id TEXT PRIMARY KEY, _scope TEXT NOT NULL, _version INTEGER NOT NULL, _row BLOB NOT NULL"+cols+")"); err != nil {
				return err
			}
			if _, err = tx.ExecContext(ctx, "CREATE INDEX "+ident(t.GetName()+"__scope")+" ON "+ident(t.GetName())+" (_scope)"); err != nil {
				return err
			}
		}
		data, _ := proto.Marshal(&pb.CapabilitiesResponse{Tables: b.Tables})
		if _, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO _specs (id, data) VALUES (1, ?)", data); err != nil {
			return err
		}
		tables = b.Tables
	}
	specs := map[string]*pb.SyncTableSpec{}
	for _, t := range tables {
		specs[t.GetName()] = t
	}
	for _, t := range tables {
		if b.ClearRows {
			if _, err = tx.ExecContext(ctx, "DELETE FROM "+ident(t.GetName())); err != nil {
				return err
			}
		}
		for _, sc := range b.ClearScopes {
			if _, err = tx.ExecContext(ctx, "DELETE FROM "+ident(t.GetName())+" WHERE _scope = ?", sc); err != nil {
				return err
			}
		}
	}
	for _, d := range b.DeleteRows {
		if specs[d.Table] == nil {
			continue
		}
		if _, err = tx.ExecContext(ctx, "DELETE FROM "+ident(d.Table)+" WHERE _id = ?", d.ID); err != nil {
			return err
		}
	}
	for _, r := range b.PutRows {
		spec := specs[r.Table]
		if spec == nil {
			continue
		}
		data, _ := proto.Marshal(&pb.Row{Fields: r.Values})
		names := "_id, _scope, _version, _row"
		marks := "?, ?, ?, ?"
		args := []any{r.ID, r.Scope, int64(r.Version), data}
		for _, c := range spec.GetColumns() {
			names += ", " + ident(c.GetName())
			marks += ", ?"
			args = append(args, sqlValue(r.Values[c.GetName()]))
		}
		if _, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO "+ident(r.Table)+" ("+names+") VALUES ("+marks+")", args...); err != nil {
			return err
		}
	}
	for _, q := range b.DeleteOutbox {
		if _, err = tx.ExecContext(ctx, "DELETE FROM _outbox WHERE seq = ?", q); err != nil {
			return err
		}
	}
	for _, e := range b.PutOutbox {
		data, _ := proto.Marshal(intentOf(e))
		if _, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO _outbox (seq, row_id, bundle_id, intent) VALUES (?, ?, ?, ?)",
			e.Seq, e.ID, strconv.FormatUint(e.BundleID, 10), data); err != nil {
			return err
		}
	}
	for k, v := range b.Meta {
		if _, err = tx.ExecContext(ctx, "INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", k, v); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Close closes the database.
func (s *SQLiteStorage) Close() error { return s.db.Close() }
