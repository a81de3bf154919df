//! The one place engine errors become gRPC statuses.

use tonic::{Code, Status};

use crate::engine::EngineError;

/// Maps an engine error to a status with the same message.
pub fn to_status(e: EngineError) -> Status {
    let code = match &e {
        EngineError::InvalidArgument(_) => Code::InvalidArgument,
        EngineError::NotFound(_) => Code::NotFound,
        EngineError::PermissionDenied(_) => Code::PermissionDenied,
        EngineError::ResourceExhausted(_) => Code::ResourceExhausted,
        EngineError::FailedPrecondition(_) => Code::FailedPrecondition,
        EngineError::Unavailable(_) | EngineError::ShuttingDown => Code::Unavailable,
        EngineError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        EngineError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A status as the `Error` message replies carry on the bidirectional stream.
pub fn to_pb_error(s: &Status) -> crate::proto::Error {
    crate::proto::Error {
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}
