//! Tokens: JWTs checked strictly (claims, algorithms, keys from a JWKS file
//! or URL), and sessions that serve only the credentials that opened them,
//! for no longer than their token lives.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arcana::config::{JwtConfig, TokenConfig};
use arcana::proto::{self as pb};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const SECRET: &str = "a-long-test-secret-value";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: Json) -> String {
    arcana::auth::sign_hs256(SECRET.as_bytes(), &claims)
}

fn hs256_config() -> JwtConfig {
    JwtConfig {
        secret: Some(SECRET.into()),
        ..Default::default()
    }
}

async fn describe(h: &Harness, token: &str) -> Result<(), tonic::Status> {
    h.client(token)
        .await
        .describe(pb::DescribeRequest {})
        .await
        .map(|_| ())
}

async fn refused(h: &Harness, token: &str, why: &str) -> String {
    let e = describe(h, token).await.expect_err(why);
    assert_eq!(e.code(), Code::Unauthenticated, "{why}: {}", e.message());
    e.message().to_owned()
}

#[tokio::test]
async fn malformed_claims_are_refused() {
    let h = Harness::with(|c| c.auth.jwt = Some(hs256_config())).await;
    let base = |extra: Json| {
        let mut c = json!({"sub": "alice", "workspace": "acme"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(c)
    };
    let past = (now() - 3600) as f64 + 0.5;
    let m = refused(&h, &base(json!({"exp": past})), "expired float exp").await;
    assert!(m.contains("expired"), "{m}");
    let m = refused(&h, &base(json!({"exp": "1000"})), "string exp").await;
    assert!(m.contains("`exp`"), "{m}");
    refused(&h, &base(json!({"exp": null})), "null exp").await;
    let m = refused(&h, &base(json!({})), "no exp").await;
    assert!(m.contains("`exp`"), "{m}");
    let future = (now() + 3600) as f64 + 0.25;
    let m = refused(
        &h,
        &base(json!({"exp": now() + 7200, "nbf": future})),
        "future float nbf",
    )
    .await;
    assert!(m.contains("nbf"), "{m}");
    refused(
        &h,
        &base(json!({"exp": now() + 7200, "nbf": "0"})),
        "string nbf",
    )
    .await;
    let m = refused(
        &h,
        &hs256(json!({"sub": "", "workspace": "acme", "exp": now() + 60})),
        "empty sub",
    )
    .await;
    assert!(m.contains("`sub`") && m.contains("empty"), "{m}");
    let m = refused(
        &h,
        &hs256(json!({"sub": "alice", "workspace": "", "exp": now() + 60})),
        "empty workspace",
    )
    .await;
    assert!(m.contains("`workspace`") && m.contains("empty"), "{m}");
    refused(
        &h,
        &hs256(json!({"sub": 7, "workspace": "acme", "exp": now() + 60})),
        "numeric sub",
    )
    .await;
    // A well-formed token with a fractional exp in the future is fine.
    describe(&h, &base(json!({"exp": future})))
        .await
        .expect("valid token");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let h = Harness::with(|c| {
        c.auth.jwt = Some(JwtConfig {
            issuer: Some("https://idp.example".into()),
            audience: Some("arcana".into()),
            ..hs256_config()
        })
    })
    .await;
    let claims = |iss: Option<&str>, aud: Option<Json>| {
        let mut c = json!({"sub": "alice", "workspace": "acme", "exp": now() + 600});
        if let Some(i) = iss {
            c["iss"] = i.into();
        }
        if let Some(a) = aud {
            c["aud"] = a;
        }
        hs256(c)
    };
    describe(
        &h,
        &claims(Some("https://idp.example"), Some(json!(["x", "arcana"]))),
    )
    .await
    .expect("valid");
    let m = refused(&h, &claims(None, Some(json!("arcana"))), "no iss").await;
    assert!(m.contains("iss"), "{m}");
    let m = refused(&h, &claims(Some("other"), Some(json!("arcana"))), "bad iss").await;
    assert!(m.contains("issuer"), "{m}");
    refused(&h, &claims(Some("https://idp.example"), None), "no aud").await;
    let m = refused(
        &h,
        &claims(Some("https://idp.example"), Some(json!("else"))),
        "bad aud",
    )
    .await;
    assert!(m.contains("audience"), "{m}");
}

/// A session opened with one token cannot be driven by a token with other
/// permissions, even of the same user and workspace.
#[tokio::test]
async fn a_narrower_token_cannot_drive_a_wider_session() {
    let h = Harness::with(|c| {
        c.auth.tokens.push(TokenConfig {
            token: "alice-write-only".into(),
            user: "alice".into(),
            workspace: "acme".into(),
            role: "member".into(),
            permissions: vec!["tasks:write".into()],
        });
        c.auth.tokens.push(TokenConfig {
            token: "alice-again".into(),
            user: "alice".into(),
            workspace: "acme".into(),
            role: "member".into(),
            permissions: vec!["tasks:write".into(), "tasks:read".into()],
        });
    })
    .await;
    let mut wide = h.client("dev-alice").await;
    let mut stream = wide
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let session_id = match stream.message().await.unwrap().unwrap().kind {
        Some(pb::server_message::Kind::Opened(o)) => o.session_id,
        other => panic!("{other:?}"),
    };
    let mut narrow = h.client("alice-write-only").await;
    let e = narrow
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: session_id.clone(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("credentials"), "{}", e.message());
    let e = narrow
        .sync(pb::SyncRequest {
            session_id: session_id.clone(),
            views: vec![pb::SyncView {
                graph: "project_tasks".into(),
                params: project(1),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = narrow
        .mutate(pb::MutateRequest {
            session_id: session_id.clone(),
            mutation: "update_task".into(),
            params: params(&[("id", int(1)), ("title", text("x"))]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = narrow
        .unsubscribe(pb::UnsubscribeRequest {
            session_id: session_id.clone(),
            view_id: "project_tasks/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The same rights in another order are the same credentials.
    let r = h
        .client("alice-again")
        .await
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: session_id.clone(),
            window: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let r = wide
        .subscribe(pb::SubscribeRequest {
            graph: "projects".into(),
            params: Default::default(),
            session_id,
            window: None,
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let h = Harness::with(|c| {
        c.auth.jwt = Some(JwtConfig {
            leeway_secs: 0,
            ..hs256_config()
        })
    })
    .await;
    let token = hs256(json!({
        "sub": "alice", "workspace": "acme", "permissions": ["tasks:read"], "exp": now() + 2
    }));
    let mut l = h.live(&token).await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    assert!(!l.view(&s.view_id).refs.is_empty());
    let mut c = h.client(&token).await;
    let mut unary = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    unary.message().await.unwrap().expect("opened");
    let started = std::time::Instant::now();
    let end = loop {
        match l.read_one().await {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::Unauthenticated, "{}", end.message());
    assert!(end.message().contains("fresh token"), "{}", end.message());
    assert!(started.elapsed() < Duration::from_secs(6));
    let end = tokio::time::timeout(WAIT, unary.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated);
    assert_eq!(h.app().engine.stats().sessions, 0, "both sessions closed");
    // A static token's session has no expiry.
    let mut forever = h.live("dev-alice").await;
    forever.ping().await;
}

// ---- Public-key tokens from a JWKS -------------------------------------

/// A 2048-bit RSA key (PKCS#1 DER) made for these tests only, and its modulus.
const RSA_DER: &str =
    "MIIEpAIBAAKCAQEArlJbw/zwMBIIvmfIy0iIJSR7EQG9m+R1v7ctcvrSr7pdBffpamMQrq0UpflhtdiL9MwHkwquxA\
GC0hUdc6ovQeNN6tlCzWUHRRUXyor0/5a0he4dGPM5ttG2QNm8PWeeJl9tuALza+Qum/pjvqC3akCW5iM2PTeZHfEQ\
y+TcEubK0LfioP+Xqow4g/kVUajpHoGj2Q4RnfnwYra3+Z/kxLbcRgSL3xc5v0csV2COeqX8lj+CjS8rgLgcloi/k5\
+IHqoS7h6hq4RRFcJEFdPtwr1UpjyJNGE9MicngYEqCtaczRVblaVCO18krSdP6HWEU6Fzp/7QvW+0yyHOqN55gQID\
AQABAoIBAAGvv/bBZlPv19dB+TzZXIS6liA41F306SqBSD2smB1XPGgpis4TovPZPLkSIt7QsD7XVylrasLiJYaW6d\
Gktno44QnTy/JhU3S8QcjyQf9TtMUTnLvmc2eMyYbkUNW/B2RlULzSoScMrn77RZE32oH7C3AIOp/U4tEvLNOXur4C\
8g+MuWdYuZMY+OsFYi9OEjnx79XWgp+x08ROOwipwJ5zUQrxNOVvygdUXOLRTtmDCGTwpx+v0DDix+zONEDgvTW/E0\
tHu2VQ0nKwlx78R9k7wjYvF27hDYPp7StNU9vcmlhRp5VFhgQJa8u5Aj0eoVLqSp3P7vzSd8I4K0s6KXsCgYEA54Ws\
wJYag+kSl77fWlcG9Wog5p5UdW/ougwhuixcVPpuK7sjeL2/kgXBh2e6IlXlLld85idy5/qVrkVy47yzMlRPPZjZ0u\
xL7MS0D6qP89P3xnEiPIfc+95IIxJVVQblDjXyLnFfwAx1PErvEwyqQQNe+BmV9VvNxATERaDdCqcCgYEAwMCCakNH\
OGOmy/8NLQeVd8qnIA9FqNZ5Jgt8SvvCUKfshnKwJs+wBe4TaHruzjzkGrjO7AX7ekOMq88SEQ58mHAAYIF4CQZTsg\
5gWsRggffnC0fvJATmEpiIPq8TxDStnv8JMkkgcwpsGFO3/s8EQmXhjCKth8ql5onJgrmsZ5cCgYEAk422U+dWbsuU\
dfHIF6NvY+mHnnM6EL6J7EjfFfA/yEjy/hv+t2z3MvFILiwFjOyBa8+GYoixyvcBflf0qQASlPj2p6NK8Ap5OSUEPR\
fPNu7Y8zgXQcy1IjDAeNmuWMpUIYJwHvlStOs7rHl1dQaVW2nylNx5ni4sLcl77YRgW/ECgYBXXOm/UA8Pt9r5yvgl\
2LIeQXPOTB2+kLcIT1xegA1qkTHbHlBIxwl5JpcVW+KxB1g75FelEnEQ0V0I4inGIVLHpLwHAaduL7fvlCSH/0neno\
XRzyDMqou9EfVus9u5qkanMeDxMcPLYIXt4MQccaf0kEjSQ0Vzrp3TB9CVt6I0sQKBgQC5Sux27BXq3Rq34MYSl1wY\
oh69PV4OKSdyJcMw4ZLYYoLuROKGDvH9n6/nlXlQNWqMjrUAWNlJpTzO1IL2yo3/owDHG3qh6jxnRxkWth6IP8PztP\
Cd8UU2rYFwI5MkKuMg74Qlnb9fWaveAxOIw3oyDGlqaBTAg+YZvJqDP82gSw==";
const RSA_N: &str =
    "rlJbw_zwMBIIvmfIy0iIJSR7EQG9m-R1v7ctcvrSr7pdBffpamMQrq0UpflhtdiL9MwHkwquxAGC0hUdc6ovQeNN6t\
lCzWUHRRUXyor0_5a0he4dGPM5ttG2QNm8PWeeJl9tuALza-Qum_pjvqC3akCW5iM2PTeZHfEQy-TcEubK0LfioP-X\
qow4g_kVUajpHoGj2Q4RnfnwYra3-Z_kxLbcRgSL3xc5v0csV2COeqX8lj-CjS8rgLgcloi_k5-IHqoS7h6hq4RRFc\
JEFdPtwr1UpjyJNGE9MicngYEqCtaczRVblaVCO18krSdP6HWEU6Fzp_7QvW-0yyHOqN55gQ";

struct Keys {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    jwks: Json,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn ec_key() -> (EncodingKey, Json) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref(); // 0x04 | x | y
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..65])});
    (EncodingKey::from_ec_der(doc.as_ref()), jwk)
}

fn ed_key() -> (EncodingKey, Json) {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
    (EncodingKey::from_ed_der(doc.as_ref()), jwk)
}

fn keys() -> Keys {
    let rsa = EncodingKey::from_rsa_der(&STANDARD.decode(RSA_DER.trim()).unwrap());
    let (ec, mut ec_jwk) = ec_key();
    let (ed, mut ed_jwk) = ed_key();
    ec_jwk["kid"] = "ec-1".into();
    ed_jwk["kid"] = "ed-1".into();
    ed_jwk["alg"] = "EdDSA".into();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": RSA_N.trim(), "e": "AQAB"});
    // An encryption key is skipped, not an error.
    let enc = json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N.trim(), "e": "AQAB"});
    Keys {
        rsa,
        ec,
        ed,
        jwks: json!({"keys": [rsa_jwk, ec_jwk, ed_jwk, enc]}),
    }
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "alice", "workspace": "acme", "permissions": ["tasks:read"], "exp": now() + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_checked_against_a_jwks_file() {
    let k = keys();
    let path = std::env::temp_dir().join(format!("jwks-{:016x}.json", rand::random::<u64>()));
    std::fs::write(&path, k.jwks.to_string()).unwrap();
    let file = path.to_str().unwrap().to_owned();
    let h = Harness::with(|c| {
        c.auth.jwt = Some(JwtConfig {
            jwks_file: Some(file),
            ..Default::default()
        })
    })
    .await;
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &k.rsa),
        (Algorithm::ES256, "ec-1", &k.ec),
        (Algorithm::EdDSA, "ed-1", &k.ed),
    ] {
        let token = sign(alg, kid, key);
        let mut l = h.live(&token).await;
        let s = l.subscribe("project_tasks", project(1)).await.unwrap();
        assert_eq!(l.view(&s.view_id).refs.len(), 4, "{alg:?}");
    }
    // Signed by a key the JWKS does not hold, under a listed kid.
    let (stranger, _) = ec_key();
    let m = refused(&h, &sign(Algorithm::ES256, "ec-1", &stranger), "wrong key").await;
    assert!(m.contains("signature"), "{m}");
    let (stranger, _) = ed_key();
    refused(
        &h,
        &sign(Algorithm::EdDSA, "ed-1", &stranger),
        "wrong ed key",
    )
    .await;
    // A listed key used with another algorithm, and an unknown kid.
    let m = refused(&h, &sign(Algorithm::ES256, "rsa-1", &k.ec), "alg mismatch").await;
    assert!(m.contains("key"), "{m}");
    let m = refused(&h, &sign(Algorithm::RS256, "nope", &k.rsa), "unknown kid").await;
    assert!(m.contains("`nope`"), "{m}");
    // No HS256 secret configured: HS256 tokens are refused.
    let m = refused(
        &h,
        &hs256(json!({"sub": "alice", "workspace": "acme", "exp": now() + 60})),
        "hs256",
    )
    .await;
    assert!(m.contains("HS256"), "{m}");
    let _ = std::fs::remove_file(path);
}

/// Serves `body` over plain HTTP on loopback and counts the requests.
async fn jwks_server(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (body, hits) = (body.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = body.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn keys_are_fetched_from_a_jwks_url_and_refetched_for_a_new_kid() {
    let (ec, mut first) = ec_key();
    first["kid"] = "k1".into();
    let body = Arc::new(Mutex::new(json!({"keys": [first]}).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(body.clone(), hits.clone()).await;
    let h = Harness::with(|c| {
        c.auth.jwt = Some(JwtConfig {
            jwks_url: Some(url),
            jwks_refresh_secs: 2,
            ..Default::default()
        })
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "fetched when first needed");
    describe(&h, &sign(Algorithm::ES256, "k1", &ec))
        .await
        .expect("k1 accepted");
    describe(&h, &sign(Algorithm::ES256, "k1", &ec))
        .await
        .expect("k1 accepted again");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");

    // The provider rotates to k2; tokens naming it arrive at once.
    let (ec2, mut second) = ec_key();
    second["kid"] = "k2".into();
    *body.lock().unwrap() = json!({"keys": [second]}).to_string();
    refused(
        &h,
        &sign(Algorithm::ES256, "k2", &ec2),
        "k2 inside the interval",
    )
    .await;
    refused(&h, &sign(Algorithm::ES256, "k3", &ec2), "unknown kid").await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "at most one fetch per interval"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    describe(&h, &sign(Algorithm::ES256, "k2", &ec2))
        .await
        .expect("k2 accepted after a refetch");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    refused(&h, &sign(Algorithm::ES256, "k1", &ec), "k1 withdrawn").await;
}

#[tokio::test]
async fn a_plain_http_jwks_url_is_refused_unless_loopback() {
    let cfg = |url: &str| arcana::config::AuthConfig {
        tokens: vec![],
        jwt: Some(JwtConfig {
            jwks_url: Some(url.into()),
            ..Default::default()
        }),
    };
    let e = arcana::auth::TokenAuthenticator::from_config(&cfg("http://idp.example/jwks"))
        .err()
        .unwrap();
    assert!(e.contains("https"), "{e}");
    assert!(
        arcana::auth::TokenAuthenticator::from_config(&cfg("https://idp.example/jwks")).is_ok()
    );
    let e = arcana::auth::TokenAuthenticator::from_config(&arcana::config::AuthConfig {
        tokens: vec![],
        jwt: Some(JwtConfig::default()),
    })
    .err()
    .unwrap();
    assert!(e.contains("needs a key"), "{e}");
}
