//! Subscriber tokens: JWTs (RFC 7519) verified against the keys of a JWKS file (RFC 7517),
//! and the permissions they grant. Off unless `--auth-jwks` is given.
//!
//! Keys are chosen by the token's `kid` (a token without one is tried against every key),
//! and each key verifies only the algorithms of its own type, so a token cannot pick an
//! algorithm its key was not made for: `oct` HS256/384/512, `RSA` RS256 and PS256, `EC`
//! ES256 on P-256 and ES384 on P-384. The signature itself is checked by the jsonwebtoken
//! crate (its pure-Rust backend); this module never does cryptography.
//!
//! Claims: `exp` is required; `nbf` and `iat` (no later than now) are honoured within
//! `--auth-leeway-secs`; `aud` and `iss` must match `--auth-audience` / `--auth-issuer` when
//! those are set; `sub` (at most [`SUB_MAX`] bytes) names the client to backends in its
//! upstream messages. Permissions: `"ringcast": {"subscribe": [PATTERNS], "publish":
//! [PATTERNS]}` with the patterns of `--policy` (`news`, `user.42.*`, `*`); a token without
//! `subscribe` may subscribe to nothing, and one without `publish` may send no upstream
//! messages (they carry no topic, so any pattern allows them).
//!
//! A connection keeps no token: only its expiry and the index of its permission set, which
//! are interned here ([`Auth::grant`]), so a million connections with the same permissions
//! share one set. The set of keys is replaced whole on reload (`SIGHUP`): tokens signed by
//! a removed key are refused from then on, connections already admitted stay until their
//! own expiry.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::topic_matches;

/// Longest token accepted, in bytes (the request head's own limit is 8 KiB).
pub const TOKEN_MAX: usize = 4096;
/// Patterns in one permission list.
const PATTERNS_MAX: usize = 256;
/// Longest `sub` accepted, in bytes.
pub const SUB_MAX: usize = 256;
/// Distinct permission sets kept; a token with a new set beyond this is refused.
const SETS_MAX: usize = 100_000;

/// Why a token was refused: the `error_description` of the 401, and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No token in the header, the cookie or the query.
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    Malformed,
    /// No key of the set has the token's `kid`, or its type does not sign with the
    /// token's `alg`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// `aud` does not name `--auth-audience`.
    WrongAudience,
    /// `iss` is not `--auth-issuer`.
    WrongIssuer,
    /// Too many distinct permission sets are in use.
    TooManyPermissionSets,
}

impl Refusal {
    /// Every refusal, for the metric families.
    pub const ALL: [Refusal; 9] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::WrongAudience,
        Refusal::WrongIssuer,
        Refusal::TooManyPermissionSets,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::TooManyPermissionSets => "too_many_permission_sets",
        }
    }

    /// The `error_description` of the 401 (no quotes or backslashes: it goes in a
    /// quoted header parameter).
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Missing => "no token: send Authorization: Bearer, the cookie, or token=",
            Refusal::Malformed => "the token is not a JWT with the expected claims",
            Refusal::UnknownKey => "no key verifies tokens with this kid and alg",
            Refusal::BadSignature => "the signature does not verify",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::WrongAudience => "the token is for another audience",
            Refusal::WrongIssuer => "the token is from another issuer",
            Refusal::TooManyPermissionSets => "too many distinct permission sets in use",
        }
    }

    /// The index of this refusal in [`Refusal::ALL`], for counters.
    pub fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every refusal is listed")
    }
}

