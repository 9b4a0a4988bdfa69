//! Bearer tokens: HS256 JWTs with `sub`, `role`, `rid` (restaurants only)
//! and `exp`. `lunchrush token` mints them; every API request verifies one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// An HS256 secret shorter than this is guessable (RFC 7518 §3.2 asks for a
/// key as long as the hash output: 32 bytes).
pub const JWT_SECRET_LEN_MIN: usize = 32;

/// Refuses a secret too short to sign tokens with.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < JWT_SECRET_LEN_MIN {
        return Err(format!(
            "the JWT secret is {} bytes long; it must be at least {JWT_SECRET_LEN_MIN} \
             (set LUNCHRUSH_JWT_SECRET)",
            secret.len()
        ));
    }
    Ok(())
}

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Restaurant,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "customer" => Ok(Role::Customer),
            "restaurant" => Ok(Role::Restaurant),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role must be customer, restaurant or admin, not {other:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Restaurant => "restaurant",
            Role::Admin => "admin",
        }
    }
}

/// The claims of a lunchrush token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The customer, restaurant user or admin id.
    pub sub: String,
    pub role: Role,
    /// The restaurant a `restaurant` token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

/// Why a token was refused (every case answers 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a restaurant token needs the restaurant it acts for (--restaurant)")]
    MissingRestaurant,
    #[error("only restaurant tokens carry a restaurant")]
    UnexpectedRestaurant,
    #[error("the subject is empty")]
    EmptySubject,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// Signing and verifying keys derived from one secret. Cheap to clone
/// (every request's state is a clone): the keys are shared.
#[derive(Clone)]
pub struct Keys(std::sync::Arc<KeyMaterial>);

struct KeyMaterial {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens verified lately, by their whole text (see [`Keys::verify`]).
    verified: std::sync::Mutex<HashMap<Box<str>, Remembered>>,
}

/// A verified token's claims and when (Unix seconds) it was verified.
struct Remembered {
    claims: std::sync::Arc<Claims>,
    at: u64,
}

