package offline

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

func mustValue(t *testing.T, v any) *pb.Value {
	t.Helper()
	pv, err := arcana.ToValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return pv
}

// Each column kind takes the Go values that can stand for it and encodes
// them as arcana.ToValue does.
func TestValueForKind(t *testing.T) {
	ts := time.Date(2024, 2, 29, 12, 0, 0, 5, time.UTC)
	cases := []struct {
		kind string
		in   any
		want any // what arcana.ToValue gets
	}{
		{"int", 7, 7},
		{"int", int64(math.MaxInt64), int64(math.MaxInt64)},
		{"float", 1.5, 1.5},
		{"float", float32(0.5), 0.5},
		{"float", 3, 3.0},
		{"float", int64(1) << 53, float64(int64(1) << 53)},
		{"bool", true, true},
		{"string", "x", "x"},
		{"numeric", "12.50", arcana.Numeric("12.50")},
		{"numeric", arcana.Numeric("-0.001"), arcana.Numeric("-0.001")},
		{"numeric", 12, arcana.Numeric("12")},
		{"numeric", int64(math.MaxInt64), arcana.Numeric("9223372036854775807")},
		{"numeric", 0.25, arcana.Numeric("0.25")},
		{"uuid", "0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a", arcana.UUID("0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a")},
		{"date", "2024-02-29", arcana.Date("2024-02-29")},
		{"date", ts, arcana.Date("2024-02-29")},
		{"timestamp", ts, ts},
		{"json", arcana.JSON(`{"a":1}`), arcana.JSON(`{"a":1}`)},
		{"json", json.RawMessage(`[1]`), arcana.JSON(`[1]`)},
		{"json", map[string]any{"a": []int{1, 2}}, arcana.JSON(`{"a":[1,2]}`)},
		{"bytes", []byte{1, 2}, []byte{1, 2}},
		{"int", nil, nil},
		{"int", arcana.Null, nil},
	}
	for _, c := range cases {
		got, err := valueForKind("t", "c", c.kind, c.in)
		if err != nil {
			t.Errorf("%s %#v: %v", c.kind, c.in, err)
			continue
		}
		if want := mustValue(t, c.want); !proto.Equal(got, want) {
			t.Errorf("%s %#v: got %v, want %v", c.kind, c.in, got, want)
		}
	}
	// An explicit Value is taken as it is, whatever the column's kind.
	explicit := mustValue(t, "as sent")
	if got, _ := valueForKind("t", "c", "int", explicit); got != explicit {
		t.Errorf("explicit value replaced: %v", got)
	}
}

func TestValueForKindRefuses(t *testing.T) {
	for _, c := range []struct {
		kind string
		in   any
	}{
		{"int", "12"}, {"int", 1.5}, {"bool", 1}, {"string", 1}, {"bytes", "x"},
		{"numeric", true}, {"uuid", 1}, {"date", 1}, {"timestamp", "2024-01-01"}, {"timestamp", &time.Time{}},
		{"float", "1"}, {"json", func() {}}, {"int", uint64(math.MaxUint64)},
	} {
		_, err := valueForKind("t", "c", c.kind, c.in)
		if arcana.Code(err) != codes.InvalidArgument {
			t.Errorf("%s %#v: %v, want InvalidArgument", c.kind, c.in, err)
		}
	}
}

// Row ids and the SQL tables read values through one text form.
func TestValueTexts(t *testing.T) {
	ts := time.Date(2024, 2, 29, 23, 0, 0, 120000000, time.FixedZone("x", -3600))
	cases := []struct {
		in   any
		key  string
		sql  any
		null bool
	}{
		{nil, "", nil, true},
		{int64(math.MinInt64), "-9223372036854775808", int64(math.MinInt64), false},
		{int64(1)<<53 + 1, "9007199254740993", int64(1)<<53 + 1, false},
		{1.5, "1.5", 1.5, false},
		{1e21, "1e+21", 1e21, false},
		{true, "true", 1, false},
		{false, "false", 0, false},
		{"abc", "abc", "abc", false},
		{arcana.Numeric("12.50"), "12.50", "12.50", false},
		{arcana.JSON(`{"a":1}`), `{"a":1}`, `{"a":1}`, false},
		{arcana.UUID("0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a"), "0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a", "0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a", false},
		{arcana.Date("2024-02-29"), "2024-02-29", "2024-02-29", false},
		{ts, "2024-03-01T00:00:00.12Z", "2024-03-01T00:00:00.12Z", false},
	}
	for _, c := range cases {
		v := mustValue(t, c.in)
		if got := keyText(v); got != c.key {
			t.Errorf("keyText(%v) = %q, want %q", c.in, got, c.key)
		}
		if got := sqlValue(v); got != c.sql {
			t.Errorf("sqlValue(%v) = %#v, want %#v", c.in, got, c.sql)
		}
		if isNull(v) != c.null {
			t.Errorf("isNull(%v) = %v", c.in, !c.null)
		}
	}
	b := mustValue(t, []byte{1, 2})
	if keyText(b) != "" {
		t.Errorf("bytes have a key text: %q", keyText(b))
	}
	if got, ok := sqlValue(b).([]byte); !ok || len(got) != 2 {
		t.Errorf("bytes in SQL: %#v", sqlValue(b))
	}
	if !isNull(nil) || !isNull(&pb.Value{}) || keyText(nil) != "" || sqlValue(nil) != nil {
		t.Error("a missing value is not null")
	}
}
