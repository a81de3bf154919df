package offline

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	arcana "github.com/arcana-sync/arcana/clients/go"
	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

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
	switch kind {
	case "numeric":
		switch x := v.(type) {
		case string:
			return &pb.Value{Kind: &pb.Value_Numeric{Numeric: x}}, nil
		case arcana.Numeric:
			return &pb.Value{Kind: &pb.Value_Numeric{Numeric: string(x)}}, nil
		case int, int64, float64:
			return &pb.Value{Kind: &pb.Value_Numeric{Numeric: fmt.Sprint(x)}}, nil
		}
		return bad()
	case "uuid":
		switch x := v.(type) {
		case string:
			return &pb.Value{Kind: &pb.Value_Uuid{Uuid: x}}, nil
		case arcana.UUID:
			return &pb.Value{Kind: &pb.Value_Uuid{Uuid: string(x)}}, nil
		}
		return bad()
	case "date":
		switch x := v.(type) {
		case string:
			return &pb.Value{Kind: &pb.Value_Date{Date: x}}, nil
		case arcana.Date:
			return &pb.Value{Kind: &pb.Value_Date{Date: string(x)}}, nil
		case time.Time:
			return &pb.Value{Kind: &pb.Value_Date{Date: x.Format("2006-01-02")}}, nil
		}
		return bad()
	case "json":
		switch x := v.(type) {
		case arcana.JSON:
			return &pb.Value{Kind: &pb.Value_Json{Json: string(x)}}, nil
		case json.RawMessage:
			return &pb.Value{Kind: &pb.Value_Json{Json: string(x)}}, nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s.%s: %v", table, column, err)
		}
		return &pb.Value{Kind: &pb.Value_Json{Json: string(b)}}, nil
	case "timestamp":
		if t, ok := v.(time.Time); ok {
			return &pb.Value{Kind: &pb.Value_Timestamp{Timestamp: timestamppb.New(t)}}, nil
		}
		return bad()
	case "float":
		switch x := v.(type) {
		case float64:
			return &pb.Value{Kind: &pb.Value_Float{Float: x}}, nil
		case float32:
			return &pb.Value{Kind: &pb.Value_Float{Float: float64(x)}}, nil
		case int:
			return &pb.Value{Kind: &pb.Value_Float{Float: float64(x)}}, nil
		case int64:
			return &pb.Value{Kind: &pb.Value_Float{Float: float64(x)}}, nil
		}
		return bad()
	}
	pv, err := arcana.ToValue(v)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s.%s: %v", table, column, err)
	}
	want := map[string]string{"int": "*arcanapb.Value_Int", "bool": "*arcanapb.Value_Bool", "string": "*arcanapb.Value_String_", "bytes": "*arcanapb.Value_Bytes"}
	if w, ok := want[kind]; ok && fmt.Sprintf("%T", pv.GetKind()) != w {
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
