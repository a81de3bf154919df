//! Public keys for JWT checks, from a JWKS file or an identity provider's
//! JWKS URL. The URL is fetched lazily and cached: a token naming an unknown
//! `kid` triggers a refetch, at most once per refresh interval, and keys
//! older than the interval are refreshed in the background.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Largest JWKS document read from a URL.
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One usable public key.
#[derive(Clone)]
pub(crate) struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Parses a JWKS document, keeping the keys usable for RS256, ES256 and
/// EdDSA signatures (others, such as encryption keys, are skipped).
pub(crate) fn parse(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set.keys.iter().filter_map(key_of).collect())
}

fn key_of(jwk: &Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Where the keys come from.
enum Source {
    /// Loaded once at startup.
    Fixed,
    /// Fetched from a URL and cached.
    Url {
        url: String,
        refresh: Duration,
        /// When the last fetch was started; `None` before the first.
        fetched: Mutex<Option<Instant>>,
        /// One fetch at a time.
        fetching: tokio::sync::Mutex<()>,
    },
}

/// A cached set of public keys.
pub(crate) struct Jwks {
    keys: RwLock<Arc<Vec<Key>>>,
    source: Source,
}

impl Jwks {
    /// Keys read from a JWKS file now.
    pub fn from_file(path: &str) -> Result<Jwks, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("auth.jwt.jwks_file `{path}`: {e}"))?;
        let keys = parse(&text).map_err(|e| format!("auth.jwt.jwks_file `{path}`: {e}"))?;
        if keys.is_empty() {
            return Err(format!(
                "auth.jwt.jwks_file `{path}` holds no RS256, ES256 or EdDSA signing key"
            ));
        }
        Ok(Jwks {
            keys: RwLock::new(Arc::new(keys)),
            source: Source::Fixed,
        })
    }

    /// Keys fetched from `url` when first needed. Plain `http` is accepted
    /// only for loopback addresses (local identity providers and tests).
    pub fn from_url(url: &str, refresh: Duration) -> Result<Jwks, String> {
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| {
                url.strip_prefix(p)
                    .is_some_and(|r| r.starts_with([':', '/']))
            });
        if !url.starts_with("https://") && !loopback {
            return Err(format!(
                "auth.jwt.jwks_url `{url}` must be an https:// URL (http only for loopback)"
            ));
        }
        Ok(Jwks {
            keys: RwLock::new(Arc::new(Vec::new())),
            source: Source::Url {
                url: url.to_owned(),
                refresh,
                fetched: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            },
        })
    }

    fn current(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys that may have signed a token with `kid` and `alg`.
    pub async fn candidates(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Key>, String> {
        let pick = |keys: &[Key]| -> Vec<Key> {
            keys.iter()
                .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
                .cloned()
                .collect()
        };
        let found = pick(&self.current());
        let Source::Url {
            refresh, fetched, ..
        } = &self.source
        else {
            return nonempty(found, kid);
        };
        let last = *fetched.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= *refresh);
        if !found.is_empty() {
            if due {
                // Periodic refresh, off the caller's path.
                let (me, every) = (self.clone(), *refresh);
                tokio::spawn(async move { me.fetch(every).await });
            }
            return Ok(found);
        }
        if due {
            self.fetch(*refresh).await;
        }
        nonempty(pick(&self.current()), kid)
    }

    /// Fetches the URL unless another fetch ran within `refresh`; keeps the
    /// old keys when the fetch fails.
    async fn fetch(&self, refresh: Duration) {
        let Source::Url {
            url,
            fetched,
            fetching,
            ..
        } = &self.source
        else {
            return;
        };
        let _one = fetching.lock().await;
        {
            let mut f = fetched.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_some_and(|t| t.elapsed() < refresh) {
                return; // another caller just fetched
            }
            *f = Some(Instant::now());
        }
        let u = url.clone();
        let got = tokio::task::spawn_blocking(move || download(&u, u.starts_with("https://")))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .and_then(|text| parse(&text));
        match got {
            Ok(keys) => {
                tracing::debug!(url = %url, keys = keys.len(), "fetched JWKS");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(url = %url, "fetching JWKS failed, keeping old keys: {e}"),
        }
    }
}

fn nonempty(keys: Vec<Key>, kid: Option<&str>) -> Result<Vec<Key>, String> {
    if keys.is_empty() {
        return Err(match kid {
            Some(kid) => format!(
                "no key `{}` for this JWT's algorithm in the configured JWKS",
                crate::wire::status::shorten(kid)
            ),
            None => "no key for this JWT's algorithm in the configured JWKS".into(),
        });
    }
    Ok(keys)
}

/// GETs `url`; an https URL may not redirect to plain http.
fn download(url: &str, https_only: bool) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .https_only(https_only)
        .max_redirects(3)
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    resp.body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())
}
