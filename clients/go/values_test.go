package arcana

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Every kind goes through ToValue to the Value it names and back through
// FromValue to the same Go value.
func TestValueRoundTrip(t *testing.T) {
	ts := time.Date(2024, 2, 29, 23, 59, 59, 123456789, time.UTC)
	cases := []struct {
		name string
		in   any
		kind string
		out  any
	}{
		{"null", nil, "null", nil},
		{"true", true, "bool", true},
		{"false", false, "bool", false},
		{"int", 42, "int", int64(42)},
		{"int8", int8(-8), "int", int64(-8)},
		{"uint32", uint32(math.MaxUint32), "int", int64(math.MaxUint32)},
		{"max int64", int64(math.MaxInt64), "int", int64(math.MaxInt64)},
		{"min int64", int64(math.MinInt64), "int", int64(math.MinInt64)},
		{"beyond 2^53", int64(1)<<53 + 1, "int", int64(1)<<53 + 1},
		{"max uint64 that fits", uint64(math.MaxInt64), "int", int64(math.MaxInt64)},
		{"float", 1.5, "float", 1.5},
		{"float32", float32(0.25), "float", 0.25},
		{"string", "héllo", "string", "héllo"},
		{"empty string", "", "string", ""},
		{"numeric", Numeric("12.50"), "numeric", Numeric("12.50")},
		{"numeric NaN", Numeric("NaN"), "numeric", Numeric("NaN")},
		{"numeric beyond int64", Numeric("123456789012345678901234567890.000001"), "numeric", Numeric("123456789012345678901234567890.000001")},
		{"timestamp", ts, "timestamp", ts},
		{"timestamp in a zone", ts.In(time.FixedZone("x", 3600)), "timestamp", ts},
		{"json", JSON(`{"n":12345678901234567890}`), "json", JSON(`{"n":12345678901234567890}`)},
		{"raw json", json.RawMessage(`[1,2]`), "json", JSON(`[1,2]`)},
		{"bytes", []byte{0, 1, 255}, "bytes", []byte{0, 1, 255}},
		{"uuid", UUID("0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a"), "uuid", UUID("0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a")},
		{"date", Date("2024-02-29"), "date", Date("2024-02-29")},
		{"pointer", ptr(int64(7)), "int", int64(7)},
		{"time pointer", &ts, "timestamp", ts},
		{"nil pointer", (*string)(nil), "null", nil},
		{"nil value", (*pb.Value)(nil), "null", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := ToValue(c.in)
			if err != nil {
				t.Fatal(err)
			}
			f := v.ProtoReflect().WhichOneof(v.ProtoReflect().Descriptor().Oneofs().ByName("kind"))
			if f == nil || string(f.Name()) != c.kind {
				t.Fatalf("kind %v, want %s", f, c.kind)
			}
			got := FromValue(v)
			switch want := c.out.(type) {
			case time.Time:
				if g, ok := got.(time.Time); !ok || !g.Equal(want) || g.Location() != time.UTC {
					t.Fatalf("got %v, want %v (UTC)", got, want)
				}
			case []byte:
				if g, ok := got.([]byte); !ok || !bytes.Equal(g, want) {
					t.Fatalf("got %v, want %v", got, want)
				}
			default:
				if got != c.out {
					t.Fatalf("got %#v, want %#v", got, c.out)
				}
			}
			// And back again: the decoded value encodes to the same Value.
			again, err := ToValue(got)
			if err != nil || !proto.Equal(again, v) {
				t.Fatalf("second round: %v (%v), want %v", again, err, v)
			}
		})
	}
}

func TestValueEdges(t *testing.T) {
	for _, bad := range []any{uint64(math.MaxInt64) + 1, uint(math.MaxUint64), struct{}{}, []int{1}, map[string]any{}} {
		if _, err := ToValue(bad); err == nil {
			t.Errorf("%T accepted", bad)
		}
	}
	// The bytes are copied: changing the caller's slice later changes nothing.
	b := []byte{1, 2}
	v, _ := ToValue(b)
	b[0] = 9
	if got := FromValue(v).([]byte); got[0] != 1 {
		t.Errorf("bytes not copied: %v", got)
	}
	// An explicit Value is passed through as it is.
	if v, _ := ToValue(Null); v != Null {
		t.Errorf("Null replaced: %v", v)
	}
	// A Value without a kind decodes as null.
	if FromValue(&pb.Value{}) != nil || FromValue(nil) != nil {
		t.Error("a Value without a kind is not null")
	}
	vals, err := toValues(Params{"a": 1, "b": "x"})
	if err != nil || FromValue(vals["a"]) != int64(1) || FromValue(vals["b"]) != "x" {
		t.Errorf("toValues: %v %v", vals, err)
	}
	if _, err := toValues(Params{"bad": struct{}{}}); err == nil {
		t.Error("toValues accepted a struct")
	}
}

func ptr[T any](v T) *T { return &v }

// Row and MutateResult read fields through FromValue.
func TestTypedGetters(t *testing.T) {
	fields := map[string]*pb.Value{}
	for name, v := range map[string]any{
		"s": "x", "n": Numeric("1.50"), "j": JSON(`[1]`), "u": UUID("ab"), "d": Date("2024-02-29"),
		"i": int64(1)<<53 + 1, "f": 1.5, "b": true, "t": time.Unix(0, 0), "z": nil, "y": []byte("x"),
	} {
		fields[name] = mustValue(t, v)
	}
	r := &Row{Fields: fields}
	for name, want := range map[string]string{"s": "x", "n": "1.50", "j": "[1]", "u": "ab", "d": "2024-02-29"} {
		if got, ok := r.String(name); !ok || got != want {
			t.Errorf("String(%s) = %q %v, want %q", name, got, ok, want)
		}
	}
	for _, name := range []string{"i", "f", "b", "t", "z", "y", "missing"} {
		if got, ok := r.String(name); ok {
			t.Errorf("String(%s) = %q, want none", name, got)
		}
	}
	if i, ok := r.Int("i"); !ok || i != int64(1)<<53+1 {
		t.Errorf("Int(i) = %d %v", i, ok)
	}
	m := &MutateResult{Data: fields}
	if i, ok := m.Int("i"); !ok || i != int64(1)<<53+1 {
		t.Errorf("MutateResult.Int(i) = %d %v", i, ok)
	}
	for _, name := range []string{"f", "s", "z", "missing"} {
		if _, ok := r.Int(name); ok {
			t.Errorf("Int(%s) accepted", name)
		}
		if _, ok := m.Int(name); ok {
			t.Errorf("MutateResult.Int(%s) accepted", name)
		}
	}
}

func mustValue(t *testing.T, v any) *pb.Value {
	t.Helper()
	pv, err := ToValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return pv
}
