//! Who is calling: the identity every session and call runs under.

use std::sync::Arc;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user_id: Arc<str>,
    /// The tenant; a caller only ever sees views of its own workspace.
    pub workspace_id: Arc<str>,
    /// A role name, free-form.
    pub role: String,
    /// Fine-grained permissions; `*` grants all.
    pub permissions: Vec<String>,
}

impl Identity {
    /// An identity with no permissions.
    pub fn new(user_id: &str, workspace_id: &str) -> Self {
        Identity {
            user_id: user_id.into(),
            workspace_id: workspace_id.into(),
            role: String::new(),
            permissions: Vec::new(),
        }
    }
    /// Adds permissions.
    pub fn with_permissions<S: Into<String>>(mut self, ps: impl IntoIterator<Item = S>) -> Self {
        self.permissions.extend(ps.into_iter().map(Into::into));
        self
    }
    /// Whether the identity holds `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission || p == "*")
    }
    /// The first of `required` the identity lacks.
    pub fn missing<'a>(&self, required: &'a [String]) -> Option<&'a str> {
        required
            .iter()
            .find(|p| !self.has_permission(p))
            .map(String::as_str)
    }
}

/// The scope a graph is evaluated in: the workspace, and the user for graphs
/// declared per-user (for shared graphs the user is deliberately absent, so a
/// factory cannot make a shared view depend on who asked first).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The workspace.
    pub workspace_id: Arc<str>,
    /// The user, for per-user graphs only.
    pub user_id: Option<Arc<str>>,
    /// The caller's role, for mutations only: a shared view must not
    /// depend on the role of whoever asked first.
    pub role: Option<Arc<str>>,
}
