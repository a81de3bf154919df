//! Authentication: `authorization: Bearer <token>` to an [`Identity`].
//!
//! [`Authenticator`] is the seam for library users. [`TokenAuthenticator`]
//! covers the standalone server: static tokens from the config (development,
//! trusted services) and HS256 JWTs (claims `sub`, a workspace claim, `role`,
//! `permissions`, and `exp`/`nbf`/`iss`/`aud` when present or configured).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::config::{AuthConfig, JwtConfig};
use crate::engine::Identity;

/// Turns a bearer token into an identity.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks `token`; the error message is shown to the caller.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, String>>;
}

/// Reads the bearer token of a call and authenticates it.
pub async fn identify(auth: &dyn Authenticator, md: &MetadataMap) -> Result<Identity, Status> {
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
        .map_err(Status::unauthenticated)
}

struct Jwt {
    key: Vec<u8>,
    issuer: Option<String>,
    audience: Option<String>,
    workspace_claim: String,
}

/// Static tokens plus optional HS256 JWTs, from the `[auth]` config.
pub struct TokenAuthenticator {
    tokens: HashMap<String, Identity>,
    jwt: Option<Jwt>,
}

impl TokenAuthenticator {
    /// Builds from config; fails when a JWT secret is configured but empty.
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
        (_, Some(var)) => std::env::var(var)
            .map_err(|_| format!("auth.jwt.secret_env names `{var}`, which is not set"))?,
        (Some(s), None) => s.clone(),
        (None, None) => return Err("auth.jwt needs `secret` or `secret_env`".into()),
    };
    if secret.len() < 16 {
        return Err("auth.jwt secret is shorter than 16 bytes; use a long random secret".into());
    }
    Ok(Jwt {
        key: secret.into_bytes(),
        issuer: c.issuer.clone(),
        audience: c.audience.clone(),
        workspace_claim: c.workspace_claim.clone(),
    })
}

impl Authenticator for TokenAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, String>> {
        Box::pin(async move {
            if let Some(id) = self.tokens.get(token) {
                return Ok(id.clone());
            }
            match &self.jwt {
                Some(jwt) if token.matches('.').count() == 2 => verify_jwt(jwt, token),
                _ => Err("invalid token".into()),
            }
        })
    }
}

fn verify_jwt(jwt: &Jwt, token: &str) -> Result<Identity, String> {
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s)) => (h, p, s),
        _ => return Err("malformed JWT".into()),
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed JWT header")?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err("JWT must be signed with HS256".into());
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "malformed JWT signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&jwt.key).map_err(|e| e.to_string())?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| "JWT signature does not match")?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed JWT claims")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    const LEEWAY: i64 = 30;
    if let Some(exp) = claims.get("exp").and_then(|v| v.as_i64()) {
        if now > exp + LEEWAY {
            return Err("JWT has expired".into());
        }
    }
    if let Some(nbf) = claims.get("nbf").and_then(|v| v.as_i64()) {
        if now + LEEWAY < nbf {
            return Err("JWT is not valid yet".into());
        }
    }
    if let Some(iss) = &jwt.issuer {
        if claims.get("iss").and_then(|v| v.as_str()) != Some(iss) {
            return Err(format!("JWT issuer must be `{iss}`"));
        }
    }
    if let Some(aud) = &jwt.audience {
        let ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == aud,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(aud)),
            _ => false,
        };
        if !ok {
            return Err(format!("JWT audience must include `{aud}`"));
        }
    }
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let user = text("sub").ok_or("JWT has no `sub` claim")?;
    let ws = text(&jwt.workspace_claim)
        .ok_or_else(|| format!("JWT has no `{}` claim", jwt.workspace_claim))?;
    let mut id = Identity::new(&user, &ws);
    id.role = text("role").unwrap_or_default();
    id.permissions = match claims.get("permissions") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => text("scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    Ok(id)
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

    fn jwt() -> Jwt {
        Jwt {
            key: b"0123456789abcdef0123".to_vec(),
            issuer: Some("me".into()),
            audience: None,
            workspace_claim: "workspace".into(),
        }
    }

    #[test]
    fn valid_jwts_give_identities_and_tampered_ones_fail() {
        let j = jwt();
        let claims = json!({"sub": "u1", "workspace": "w1", "iss": "me", "permissions": ["a"], "exp": 4_000_000_000i64});
        let t = sign_hs256(&j.key, &claims);
        let id = verify_jwt(&j, &t).unwrap();
        assert_eq!(&*id.user_id, "u1");
        assert_eq!(&*id.workspace_id, "w1");
        assert!(id.has_permission("a"));
        let mut bad = t.clone();
        bad.push('x');
        assert!(verify_jwt(&j, &bad).is_err());
        let other = sign_hs256(b"another-secret-of-16+", &claims);
        assert!(verify_jwt(&j, &other).unwrap_err().contains("signature"));
        let expired = sign_hs256(
            &j.key,
            &json!({"sub": "u1", "workspace": "w1", "iss": "me", "exp": 1}),
        );
        assert!(verify_jwt(&j, &expired).unwrap_err().contains("expired"));
        let wrong_iss = sign_hs256(&j.key, &json!({"sub": "u1", "workspace": "w1", "iss": "x"}));
        assert!(verify_jwt(&j, &wrong_iss).unwrap_err().contains("issuer"));
    }
}
