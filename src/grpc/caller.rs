//! Who is calling: the caller's credentials, checked once per call, bound
//! to the connection the call came on.

use tonic::Status;

use crate::auth::{identify, Authenticator, Credentials};

/// Authenticates a call like [`identify`](crate::auth::identify), and acts on its connection: a
/// connection whose call failed authentication is closed once its open
/// calls end (GOAWAY), so a peer cannot hold it with one refused request;
/// a successful call counts the connection against its identity
/// (`server.max_connections_per_identity`).
pub async fn identify_call<T>(
    auth: &dyn Authenticator,
    req: &tonic::Request<T>,
) -> Result<Credentials, Status> {
    let conn = req
        .extensions()
        .get::<super::listener::ConnInfo>()
        .map(|c| c.state.clone());
    let r = identify(auth, req.metadata()).await;
    if let Some(conn) = conn {
        let r = r.and_then(|c| conn.bind_identity(&c.identity).map(|()| c));
        if r.is_err() {
            conn.close_when_done();
        }
        return r;
    }
    r
}
