//! Authentication: `authorization: Bearer <token>` to an [`Identity`].
//!
//! [`Authenticator`] is the seam for library users. [`TokenAuthenticator`]
//! covers the standalone server: static tokens from the config (development,
//! trusted services) and JWTs checked with `jsonwebtoken`: HS256 with a
//! shared secret, RS256, ES256 and EdDSA with keys from a JWKS file or URL.
//! Claims: `sub`, a workspace claim, `role`, `permissions` (or `scope`),
//! `exp` (required by default), `nbf`, and `iss`/`aud` when configured.

mod jwks;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value as Json;
use sha2::Sha256;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::config::{AuthConfig, JwtConfig};
use crate::engine::Identity;
use crate::wire::status::{shorten, status};
use jwks::Jwks;

/// Who a token speaks for, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The caller.
    pub identity: Identity,
    /// When the token stops being accepted (its `exp` plus the allowed
    /// leeway); `None` for tokens that do not expire.
    pub expires_at: Option<SystemTime>,
}

impl From<Identity> for Credentials {
    fn from(identity: Identity) -> Self {
        Credentials {
            identity,
            expires_at: None,
        }
    }
}

/// Turns a bearer token into credentials.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks `token`; the error message is shown to the caller.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, String>>;
}

/// Reads the bearer token of a call and authenticates it.
pub async fn identify(auth: &dyn Authenticator, md: &MetadataMap) -> Result<Credentials, Status> {
    let header = md.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    let header = header
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <token>`")
        })?;
    auth.authenticate(token.trim())
        .await
        .map_err(|m| status(Code::Unauthenticated, m))
}

/// The permission to see the caller's workspace's stats (the `Stats` call,
/// DevTools).
pub const ADMIN_PERMISSION: &str = "arcana:admin";
/// The permission to see every workspace's stats.
pub const GLOBAL_ADMIN_PERMISSION: &str = "arcana:global-admin";

/// Whether two identities are the same caller with the same rights: user,
/// workspace, role and the set of permissions.
pub fn same_rights(a: &Identity, b: &Identity) -> bool {
    let set = |i: &Identity| i.permissions.iter().cloned().collect::<BTreeSet<_>>();
    a.user_id == b.user_id
        && a.workspace_id == b.workspace_id
        && a.role == b.role
        && set(a) == set(b)
}

struct Jwt {
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    workspace_claim: String,
    require_exp: bool,
    leeway: u64,
}

/// Static tokens plus optional JWTs, from the `[auth]` config.
pub struct TokenAuthenticator {
    tokens: HashMap<String, Identity>,
    jwt: Option<Jwt>,
}

impl TokenAuthenticator {
    /// Builds from config; fails when the JWT settings name no usable key.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| {
                let mut id =
                    Identity::new(&t.user, &t.workspace).with_permissions(t.permissions.clone());
                id.role = t.role.clone();
                (t.token.clone(), id)
            })
            .collect();
        let jwt = cfg.jwt.as_ref().map(jwt_from_config).transpose()?;
        Ok(TokenAuthenticator { tokens, jwt })
    }
}

fn jwt_from_config(c: &JwtConfig) -> Result<Jwt, String> {
    let secret = match (&c.secret, &c.secret_env) {
        (_, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| format!("auth.jwt.secret_env names `{var}`, which is not set"))?,
        ),
        (Some(s), None) => Some(s.clone()),
        (None, None) => None,
    };
    if secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err("auth.jwt secret is shorter than 16 bytes; use a long random secret".into());
    }
    let jwks = match (&c.jwks_file, &c.jwks_url) {
        (Some(_), Some(_)) => {
            return Err("auth.jwt: set jwks_file or jwks_url, not both".into());
        }
        (Some(path), None) => Some(Jwks::from_file(path)?),
        (None, Some(url)) => Some(Jwks::from_url(
            url,
            Duration::from_secs(c.jwks_refresh_secs.max(1)),
        )?),
        (None, None) => None,
    };
    if secret.is_none() && jwks.is_none() {
        return Err(
            "auth.jwt needs a key: `secret`, `secret_env`, `jwks_file` or `jwks_url`".into(),
        );
    }
    if c.workspace_claim.is_empty() {
        return Err("auth.jwt.workspace_claim is empty".into());
    }
    Ok(Jwt {
        secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
        jwks: jwks.map(Arc::new),
        issuer: c.issuer.clone(),
        audience: c.audience.clone(),
        workspace_claim: c.workspace_claim.clone(),
        require_exp: c.require_exp,
        leeway: c.leeway_secs,
    })
}

impl Authenticator for TokenAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Credentials, String>> {
        Box::pin(async move {
            if let Some(id) = self.tokens.get(token) {
                return Ok(id.clone().into());
            }
            match &self.jwt {
                Some(jwt) if token.matches('.').count() == 2 => verify_jwt(jwt, token).await,
                _ => Err("invalid token".into()),
            }
        })
    }
}

async fn verify_jwt(jwt: &Jwt, token: &str) -> Result<Credentials, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed JWT header")?;
    let keys: Vec<DecodingKey> = match header.alg {
        Algorithm::HS256 => vec![jwt
            .secret
            .clone()
            .ok_or("HS256 JWTs are not accepted here: sign with a key from the configured JWKS")?],
        Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
            let jwks = jwt.jwks.as_ref().ok_or(
                "only HS256 JWTs are accepted here: no JWKS is configured for public-key tokens",
            )?;
            jwks.candidates(header.kid.as_deref(), header.alg)
                .await?
                .into_iter()
                .map(|k| k.key)
                .collect()
        }
        other => {
            return Err(format!(
                "JWT algorithm {other:?} is not accepted; use HS256, RS256, ES256 or EdDSA"
            ))
        }
    };
    let validation = validation(jwt, header.alg);
    let mut last = ErrorKind::InvalidSignature;
    for key in &keys {
        match jsonwebtoken::decode::<Json>(token, key, &validation) {
            Ok(data) => return credentials(jwt, &data.claims),
            // Another key with the same kid (or none) may still match.
            Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
            Err(e) => {
                last = e.into_kind();
                break;
            }
        }
    }
    Err(explain(jwt, &last))
}

fn validation(jwt: &Jwt, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = jwt.leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["sub"];
    if jwt.require_exp {
        required.push("exp");
    }
    if let Some(iss) = &jwt.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &jwt.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn explain(jwt: &Jwt, e: &ErrorKind) -> String {
    match e {
        ErrorKind::InvalidSignature => "JWT signature does not match".into(),
        ErrorKind::ExpiredSignature => "JWT has expired; get a fresh token".into(),
        ErrorKind::ImmatureSignature => "JWT is not valid yet (`nbf` is in the future)".into(),
        ErrorKind::MissingRequiredClaim(c) if c == "exp" || c == "nbf" => {
            format!("JWT has no valid `{c}` claim: it must be a number of seconds since 1970")
        }
        ErrorKind::MissingRequiredClaim(c) => format!("JWT has no valid `{c}` claim"),
        ErrorKind::InvalidIssuer => format!(
            "JWT issuer must be `{}`",
            jwt.issuer.as_deref().unwrap_or_default()
        ),
        ErrorKind::InvalidAudience => format!(
            "JWT audience must include `{}`",
            jwt.audience.as_deref().unwrap_or_default()
        ),
        ErrorKind::InvalidAlgorithm => "JWT algorithm does not match its key".into(),
        _ => "malformed JWT".into(),
    }
}

/// Seconds since 1970 in a time claim; `jsonwebtoken` skips claims it cannot
/// read as numbers, so anything else present is refused here.
fn time_claim(claims: &Json, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => Err(format!("JWT `{name}` claim is out of range")),
        },
        Some(_) => Err(format!(
            "JWT `{name}` claim must be a number of seconds since 1970"
        )),
    }
}

fn credentials(jwt: &Jwt, claims: &Json) -> Result<Credentials, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = jwt.leeway as f64;
    let exp = time_claim(claims, "exp")?;
    if exp.is_some_and(|exp| now > exp + leeway) {
        return Err("JWT has expired; get a fresh token".into());
    }
    if time_claim(claims, "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
        return Err("JWT is not valid yet (`nbf` is in the future)".into());
    }
    time_claim(claims, "iat")?;
    let text = |k: &str| -> Result<String, String> {
        match claims.get(k) {
            Some(Json::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Json::String(_)) => Err(format!("JWT `{}` claim is empty", shorten(k))),
            Some(_) => Err(format!("JWT `{}` claim must be a string", shorten(k))),
            None => Err(format!("JWT has no `{}` claim", shorten(k))),
        }
    };
    let user = text("sub")?;
    let ws = text(&jwt.workspace_claim)?;
    let mut id = Identity::new(&user, &ws);
    id.role = match claims.get("role") {
        Some(Json::String(r)) => r.clone(),
        _ => String::new(),
    };
    id.permissions = match claims.get("permissions") {
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => match claims.get("scope") {
            Some(Json::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        },
    };
    Ok(Credentials {
        identity: id,
        expires_at: exp.map(|e| UNIX_EPOCH + Duration::from_secs_f64(e + leeway)),
    })
}

/// Signs claims as an HS256 JWT (for tests and tools).
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"0123456789abcdef0123";

    fn jwt() -> Jwt {
        jwt_from_config(&JwtConfig {
            secret: Some(String::from_utf8(KEY.to_vec()).unwrap()),
            issuer: Some("me".into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn check(claims: serde_json::Value) -> Result<Credentials, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(verify_jwt(&jwt(), &sign_hs256(KEY, &claims)))
    }

    #[test]
    fn valid_jwts_give_identities_and_tampered_ones_fail() {
        let claims = json!({"sub": "u1", "workspace": "w1", "iss": "me", "permissions": ["a"], "exp": 4_000_000_000i64});
        let c = check(claims.clone()).unwrap();
        assert_eq!(&*c.identity.user_id, "u1");
        assert_eq!(&*c.identity.workspace_id, "w1");
        assert!(c.identity.has_permission("a"));
        assert!(c.expires_at.is_some());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut bad = sign_hs256(KEY, &claims);
        bad.push('x');
        assert!(rt.block_on(verify_jwt(&jwt(), &bad)).is_err());
        let other = sign_hs256(b"another-secret-of-16+", &claims);
        let e = rt.block_on(verify_jwt(&jwt(), &other)).unwrap_err();
        assert!(e.contains("signature"), "{e}");
        let e = check(json!({"sub": "u1", "workspace": "w1", "iss": "me", "exp": 1})).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = check(json!({"sub": "u1", "workspace": "w1", "iss": "x", "exp": 4_000_000_000i64}))
            .unwrap_err();
        assert!(e.contains("issuer"), "{e}");
        let e =
            check(json!({"sub": "u1", "workspace": "w1", "exp": 4_000_000_000i64})).unwrap_err();
        assert!(e.contains("iss"), "{e}");
    }
}
