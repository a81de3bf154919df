//! The one place statuses are built: engine errors become gRPC statuses, and
//! every message has echoed input cut to a readable length.

use tonic::{Code, Status};

use crate::engine::EngineError;

/// Longest piece of echoed input kept in a message, in characters.
pub const ECHO_CHARS: usize = 64;
/// Longest message sent to a client, in characters.
pub const MESSAGE_CHARS: usize = 512;

/// `text` cut to [`ECHO_CHARS`] characters plus "…" when longer.
pub fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    cut(text, ECHO_CHARS)
}

fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((at, _)) => format!("{}…", &text[..at]).into(),
    }
}

/// Cuts every `quoted` span (how messages echo names and values) to
/// [`ECHO_CHARS`], and the whole message to [`MESSAGE_CHARS`].
pub fn tidy(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_CHARS + 8));
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        // Odd pieces sit between a pair of backticks.
        if i % 2 == 0 {
            out.push_str(&shorten(part));
        } else {
            out.push_str(part);
        }
    }
    cut(&out, MESSAGE_CHARS).into_owned()
}

/// A status whose message has echoed input cut short.
pub fn status(code: Code, message: impl AsRef<str>) -> Status {
    Status::new(code, tidy(message.as_ref()))
}

/// Maps an engine error to a status with the same (tidied) message.
pub fn to_status(e: EngineError) -> Status {
    let code = match &e {
        EngineError::InvalidArgument(_) => Code::InvalidArgument,
        EngineError::NotFound(_) => Code::NotFound,
        EngineError::PermissionDenied(_) => Code::PermissionDenied,
        EngineError::ResourceExhausted(_) => Code::ResourceExhausted,
        EngineError::AlreadyExists(_) => Code::AlreadyExists,
        EngineError::FailedPrecondition(_) => Code::FailedPrecondition,
        EngineError::Unavailable(_) | EngineError::ShuttingDown => Code::Unavailable,
        EngineError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        EngineError::Aborted(_) => Code::Aborted,
        EngineError::Internal(_) => Code::Internal,
    };
    status(code, e.to_string())
}

/// A status as the `Error` message replies carry on the bidirectional stream.
pub fn to_pb_error(s: &Status) -> crate::proto::Error {
    crate::proto::Error {
        code: s.code() as i32,
        message: tidy(s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_cut_and_the_rest_kept() {
        let long = "x".repeat(200_000);
        let m = tidy(&format!("unknown graph `{long}`; see Describe"));
        assert!(m.starts_with("unknown graph `xxxx"), "{m}");
        assert!(m.ends_with("…`; see Describe"), "{m}");
        assert!(m.chars().count() < 120, "{m}");
        assert_eq!(tidy("plain `short` text"), "plain `short` text");
        assert!(tidy(&"é".repeat(10_000)).chars().count() <= MESSAGE_CHARS + 1);
        // An unpaired backtick leaves the tail to the overall cap.
        assert!(tidy(&format!("odd ` {long}")).chars().count() <= MESSAGE_CHARS + 1);
    }
}