/// What an accepted token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `exp`, in seconds since the Unix epoch.
    pub exp: u64,
    /// The interned permission set.
    pub perms: u32,
    /// `sub`, when present.
    pub sub: Option<String>,
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the JWKS file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the JWKS file {path} is not a JWK set: {reason}")]
    Parse { path: String, reason: String },
    #[error("the JWKS file {path}: key {key}: {reason}")]
    Key {
        path: String,
        key: String,
        reason: String,
    },
    #[error("the JWKS file {path} holds no key ringcast can use (oct, RSA, EC P-256/P-384)")]
    Empty { path: String },
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one JWKS file.
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// Reads and checks a JWKS file.
    ///
    /// # Errors
    /// A [`KeyError`] naming the file and, for a bad key, which one and why.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        Keyring::parse(&text, &shown)
    }

    fn parse(text: &str, shown: &str) -> Result<Keyring, KeyError> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| KeyError::Parse {
            path: shown.to_owned(),
            reason: e.to_string(),
        })?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::OctetKey(_) => {
                    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
                }
                AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::PS256],
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => {
                        return Err(KeyError::Key {
                            path: shown.to_owned(),
                            key: name,
                            reason: "only the P-256 and P-384 curves are supported".into(),
                        })
                    }
                },
                _ => {
                    return Err(KeyError::Key {
                        path: shown.to_owned(),
                        key: name,
                        reason: "only oct, RSA and EC keys are supported".into(),
                    })
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Key {
                path: shown.to_owned(),
                key: name.clone(),
                reason: e.to_string(),
            })?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
                algorithms,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                path: shown.to_owned(),
            });
        }
        Ok(Keyring { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The claims ringcast reads.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    ringcast: Option<Perms>,
}

/// A token's permissions.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub struct Perms {
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
}

impl Perms {
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| topic_matches(p, topic))
    }

    /// Whether a WebSocket holding these may send upstream messages to backends.
    pub fn may_send_upstream(&self) -> bool {
        !self.publish.is_empty()
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| topic_matches(p, topic))
    }
}

/// What verification checks besides the signature.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub leeway_secs: u64,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Permission sets shared by every connection that holds them.
#[derive(Default)]
struct Interner {
    ids: HashMap<Perms, u32>,
    sets: Vec<Arc<Perms>>,
}

/// The verifier every loop shares.
pub struct Auth {
    path: PathBuf,
    keys: RwLock<Arc<Keyring>>,
    settings: Settings,
    interner: Mutex<Interner>,
}

