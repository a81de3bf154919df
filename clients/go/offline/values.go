package offline

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// The store converts values only through arcana.ToValue and arcana.FromValue,
// so a kind is encoded and decoded the same way here as in the client.

// kindField is the oneof of arcana.v1.Value; its field names are the kind
// names table specs use ("int", "timestamp", ...).
var kindField = (&pb.Value{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")

// kindOf names the kind v holds ("" for none).
func kindOf(v *pb.Value) string {
	f := v.ProtoReflect().WhichOneof(kindField)
	if f == nil {
		return ""
	}
	return string(f.Name())
}

// errKind marks a Go value that cannot stand for a column's kind.
var errKind = errors.New("wrong kind")

// asKind gives v the Go type that arcana.ToValue encodes as kind, where a
// plain Go value could mean several kinds (a string may be a numeric, a uuid
// or a date). Other values are returned as they are.
func asKind(kind string, v any) (any, error) {
	switch kind {
	case "numeric":
		switch x := v.(type) {
		case string:
			return arcana.Numeric(x), nil
		case arcana.Numeric:
			return x, nil
		case int, int64, float64:
			return arcana.Numeric(fmt.Sprint(x)), nil
		}
		return nil, errKind
	case "uuid":
		switch x := v.(type) {
		case string:
			return arcana.UUID(x), nil
		case arcana.UUID:
			return x, nil
		}
		return nil, errKind
	case "date":
		switch x := v.(type) {
		case string:
			return arcana.Date(x), nil
		case arcana.Date:
			return x, nil
		case time.Time:
			return arcana.Date(x.Format("2006-01-02")), nil
		}
		return nil, errKind
	case "json":
		switch x := v.(type) {
		case arcana.JSON, json.RawMessage:
			return x, nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return arcana.JSON(b), nil
	case "timestamp":
		if x, ok := v.(time.Time); ok {
			return x, nil
		}
		return nil, errKind
	case "float":
		switch x := v.(type) {
		case float64:
			return x, nil
		case float32:
			return float64(x), nil
		case int:
			return float64(x), nil
		case int64:
			return float64(x), nil
		}
		return nil, errKind
	}
	return v, nil
}

// valueForKind encodes v as the Value kind a column travels as.
func valueForKind(table, column, kind string, v any) (*pb.Value, error) {
	if v == nil {
		return arcana.Null, nil
	}
	if pv, ok := v.(*pb.Value); ok {
		return pv, nil
	}
	bad := func() (*pb.Value, error) {
		return nil, status.Errorf(codes.InvalidArgument, "%s.%s is %s; got a %T", table, column, kind, v)
	}
	x, err := asKind(kind, v)
	if err == errKind {
		return bad()
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s.%s: %v", table, column, err)
	}
	pv, err := arcana.ToValue(x)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s.%s: %v", table, column, err)
	}
	// A kind the Value message knows must be the one the value got.
	if kindField.Fields().ByName(protoreflect.Name(kind)) != nil && kindOf(pv) != kind {
		return bad()
	}
	return pv, nil
}

// encodeRow encodes a row's Go values by the table's column kinds.
func encodeRow(spec *pb.SyncTableSpec, values map[string]any) (map[string]*pb.Value, error) {
	kinds := map[string]string{}
	for _, c := range spec.GetColumns() {
		kinds[c.GetName()] = c.GetKind()
	}
	out := map[string]*pb.Value{}
	for k, v := range values {
		kind, ok := kinds[k]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "%s has no column %s", spec.GetName(), k)
		}
		pv, err := valueForKind(spec.GetName(), k, kind, v)
		if err != nil {
			return nil, err
		}
		out[k] = pv
	}
	return out, nil
}

// text is a decoded value as row ids and the SQL tables carry it: numbers,
// bools and the text kinds as themselves, timestamps in RFC 3339 (UTC);
// null and bytes have none.
func text(x any) string {
	switch x := x.(type) {
	case nil, []byte:
		return ""
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	default:
		// int64, bool, string, and Numeric, JSON, UUID and Date (strings).
		return fmt.Sprint(x)
	}
}

// keyText is one key value as row ids carry it.
func keyText(v *pb.Value) string { return text(arcana.FromValue(v)) }

// isNull tells a missing or SQL NULL value.
func isNull(v *pb.Value) bool { return arcana.FromValue(v) == nil }

// sqlValue is a value as its SQL column stores it: bools as 0 or 1, what has
// a SQLite type of its own as itself, the rest as text.
func sqlValue(v *pb.Value) any {
	switch x := arcana.FromValue(v).(type) {
	case nil:
		return nil
	case bool:
		if x {
			return 1
		}
		return 0
	case int64, float64, []byte:
		return x
	default:
		return text(x)
	}
}
