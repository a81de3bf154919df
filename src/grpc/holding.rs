//! A response body that keeps something alive until the body is done:
//! a call counts as open (for its connection, peer and identity) for as
//! long as its response streams, not just until its handler returns.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;

/// `body`, holding `guard` until it is dropped.
pub(crate) struct Holding<G> {
    body: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> Holding<G> {
    /// Wraps `body` so that `guard` lives as long as it.
    pub(crate) fn wrap(body: Body, guard: G) -> Body {
        Body::new(Holding {
            body,
            _guard: guard,
        })
    }
}

impl<G: Unpin> http_body::Body for Holding<G> {
    type Data = Bytes;
    type Error = tonic::Status;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
