//! Request extractors: the bearer token, and JSON bodies parsed with
//! simd-json (the hot path) with a precise, path-naming error when they do
//! not fit (the slow path runs only for bad input).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::auth::{Claims, Role};
use crate::problem::Problem;

/// Bodies larger than this are refused with 413.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// JSON nesting deeper than this is refused before any parser sees it: the
/// deepest body the API takes is 3 levels (an order's lines), and a parser
/// that recurses per level would overflow a worker thread's stack on a
/// body of a few kilobytes nested ten thousand deep.
pub const JSON_DEPTH_MAX: usize = 32;

/// The verified claims of the request's bearer token.
#[derive(Debug, Clone)]
pub struct Auth(pub Claims);

impl Auth {
    pub fn role(&self) -> Role {
        self.0.role
    }

    pub fn is_admin(&self) -> bool {
        self.0.role == Role::Admin
    }

    /// Restaurant users may act only for their own restaurant; admins for any.
    pub fn require_restaurant(&self, restaurant: &str) -> Result<(), Problem> {
        match self.0.role {
            Role::Admin => Ok(()),
            Role::Restaurant if self.0.rid.as_deref() == Some(restaurant) => Ok(()),
            Role::Restaurant => Err(Problem::forbidden(format!(
                "this token acts for restaurant {:?}, not {restaurant:?}",
                self.0.rid.as_deref().unwrap_or("")
            ))),
            Role::Customer => Err(Problem::forbidden("customers cannot manage restaurants")),
        }
    }

    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), Problem> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "a {} token cannot {action}",
                self.0.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("the Authorization header is missing"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let claims = state
            .keys
            .verify(token.trim())
            .map_err(|e| Problem::unauthorized(e.to_string()))?;
        let subject = format!("{}:{}", claims.role.as_str(), claims.sub);
        if let Err(wait) = state.limiter.admit(&subject) {
            metrics::counter!("lunchrush_requests_shed_total", "reason" => "rate_limited")
                .increment(1);
            return Err(Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                format!(
                    "more than {} requests/s (burst {}) from this token",
                    state.limiter.limits().rate_per_sec,
                    state.limiter.limits().burst
                ),
            )
            .retry_after(wait.as_secs().max(1)));
        }
        Ok(Auth(claims))
    }
}

/// A JSON body: `Content-Type: application/json`, at most 64 KiB, parsed
/// with simd-json.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, Problem> {
        let json_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !json_type {
            return Err(Problem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "the body must be JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::to_bytes(request.into_body(), BODY_BYTES_MAX)
            .await
            .map_err(|_| {
                Problem::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "Body too large",
                    format!("the body is larger than {BODY_BYTES_MAX} bytes"),
                )
            })?;
        parse(&bytes).map(Json)
    }
}

/// The nesting depth of a JSON text, counted without parsing it (brackets
/// inside strings do not count); stops counting past `limit`. O(bytes),
/// no recursion, no allocation.
pub fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// simd-json first; on failure, a second parse that names where it broke.
/// Nesting deeper than [`JSON_DEPTH_MAX`] is refused before either.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if json_depth(bytes, JSON_DEPTH_MAX) > JSON_DEPTH_MAX {
        return Err(Problem::bad_request(
            "json_too_deep",
            format!("the body nests deeper than {JSON_DEPTH_MAX} levels"),
        ));
    }
    let mut buffer = bytes.to_vec();
    if let Ok(value) = simd_json::serde::from_slice::<T>(&mut buffer) {
        return Ok(value);
    }
    let mut buffer = bytes.to_vec();
    let value = simd_json::to_owned_value(&mut buffer).map_err(|e| {
        Problem::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let at = if path == "." {
                "the body".to_string()
            } else {
                format!("`{path}`")
            };
            Err(
                Problem::bad_request("invalid_body", format!("{at}: {}", error.inner()))
                    .with("path", serde_json::json!(path)),
            )
        }
    }
}

/// A wrapper around axum's extractor `$inner` (of request parts) whose
/// rejection is a problem+json 400 with `$code`, its text after `$what`.
macro_rules! problem_extractor {
    ($(#[$doc:meta])* $name:ident($inner:path), $code:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<T>(pub T);

        impl<T> FromRequestParts<AppState> for $name<T>
        where
            T: DeserializeOwned + Send,
        {
            type Rejection = Problem;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Problem> {
                match <$inner>::from_request_parts(parts, state).await {
                    Ok(extracted) => Ok($name(extracted.0)),
                    Err(rejection) => Err(Problem::bad_request(
                        $code,
                        format!(concat!($what, ": {}"), rejection.body_text()),
                    )),
                }
            }
        }
    };
}

problem_extractor!(
    /// A path parameter: like axum's, but a segment that does not decode (say
    /// invalid UTF-8 in `%FF`) is a problem+json 400, not the router's text.
    Path(axum::extract::Path<T>),
    "invalid_path",
    "the path does not decode"
);

problem_extractor!(
    /// A query string: like axum's, but one that does not parse is a
    /// problem+json 400 that names the parameter.
    Query(axum::extract::Query<T>),
    "invalid_query",
    "the query string does not parse"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Depth counts brackets outside strings only, and stops past the limit.
    #[test]
    fn depth_is_counted_without_parsing() {
        assert_eq!(json_depth(br#"{"a":[{"b":1}]}"#, 32), 3);
        assert_eq!(json_depth(br#"{"a":"[[[[[[\"[[["}"#, 32), 1);
        assert_eq!(json_depth(b"1", 32), 0);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(json_depth(deep.as_bytes(), 32), 33);
        let problem = parse::<Body>(deep.as_bytes()).unwrap_err();
        assert_eq!(problem.code, "json_too_deep");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        item: String,
        qty: i64,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Body {
        items: Vec<Line>,
    }

    #[test]
    fn good_bodies_parse_and_bad_ones_say_where() {
        let ok: Body = parse(br#"{"items":[{"item":"a","qty":2}]}"#).unwrap();
        assert_eq!(ok.items[0].qty, 2);
        let wrong_type = parse::<Body>(br#"{"items":[{"item":"a","qty":"two"}]}"#).unwrap_err();
        assert_eq!(wrong_type.code, "invalid_body");
        assert!(
            wrong_type.detail.contains("items[0].qty"),
            "{}",
            wrong_type.detail
        );
        let broken = parse::<Body>(br#"{"items":[{"item":"a","#).unwrap_err();
        assert_eq!(broken.code, "malformed_json");
        let missing = parse::<Body>(br#"{}"#).unwrap_err();
        assert!(missing.detail.contains("items"), "{}", missing.detail);
    }
}