impl Auth {
    /// Loads the keys.
    ///
    /// # Errors
    /// As [`Keyring::load`].
    pub fn new(path: &Path, settings: Settings) -> Result<Auth, KeyError> {
        Ok(Auth {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(Keyring::load(path)?)),
            settings,
            interner: Mutex::default(),
        })
    }

    /// Reads the JWKS file again and replaces the keys; on failure the old keys stay.
    /// Returns how many keys are now in use.
    ///
    /// # Errors
    /// As [`Keyring::load`].
    pub fn reload(&self) -> Result<usize, KeyError> {
        let keyring = Arc::new(Keyring::load(&self.path)?);
        let n = keyring.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keyring;
        Ok(n)
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    ///
    /// # Errors
    /// The [`Refusal`] that says why not.
    pub fn verify_at(&self, token: &[u8], now: u64) -> Result<Grant, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        let token = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.len() <= TOKEN_MAX)
            .ok_or(Refusal::Malformed)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner));
        let candidates = keys
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg) && (header.kid.is_none() || k.kid == header.kid));
        let mut outcome = Err(Refusal::UnknownKey);
        for key in candidates {
            outcome = self.check(token, key, header.alg);
            if !matches!(outcome, Err(Refusal::BadSignature)) {
                break;
            }
        }
        let claims = outcome?;
        let leeway = self.settings.leeway_secs;
        if claims.exp.saturating_add(leeway) < now {
            return Err(Refusal::Expired);
        }
        let early = |t: Option<u64>| t.is_some_and(|t| t > now.saturating_add(leeway));
        if early(claims.nbf) || early(claims.iat) {
            return Err(Refusal::NotYetValid);
        }
        let perms = claims.ringcast.unwrap_or_default();
        if perms.subscribe.len() > PATTERNS_MAX || perms.publish.len() > PATTERNS_MAX {
            return Err(Refusal::Malformed);
        }
        if claims.sub.as_ref().is_some_and(|s| s.len() > SUB_MAX) {
            return Err(Refusal::Malformed);
        }
        Ok(Grant {
            exp: claims.exp,
            perms: self.intern(perms)?,
            sub: claims.sub,
        })
    }

    /// Verifies `token` now.
    ///
    /// # Errors
    /// As [`Auth::verify_at`].
    pub fn verify(&self, token: &[u8]) -> Result<Grant, Refusal> {
        self.verify_at(token, now_secs())
    }

    fn check(&self, token: &str, key: &Key, alg: Algorithm) -> Result<Claims, Refusal> {
        let mut v = Validation::new(alg);
        // Time claims are checked by the caller against its `now`.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match &self.settings.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => Refusal::BadSignature,
                    K::InvalidAudience => Refusal::WrongAudience,
                    K::InvalidIssuer => Refusal::WrongIssuer,
                    K::MissingRequiredClaim(c) if c == "iss" => Refusal::WrongIssuer,
                    K::MissingRequiredClaim(c) if c == "aud" => Refusal::WrongAudience,
                    K::InvalidAlgorithm => Refusal::UnknownKey,
                    _ => Refusal::Malformed,
                }
            })
    }

    fn intern(&self, perms: Perms) -> Result<u32, Refusal> {
        let mut interner = self.interner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = interner.ids.get(&perms) {
            return Ok(id);
        }
        if interner.sets.len() >= SETS_MAX {
            return Err(Refusal::TooManyPermissionSets);
        }
        let id = interner.sets.len() as u32;
        interner.sets.push(Arc::new(perms.clone()));
        interner.ids.insert(perms, id);
        Ok(id)
    }

    /// The permission set `id` names.
    pub fn perms(&self, id: u32) -> Arc<Perms> {
        let interner = self.interner.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&interner.sets[id as usize])
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of a request: `Authorization: Bearer`, else the cookie `cookie_name`, else the
/// `token` query parameter (percent-decoded by the caller).
pub fn token_of<'a>(
    authorization: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
    cookie_name: Option<&str>,
) -> Option<&'a [u8]> {
    if let Some(value) = authorization {
        let value = trim(value);
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(trim(&value[7..]));
        }
    }
    let (cookies, name) = (cookie?, cookie_name?.as_bytes());
    cookies.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let at = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..at]) == name).then(|| trim(&pair[at + 1..]))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA";

    fn jwks() -> String {
        format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","k":"{SECRET}"}}]}}"#)
    }

    fn auth(settings: Settings) -> Auth {
        let keyring = Keyring::parse(&jwks(), "test").expect("a key set");
        Auth {
            path: PathBuf::new(),
            keys: RwLock::new(Arc::new(keyring)),
            settings,
            interner: Mutex::default(),
        }
    }

    fn token(kid: Option<&str>, claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(SECRET)
            .expect("base64url");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(Into::into);
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&secret).expect("a key"),
        )
        .expect("encode")
    }

    #[test]
    fn a_good_token_grants_its_permissions_and_sets_are_shared() {
        let a = auth(Settings::default());
        let claims =
            serde_json::json!({"exp": 2000, "sub": "u1", "ringcast": {"subscribe": ["news", "user.1.*"]}});
        let g = a
            .verify_at(token(Some("k1"), claims.clone()).as_bytes(), 1000)
            .expect("valid");
        assert_eq!((g.exp, g.sub.as_deref()), (2000, Some("u1")));
        let perms = a.perms(g.perms);
        assert!(perms.may_subscribe("news") && perms.may_subscribe("user.1.inbox"));
        assert!(!perms.may_subscribe("user.2.inbox") && !perms.may_publish("news"));
        let again = a
            .verify_at(token(None, claims).as_bytes(), 1000)
            .expect("no kid: every key");
        assert_eq!(again.perms, g.perms, "one interned set");
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let a = auth(Settings {
            leeway_secs: 30,
            audience: Some("push".into()),
            issuer: Some("me".into()),
        });
        let ok = serde_json::json!({"exp": 2000, "aud": "push", "iss": "me"});
        assert!(a
            .verify_at(token(Some("k1"), ok.clone()).as_bytes(), 1000)
            .is_ok());
        let cases = [
            (token(Some("k1"), ok.clone()), 2031, Refusal::Expired),
            (token(Some("k2"), ok.clone()), 1000, Refusal::UnknownKey),
            (
                token(
                    Some("k1"),
                    serde_json::json!({"exp": 2000, "aud": "x", "iss": "me"}),
                ),
                1000,
                Refusal::WrongAudience,
            ),
            (
                token(
                    Some("k1"),
                    serde_json::json!({"exp": 2000, "aud": "push", "iss": "x"}),
                ),
                1000,
                Refusal::WrongIssuer,
            ),
            (
                token(
                    Some("k1"),
                    serde_json::json!({"exp": 2000, "aud": "push", "iss": "me", "nbf": 1031}),
                ),
                1000,
                Refusal::NotYetValid,
            ),
            (
                token(
                    Some("k1"),
                    serde_json::json!({"exp": 2000, "aud": "push", "iss": "me", "iat": 1031}),
                ),
                1000,
                Refusal::NotYetValid,
            ),
            (
                token(Some("k1"), serde_json::json!({"aud": "push", "iss": "me"})),
                1000,
                Refusal::Malformed,
            ),
            ("a.b.c".into(), 1000, Refusal::Malformed),
            (String::new(), 1000, Refusal::Missing),
        ];
        for (t, now, want) in cases {
            assert_eq!(a.verify_at(t.as_bytes(), now), Err(want), "{t}");
        }
        // Within the leeway.
        assert!(a
            .verify_at(token(Some("k1"), ok.clone()).as_bytes(), 2030)
            .is_ok());
        let mut forged = token(Some("k1"), ok);
        forged.pop();
        forged.push('A');
        assert_eq!(a.verify_at(forged.as_bytes(), 1000), Err(Refusal::BadSignature));
    }

    #[test]
    fn an_rsa_key_does_not_verify_an_hmac_token_made_with_its_public_key() {
        // The classic algorithm confusion: alg HS256 with an RSA key's bytes as the secret.
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"r","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
        let keyring = Keyring::parse(jwks, "test").expect("an RSA key set");
        assert_eq!(
            keyring.keys[0].algorithms,
            vec![Algorithm::RS256, Algorithm::PS256]
        );
        let a = Auth {
            path: PathBuf::new(),
            keys: RwLock::new(Arc::new(keyring)),
            settings: Settings::default(),
            interner: Mutex::default(),
        };
        let hmac = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": 2000}),
            &EncodingKey::from_secret(b"whatever the attacker takes for the key").expect("a key"),
        )
        .expect("encode");
        assert_eq!(a.verify_at(hmac.as_bytes(), 1000), Err(Refusal::UnknownKey));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        assert!(matches!(Keyring::parse("{", "f"), Err(KeyError::Parse { .. })));
        assert!(matches!(
            Keyring::parse(r#"{"keys":[]}"#, "f"),
            Err(KeyError::Empty { .. })
        ));
        let p521 = r#"{"keys":[{"kty":"EC","kid":"e","crv":"P-521","x":"AA","y":"AA"}]}"#;
        let err = Keyring::parse(p521, "f").err().expect("refused");
        assert!(
            err.to_string().contains("key e") && err.to_string().contains("P-256"),
            "{err}"
        );
    }

    #[test]
    fn tokens_come_from_the_header_then_the_cookie() {
        assert_eq!(token_of(Some(b"Bearer abc"), None, None), Some(&b"abc"[..]));
        assert_eq!(token_of(Some(b" bearer  abc "), None, None), Some(&b"abc"[..]));
        assert_eq!(token_of(Some(b"Basic abc"), None, Some("t")), None);
        assert_eq!(
            token_of(None, Some(b"a=1; rc_token=xyz ; b=2"), Some("rc_token")),
            Some(&b"xyz"[..])
        );
        assert_eq!(token_of(None, Some(b"a=1"), Some("rc_token")), None);
        assert_eq!(
            token_of(None, Some(b"rc_token=xyz"), None),
            None,
            "no cookie configured"
        );
    }
}
