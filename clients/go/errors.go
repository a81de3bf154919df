package arcana

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/arcana-sync/arcana/clients/go/arcanapb"
)

// Error is a failed Arcana request: the gRPC status code the server (or the
// transport) gave, and its message. Every error this package returns for a
// request that reached the server, or could not reach it, is an *Error, so
//
//	var e *arcana.Error
//	if errors.As(err, &e) && e.Code == codes.NotFound { ... }
//
// works, and so do status.Code(err) and arcana.Code(err).
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's explanation.
	Message string
	// Op names what failed ("subscribe project_tasks", "mutate create_task", ...).
	Op string
}

func (e *Error) Error() string {
	if e.Op != "" {
		return fmt.Sprintf("arcana: %s: %s: %s", e.Op, e.Code, e.Message)
	}
	return fmt.Sprintf("arcana: %s: %s", e.Code, e.Message)
}

// GRPCStatus lets status.FromError and status.Code read the code.
func (e *Error) GRPCStatus() *status.Status {
	return status.New(e.Code, e.Message)
}

// Is matches another *Error with the same code, so
// errors.Is(err, &arcana.Error{Code: codes.NotFound}) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// ErrClosed is returned by calls on a closed Client or View.
var ErrClosed = errors.New("arcana: closed")

// Code returns the gRPC code of err: codes.OK for nil, the code of an *Error
// or a gRPC status, codes.Canceled / codes.DeadlineExceeded for context
// errors, and codes.Unknown otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return status.FromContextError(err).Code()
}

func fromPB(op string, e *pb.Error) *Error {
	return &Error{Code: codes.Code(e.GetCode()), Message: e.GetMessage(), Op: op}
}

// fromStatus converts a transport or status error into an *Error.
func fromStatus(op string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	return &Error{Code: s.Code(), Message: s.Message(), Op: op}
}

func errLost(op string) *Error {
	return &Error{
		Code:    codes.Unavailable,
		Message: "the session ended before the reply arrived; the request may or may not have taken effect",
		Op:      op,
	}
}