/// How many verified tokens [`Keys::verify`] remembers; past it, it forgets
/// them all and starts again (a bound, whatever the traffic).
const VERIFIED_MAX: usize = 4096;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(HS256, secret hidden)")
    }
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        // A token that names a start (`nbf`) is refused until then.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self(std::sync::Arc::new(KeyMaterial {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Signs a token for `sub` in `role`, valid for `ttl`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        rid: Option<&str>,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        if sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        match (role, rid) {
            (Role::Restaurant, None) => return Err(TokenError::MissingRestaurant),
            (Role::Customer | Role::Admin, Some(_)) => {
                return Err(TokenError::UnexpectedRestaurant);
            }
            _ => {}
        }
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            rid: rid.map(str::to_string),
            exp: now + ttl.as_secs(),
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies signature, algorithm and expiry; returns the claims.
    ///
    /// A client sends the same token with every request until it expires:
    /// a token verified before (same text, byte for byte) has only its
    /// expiry checked again, not its signature and JSON. Only tokens that
    /// passed every check are remembered, at most [`VERIFIED_MAX`].
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let leeway = self.0.validation.leeway;
        let mut verified = self.0.verified.lock().unwrap_or_else(|e| e.into_inner());
        // Remembered, and the clock has not gone back since (its `nbf` held
        // then, so it holds now).
        if let Some(seen) = verified.get(token).filter(|seen| seen.at <= now) {
            if seen.claims.exp.saturating_add(leeway) < now {
                verified.remove(token);
                return Err(TokenError::Expired);
            }
            let claims = seen.claims.clone();
            drop(verified);
            return Ok(Claims::clone(&claims));
        }
        drop(verified);
        let claims = self.verify_signed(token)?;
        let mut verified = self.0.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        let remembered = Remembered {
            claims: std::sync::Arc::new(claims.clone()),
            at: now,
        };
        verified.insert(token.into(), remembered);
        Ok(claims)
    }

    /// [`Keys::verify`] of a token not remembered: signature, algorithm,
    /// expiry, start and claims.
    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        if claims.role == Role::Restaurant && claims.rid.as_deref().unwrap_or("").is_empty() {
            return Err(TokenError::MissingRestaurant);
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_secret_is_refused_with_its_length() {
        let error = check_secret("short").unwrap_err();
        assert!(error.contains("5 bytes long"), "{error}");
        assert_eq!(check_secret(&"x".repeat(JWT_SECRET_LEN_MIN)), Ok(()));
    }

    fn keys() -> Keys {
        Keys::new(&[7u8; 32])
    }

    #[test]
    fn a_minted_token_verifies_to_its_claims() {
        let token = keys()
            .mint(Role::Restaurant, "u1", Some("r1"), Duration::from_secs(60))
            .unwrap();
        let claims = keys().verify(&token).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.role, Role::Restaurant);
        assert_eq!(claims.rid.as_deref(), Some("r1"));
    }

    #[test]
    fn another_secret_or_a_tampered_token_is_refused() {
        let token = keys()
            .mint(Role::Admin, "a", None, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            Keys::new(&[8u8; 32]).verify(&token),
            Err(TokenError::Invalid(_))
        ));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'x');
        assert!(keys().verify(&tampered).is_err());
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let now = unix_now();
        let claims = Claims {
            sub: "c".into(),
            role: Role::Customer,
            rid: None,
            exp: now - 60,
            iat: now - 120,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys().0.encoding)
                .unwrap();
        assert_eq!(keys().verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires_and_its_tampered_copies_are_refused() {
        let keys = keys();
        let token = keys
            .mint(Role::Customer, "c", None, Duration::from_secs(60))
            .unwrap();
        let now = unix_now();
        assert_eq!(keys.verify_at(&token, now).unwrap().sub, "c");
        // Remembered now: the same text is accepted until its expiry...
        let exp = keys.verify_at(&token, now).unwrap().exp;
        let leeway = keys.0.validation.leeway;
        assert!(keys.verify_at(&token, exp + leeway).is_ok());
        // ...and refused past it (leeway included), then forgotten.
        assert_eq!(
            keys.verify_at(&token, exp + leeway + 1),
            Err(TokenError::Expired)
        );
        assert!(!keys.0.verified.lock().unwrap().contains_key(token.as_str()));
        // Another text is verified in full, whatever was remembered.
        assert!(keys.verify_at(&token, now).is_ok());
        let mut tampered = token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'E' } else { 'A' });
        assert!(keys.verify_at(&tampered, now).is_err());
        // Remembered at a time the clock has since gone back past: verified
        // in full again (its `nbf` is checked anew).
        let claims = serde_json::json!({
            "sub": "c", "role": "customer", "exp": now + 3600, "iat": now, "nbf": now + 600,
        });
        let starts =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.0.encoding)
                .unwrap();
        let remembered = Remembered {
            claims: std::sync::Arc::new(Claims {
                sub: "c".into(),
                role: Role::Customer,
                rid: None,
                exp: now + 3600,
                iat: now,
            }),
            at: now + 600,
        };
        keys.0
            .verified
            .lock()
            .unwrap()
            .insert(starts.as_str().into(), remembered);
        assert_eq!(keys.verify_at(&starts, now), Err(TokenError::NotYetValid));
    }

    #[test]
    fn the_remembered_tokens_are_bounded() {
        let keys = keys();
        for n in 0..VERIFIED_MAX + 10 {
            let token = keys
                .mint(
                    Role::Customer,
                    &format!("c{n}"),
                    None,
                    Duration::from_secs(60),
                )
                .unwrap();
            keys.verify(&token).unwrap();
            assert!(keys.0.verified.lock().unwrap().len() <= VERIFIED_MAX);
        }
    }

    /// A token whose `nbf` (not before) lies in the future is refused until then.
    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let now = unix_now();
        let claims = serde_json::json!({
            "sub": "c", "role": "customer", "exp": now + 3600, "iat": now, "nbf": now + 600,
        });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys().0.encoding)
                .unwrap();
        assert_eq!(keys().verify(&token), Err(TokenError::NotYetValid));
        let claims = serde_json::json!({
            "sub": "c", "role": "customer", "exp": now + 3600, "iat": now, "nbf": now - 1,
        });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys().0.encoding)
                .unwrap();
        assert!(keys().verify(&token).is_ok());
    }

    #[test]
    fn role_and_restaurant_must_agree() {
        let ttl = Duration::from_secs(60);
        assert_eq!(
            keys().mint(Role::Restaurant, "u", None, ttl),
            Err(TokenError::MissingRestaurant)
        );
        assert_eq!(
            keys().mint(Role::Customer, "u", Some("r"), ttl),
            Err(TokenError::UnexpectedRestaurant)
        );
    }
}
