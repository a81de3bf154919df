//! `[auth]`: static tokens and JWTs.

use serde::Deserialize;

/// `[auth]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens, for development and trusted services.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// JWT settings.
    pub jwt: Option<JwtConfig>,
}

/// One static token.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token.
    pub token: String,
    /// User id.
    pub user: String,
    /// Workspace id.
    pub workspace: String,
    /// Role.
    #[serde(default)]
    pub role: String,
    /// Permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// `[auth.jwt]`: signed tokens, checked with an HS256 secret and/or the
/// public keys of a JWKS (RS256, ES256, EdDSA).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The HS256 shared secret.
    pub secret: Option<String>,
    /// An environment variable holding the HS256 secret (preferred).
    pub secret_env: Option<String>,
    /// A JWKS file with the public keys tokens may be signed with.
    pub jwks_file: Option<String>,
    /// An HTTPS URL serving the JWKS (an identity provider's `jwks_uri`).
    pub jwks_url: Option<String>,
    /// Seconds between fetches of `jwks_url`: the keys are refreshed this
    /// often, and a token naming an unknown `kid` triggers at most one
    /// fetch per interval.
    pub jwks_refresh_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// The claim holding the workspace id.
    pub workspace_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            secret_env: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            require_exp: true,
            leeway_secs: 30,
            issuer: None,
            audience: None,
            workspace_claim: "workspace".into(),
        }
    }
}
