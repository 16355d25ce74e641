//! Who may use the server: API keys and CORS.
//!
//! With keys configured (`--api-key-file`, `CLASSIFY_API_KEYS`), every inference and model
//! route needs `Authorization: Bearer KEY` or `X-API-Key: KEY`; health and readiness stay
//! open (orchestrators probe them without credentials), and so do metrics unless
//! `--protect-metrics`. A request without a valid key gets 401 with a JSON error. Keys are
//! compared in constant time against every configured key (no early exit, so the timing
//! says neither which key nor how much of it matched), and never logged or echoed: the
//! `Debug` form shows only their number.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;

/// The environment variable with comma-separated API keys.
pub const KEYS_ENV: &str = "CLASSIFY_API_KEYS";

/// Configured API keys (at least one).
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "{origin}: no API key in it (one key per line; blank lines and # comments are skipped)"
    )]
    NoKeys { origin: String },
    #[error("{origin}: an API key may not contain whitespace or control characters")]
    BadKey { origin: String },
    #[error("--cors-origin {0}: not an origin (scheme://host[:port], or *)")]
    BadOrigin(String),
}

impl ApiKeys {
    /// Keys from a key file's text (one per line, `#` comments and blank lines skipped;
    /// `file` is `(name, text)`, the name for messages) and/or from `env` (comma-separated);
    /// `None` when neither gives any, which means no keys are required. A file that is given
    /// must hold at least one key. (The caller reads the file: the server code has no
    /// filesystem calls.)
    pub fn load(
        file: Option<(&str, &str)>,
        env: Option<&str>,
    ) -> Result<Option<Self>, AccessError> {
        let mut keys = Vec::new();
        if let Some((origin, text)) = file {
            let from_file = parse(
                text.lines().filter(|l| !l.trim_start().starts_with('#')),
                origin,
            )?;
            if from_file.is_empty() {
                return Err(AccessError::NoKeys {
                    origin: origin.to_string(),
                });
            }
            keys.extend(from_file);
        }
        if let Some(value) = env {
            keys.extend(parse(value.split(','), KEYS_ENV)?);
        }
        Ok((!keys.is_empty()).then(|| Self {
            keys: Arc::new(keys),
        }))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the request carries one of the keys.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes()));
        let Some(presented) = presented else {
            return false;
        };
        self.keys
            .iter()
            .fold(false, |ok, key| ok | constant_time_eq(key, presented))
    }
}

fn parse<'a>(
    items: impl Iterator<Item = &'a str>,
    origin: &str,
) -> Result<Vec<Vec<u8>>, AccessError> {
    items
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(AccessError::BadKey {
                    origin: origin.to_string(),
                })
            } else {
                Ok(k.as_bytes().to_vec())
            }
        })
        .collect()
}

/// `key == presented`, in time that depends only on the length of `key`.
fn constant_time_eq(key: &[u8], presented: &[u8]) -> bool {
    let mut diff = (key.len() != presented.len()) as u8;
    for (i, &k) in key.iter().enumerate() {
        diff |= k ^ presented.get(i).copied().unwrap_or(!k);
    }
    std::hint::black_box(diff) == 0
}

/// Middleware: the request goes on only with a valid key.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if keys.accepts(request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Access settings of a server.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Keys required on the inference and model routes; `None`: open.
    pub api_keys: Option<ApiKeys>,
    /// Also require a key for `/metrics`.
    pub protect_metrics: bool,
    /// Origins allowed to call the server from a browser page elsewhere (`*`: any);
    /// empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

impl Access {
    /// The CORS layer for the configured origins, if any.
    pub fn cors(&self) -> Result<Option<CorsLayer>, AccessError> {
        if self.cors_origins.is_empty() {
            return Ok(None);
        }
        let origin = if self.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let list = self
                .cors_origins
                .iter()
                .map(|o| {
                    let valid = (o.starts_with("http://") || o.starts_with("https://"))
                        && !o.ends_with('/');
                    o.parse()
                        .ok()
                        .filter(|_| valid)
                        .ok_or_else(|| AccessError::BadOrigin(o.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(list)
        };
        Ok(Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST, Method::PUT])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                ]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_load_from_a_file_and_the_environment() {
        let file = "# team A\nalpha-key-1\n\n  beta-key-2  \n";
        let keys = ApiKeys::load(Some(("keys.txt", file)), Some("gamma, delta"))
            .unwrap()
            .unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(format!("{keys:?}"), "ApiKeys(4 keys)");
        assert!(ApiKeys::load(None, None).unwrap().is_none());
        assert!(ApiKeys::load(None, Some(" , ")).unwrap().is_none());
        let err = ApiKeys::load(Some(("keys.txt", "# nothing\n\n")), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys.txt: no API key"), "{err}");
        let err = ApiKeys::load(None, Some("two words"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("whitespace"), "{err}");
    }

    #[test]
    fn a_key_is_accepted_from_either_header_and_nothing_else() {
        let keys = ApiKeys::load(None, Some("s3cret-one,s3cret-two"))
            .unwrap()
            .unwrap();
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            keys.accepts(&h)
        };
        assert!(with("authorization", "Bearer s3cret-two"));
        assert!(with("x-api-key", "s3cret-one"));
        assert!(!with("authorization", "Bearer s3cret-on"));
        assert!(!with("authorization", "Bearer s3cret-one2"));
        assert!(!with("authorization", "s3cret-one"));
        assert!(!with("authorization", "Basic s3cret-one"));
        assert!(!with("x-api-key", ""));
        assert!(!keys.accepts(&HeaderMap::new()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn cors_origins_are_checked() {
        let access = |o: &[&str]| Access {
            cors_origins: o.iter().map(|s| s.to_string()).collect(),
            ..Access::default()
        };
        assert!(access(&[]).cors().unwrap().is_none());
        assert!(access(&["*"]).cors().unwrap().is_some());
        assert!(
            access(&["https://app.example.com", "http://localhost:3000"])
                .cors()
                .unwrap()
                .is_some()
        );
        assert!(access(&["app.example.com"]).cors().is_err());
        assert!(access(&["https://app.example.com/"]).cors().is_err());
    }
}
