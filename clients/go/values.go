package arcana

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Params are the parameters of a graph or a mutation. Values may be Go
// values (see ToValue) or *arcanapb.Value.
type Params map[string]any

// Numeric is a Postgres numeric as exact decimal text ("12.50", "NaN").
type Numeric string

// JSON is a json/jsonb value as its original text, numbers exactly as stored.
type JSON string

// UUID is a uuid in lower-case canonical form.
type UUID string

// Date is a date as YYYY-MM-DD.
type Date string

// Null is the SQL NULL, for passing an explicit null parameter.
var Null = &pb.Value{Kind: &pb.Value_Null{Null: structpb.NullValue_NULL_VALUE}}

// ToValue converts a Go value to an Arcana value:
//
//	nil                        -> null
//	bool                       -> bool
//	int, int8..int64, uint8..uint32, uint64 (up to MaxInt64) -> int
//	float32, float64           -> float
//	string                     -> string
//	Numeric, JSON, UUID, Date  -> numeric, json, uuid, date
//	json.RawMessage            -> json
//	time.Time                  -> timestamp
//	[]byte                     -> bytes
//	*arcanapb.Value            -> itself
//	pointers to the above      -> the value, or null for a nil pointer
func ToValue(v any) (*pb.Value, error) {
	switch x := v.(type) {
	case nil:
		return Null, nil
	case *pb.Value:
		if x == nil {
			return Null, nil
		}
		return x, nil
	case bool:
		return &pb.Value{Kind: &pb.Value_Bool{Bool: x}}, nil
	case int:
		return intValue(int64(x)), nil
	case int8:
		return intValue(int64(x)), nil
	case int16:
		return intValue(int64(x)), nil
	case int32:
		return intValue(int64(x)), nil
	case int64:
		return intValue(x), nil
	case uint8:
		return intValue(int64(x)), nil
	case uint16:
		return intValue(int64(x)), nil
	case uint32:
		return intValue(int64(x)), nil
	case uint:
		if uint64(x) > math.MaxInt64 {
			return nil, fmt.Errorf("arcana: %d does not fit a 64-bit signed integer", x)
		}
		return intValue(int64(x)), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, fmt.Errorf("arcana: %d does not fit a 64-bit signed integer", x)
		}
		return intValue(int64(x)), nil
	case float32:
		return &pb.Value{Kind: &pb.Value_Float{Float: float64(x)}}, nil
	case float64:
		return &pb.Value{Kind: &pb.Value_Float{Float: x}}, nil
	case string:
		return &pb.Value{Kind: &pb.Value_String_{String_: x}}, nil
	case Numeric:
		return &pb.Value{Kind: &pb.Value_Numeric{Numeric: string(x)}}, nil
	case JSON:
		return &pb.Value{Kind: &pb.Value_Json{Json: string(x)}}, nil
	case json.RawMessage:
		return &pb.Value{Kind: &pb.Value_Json{Json: string(x)}}, nil
	case UUID:
		return &pb.Value{Kind: &pb.Value_Uuid{Uuid: string(x)}}, nil
	case Date:
		return &pb.Value{Kind: &pb.Value_Date{Date: string(x)}}, nil
	case time.Time:
		return &pb.Value{Kind: &pb.Value_Timestamp{Timestamp: timestamppb.New(x)}}, nil
	case []byte:
		return &pb.Value{Kind: &pb.Value_Bytes{Bytes: append([]byte(nil), x...)}}, nil
	case *string:
		return derefValue(x)
	case *int:
		return derefValue(x)
	case *int64:
		return derefValue(x)
	case *bool:
		return derefValue(x)
	case *float64:
		return derefValue(x)
	case *time.Time:
		return derefValue(x)
	default:
		return nil, fmt.Errorf("arcana: cannot send a %T as a value", v)
	}
}

// derefValue converts what p points to; a nil pointer is null.
func derefValue[T any](p *T) (*pb.Value, error) {
	if p == nil {
		return Null, nil
	}
	return ToValue(*p)
}

func intValue(i int64) *pb.Value {
	return &pb.Value{Kind: &pb.Value_Int{Int: i}}
}

// FromValue converts an Arcana value to Go: nil, bool, int64, float64,
// string, Numeric, time.Time (UTC), JSON, []byte, UUID or Date. Integers stay
// int64, so values beyond 2^53 keep every digit.
func FromValue(v *pb.Value) any {
	switch k := v.GetKind().(type) {
	case nil, *pb.Value_Null:
		return nil
	case *pb.Value_Bool:
		return k.Bool
	case *pb.Value_Int:
		return k.Int
	case *pb.Value_Float:
		return k.Float
	case *pb.Value_String_:
		return k.String_
	case *pb.Value_Numeric:
		return Numeric(k.Numeric)
	case *pb.Value_Timestamp:
		return k.Timestamp.AsTime()
	case *pb.Value_Json:
		return JSON(k.Json)
	case *pb.Value_Bytes:
		return k.Bytes
	case *pb.Value_Uuid:
		return UUID(k.Uuid)
	case *pb.Value_Date:
		return Date(k.Date)
	default:
		return nil
	}
}

func toValues(p Params) (map[string]*pb.Value, error) {
	out := make(map[string]*pb.Value, len(p))
	for k, v := range p {
		pv, err := ToValue(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %q: %w", k, err)
		}
		out[k] = pv
	}
	return out, nil
}
