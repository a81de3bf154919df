//! The engine's error type. The gRPC layer maps each variant to one status.

/// Why an engine call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Bad input: unknown or mistyped params, malformed requests.
    #[error("{0}")]
    InvalidArgument(String),
    /// An unknown graph, mutation, view or session.
    #[error("{0}")]
    NotFound(String),
    /// The caller lacks a permission.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// What the request would create is already there.
    #[error("{0}")]
    AlreadyExists(String),
    /// A graph or mutation failed for a reason the caller can fix.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database or another dependency is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A query ran past its time limit.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A transaction lost to a concurrent one (deadlock, serialization
    /// failure) and still did after its retries; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

/// The failure of a graph factory or mutation handler.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// How the caller should treat it.
    pub kind: EvalErrorKind,
    /// What went wrong, for a person.
    pub message: String,
}

/// The class of an [`EvalError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalErrorKind {
    /// The input was rejected by the database (bad value, check violation).
    InvalidArgument,
    /// A precondition failed (constraint, missing row).
    FailedPrecondition,
    /// The database is unreachable.
    Unavailable,
    /// The rows a mutation expected to touch do not exist.
    NotFound,
    /// The database refused the caller (row-level security, privileges).
    PermissionDenied,
    /// A query ran past its time limit.
    DeadlineExceeded,
    /// The transaction lost to a concurrent one (deadlock, serialization
    /// failure): running it again may succeed.
    Aborted,
    /// Anything else.
    Internal,
}

impl EvalError {
    /// An error of the given kind.
    pub fn new(kind: EvalErrorKind, message: impl Into<String>) -> Self {
        EvalError {
            kind,
            message: message.into(),
        }
    }
    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(EvalErrorKind::Internal, message)
    }
}

impl From<EvalError> for EngineError {
    fn from(e: EvalError) -> Self {
        match e.kind {
            EvalErrorKind::InvalidArgument => EngineError::InvalidArgument(e.message),
            EvalErrorKind::FailedPrecondition => EngineError::FailedPrecondition(e.message),
            EvalErrorKind::Unavailable => EngineError::Unavailable(e.message),
            EvalErrorKind::NotFound => EngineError::NotFound(e.message),
            EvalErrorKind::PermissionDenied => EngineError::PermissionDenied(e.message),
            EvalErrorKind::DeadlineExceeded => EngineError::DeadlineExceeded(e.message),
            EvalErrorKind::Aborted => EngineError::Aborted(e.message),
            EvalErrorKind::Internal => EngineError::Internal(e.message),
        }
    }
}
