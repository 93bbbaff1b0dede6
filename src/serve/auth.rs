//! Credentials: the optional bearer token (`--api-key`, `STYLUS_API_KEY`) and A1111's basic
//! auth (`--api-auth user:pass[,user2:pass2]`, `STYLUS_API_AUTH`), which clients such as
//! `webuiapi` send. With either configured, a request passes when it carries any one of them.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use stylus_core::StylusError;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// One `--api-auth` credential.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredential({}:***)", self.user)
    }
}

/// Parses A1111's `--api-auth` value: `user:pass` pairs separated by commas (a password may
/// contain `:`, not `,`; a user may contain neither, as basic auth defines).
pub fn parse_api_auth(value: &str) -> Result<Vec<BasicCredential>, StylusError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(BasicCredential {
                    user: user.to_string(),
                    password: password.to_string(),
                })
            }
            _ => Err(StylusError::InvalidArgument(format!(
                "--api-auth: `{}` is not USER:PASSWORD (both non-empty; pairs separated by commas)",
                pair.split_once(':').map_or(pair, |(user, _)| user)
            ))),
        })
        .collect()
}

/// Lets a request through when no credential is configured, or it carries
/// `Authorization: Bearer KEY` or `Authorization: Basic base64(user:pass)` for a configured one.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let key = state.options.api_key.as_deref();
    let basic = &state.options.api_auth;
    if key.is_none() && basic.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .trim();
    let allowed = if let Some(token) = given.strip_prefix("Bearer ") {
        key.is_some_and(|key| token_matches(token.trim().as_bytes(), key.as_bytes()))
    } else if let Some(encoded) = given.strip_prefix("Basic ") {
        basic_matches(encoded.trim(), basic)
    } else {
        false
    };
    if allowed {
        return next.run(request).await;
    }
    let wanted = match (key.is_some(), !basic.is_empty()) {
        (true, true) => "`Authorization: Bearer <api key>` or basic auth (--api-auth)",
        (true, false) => "`Authorization: Bearer <api key>`",
        _ => "basic auth (--api-auth user:password)",
    };
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        format!("this server needs {wanted}"),
    )
    .into_response();
    let headers = response.headers_mut();
    if key.is_some() {
        headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if !basic.is_empty() {
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"stylus\""),
        );
    }
    response
}

/// Whether the base64 `user:password` matches a configured credential. Every credential is
/// compared (no early exit), each in constant time, so timing tells neither which user exists
/// nor how much of a password was right.
pub fn basic_matches(encoded: &str, credentials: &[BasicCredential]) -> bool {
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    credentials.iter().fold(false, |found, credential| {
        let expected = format!("{}:{}", credential.user, credential.password);
        found | token_matches(&decoded, expected.as_bytes())
    })
}

/// Compares in time that depends on the expected key's length only (not on where the first
/// difference is, nor on the given token's length), so timing tells an attacker nothing.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut padded = vec![0u8; expected.len()];
    for (slot, byte) in padded.iter_mut().zip(given) {
        *slot = *byte;
    }
    let same_length = (given.len() as u64).ct_eq(&(expected.len() as u64));
    bool::from(padded.as_slice().ct_eq(expected) & same_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cret!", b"s3cret"));
        assert!(!token_matches(b"s3creT", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
        // A longer token that starts with the key is not the key.
        assert!(!token_matches(b"s3cret\0", b"s3cret"));
    }

    #[test]
    fn api_auth_parses_pairs_and_basic_credentials_match_any_of_them() {
        let credentials = parse_api_auth("ann:pa:ss, bob:hunter2,").unwrap();
        assert_eq!(
            credentials,
            [
                BasicCredential {
                    user: "ann".into(),
                    password: "pa:ss".into()
                },
                BasicCredential {
                    user: "bob".into(),
                    password: "hunter2".into()
                }
            ]
        );
        for bad in ["ann", "ann:", ":pw", "ann:pw,bob"] {
            let err = parse_api_auth(bad).unwrap_err().to_string();
            assert!(err.contains("--api-auth"), "{err}");
            assert!(!err.contains("pw"), "the message leaks no password: {err}");
        }
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(basic_matches(&encode("ann:pa:ss"), &credentials));
        assert!(basic_matches(&encode("bob:hunter2"), &credentials));
        for wrong in ["bob:hunter3", "ann:hunter2", "bob:", "bob", ""] {
            assert!(!basic_matches(&encode(wrong), &credentials), "{wrong}");
        }
        assert!(!basic_matches("%%not base64", &credentials));
        assert!(!basic_matches(&encode("ann:pa:ss"), &[]));
    }
}
